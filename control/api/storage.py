"""Objects in the store: keys, JSON values, resourceVersions, CAS, paginated lists.

The one place that talks to :class:`control.store.Store`. An object lives at its
resource's key (``resources.Resource.key``) as compact JSON without its
``resourceVersion``: that is the key's ``mod_revision``, filled in on every read, so it
can never disagree with what compare-and-swap checks. Store errors become API errors
here (404, 409 AlreadyExists, 409 Conflict). Lists page with ``limit`` and an opaque
``continue`` token (the list's revision and the last key returned); later pages read
the current state, not a snapshot at the first page's revision (the store cannot read
at a past revision), and keep reporting the first page's revision so a watch started
from it misses nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from control.api.errors import ApiError, already_exists, conflict, not_found
from control.api.resources import Resource
from control.api.selectors import FieldSelector, LabelSelector
from control.store import AlreadyExists, Conflict, KeyValue, NotFound, Store

LIST_PAGE = 1000


def decode(kv: KeyValue, revision: int | None = None) -> dict[str, Any]:
    """The object stored in ``kv`` with its ``resourceVersion`` filled in."""
    obj = json.loads(kv.value)
    obj["metadata"]["resourceVersion"] = str(kv.mod_revision if revision is None
                                             else revision)
    return obj


def _with_version(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    """``obj`` as just written at ``revision`` (no need to decode what was encoded)."""
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(revision)}}


def encode(obj: dict[str, Any]) -> bytes:
    """Compact JSON with ``apiVersion``, ``kind``, ``metadata`` first and no
    ``resourceVersion`` (see :func:`encoded_with_version` for why the order matters)."""
    md = obj.get("metadata") or {}
    if "resourceVersion" in md:
        md = {k: v for k, v in md.items() if k != "resourceVersion"}
    ordered = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": md}
    ordered.update((k, v) for k, v in obj.items() if k not in ordered)
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


_METADATA = b'"metadata":{'


def encoded_with_version(kv: KeyValue) -> bytes:
    """The stored JSON with ``metadata.resourceVersion`` added, without decoding it."""
    return with_version_bytes(kv.value, kv.mod_revision)


def with_version_bytes(raw: bytes, revision: int) -> bytes:
    """``raw`` (an object as :func:`encode` stores it) with ``metadata.resourceVersion``
    set to ``revision``, without decoding it.

    :func:`encode` writes the top-level ``metadata`` right after the two short strings
    ``apiVersion`` and ``kind``, so the first ``"metadata":{`` is the object's own (an
    unescaped quote cannot occur inside a JSON string); the check that no other ``{``
    precedes it guards values written any other way, which are decoded instead."""
    at = raw.find(_METADATA)
    if at < 0 or raw.count(b"{", 0, at) != 1:
        obj = json.loads(raw)
        obj["metadata"]["resourceVersion"] = str(revision)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    cut = at + len(_METADATA)
    rv = b'"resourceVersion":"%d"' % revision
    return raw[:cut] + rv + (b"," if raw[cut:cut + 1] != b"}" else b"") + raw[cut:]


def parse_resource_version(value: Any, *, field: str = "resourceVersion") -> int | None:
    """``""``/``None`` -> None; a decimal string -> int; anything else a 400."""
    if value in (None, ""):
        return None
    try:
        rv = int(value)
    except (TypeError, ValueError):
        rv = -1
    if rv < 0:
        raise ApiError(400, "BadRequest", f"invalid {field} {value!r}: expected a "
                                          f"non-negative integer")
    return rv


class ObjectStorage:
    """Typed object access over the raw key-value store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, res: Resource, namespace: str | None, name: str
                  ) -> tuple[dict[str, Any], KeyValue]:
        kv = await self.store.get(res.key(namespace, name))
        if kv is None:
            raise not_found(res.plural, name, res.group)
        return decode(kv), kv

    async def create(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        try:
            kv = await self.store.create(res.key(md.get("namespace"), md["name"]), encode(obj))
        except AlreadyExists:
            raise already_exists(res.plural, md["name"], res.group) from None
        return _with_version(obj, kv.mod_revision)

    async def update(self, res: Resource, obj: dict[str, Any], *, expected: int
                     ) -> dict[str, Any]:
        md = obj["metadata"]
        try:
            kv = await self.store.update(res.key(md.get("namespace"), md["name"]),
                                         encode(obj), expected_revision=expected)
        except Conflict:
            raise conflict(res.plural, md["name"], res.group) from None
        except NotFound:
            raise not_found(res.plural, md["name"], res.group) from None
        return _with_version(obj, kv.mod_revision)

    async def delete(self, res: Resource, namespace: str | None, name: str, *,
                     expected: int | None = None) -> dict[str, Any]:
        try:
            kv = await self.store.delete(res.key(namespace, name), expected_revision=expected)
        except Conflict:
            raise conflict(res.plural, name, res.group) from None
        except NotFound:
            raise not_found(res.plural, name, res.group) from None
        return decode(kv)

    async def list(
        self,
        res: Resource,
        namespace: str | None,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], int, str | None]:
        """Matching objects in key order, the list's revision, and a continue token
        (None when nothing is left)."""
        kvs, revision, token = await self._scan(res, namespace, labels, fields, limit,
                                                continue_token)
        return [obj if obj is not None else decode(kv) for kv, obj in kvs], revision, token

    async def list_encoded(
        self,
        res: Resource,
        namespace: str | None,
        *,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> tuple[list[bytes], int, str | None]:
        """As :meth:`list`, but each item as its JSON bytes, ready to be joined into a
        response: the stored bytes with the resourceVersion spliced in, so a list of
        10,000 objects is not decoded and encoded again."""
        kvs, revision, token = await self._scan(res, namespace, labels, fields, limit,
                                                continue_token)
        return [encoded_with_version(kv) for kv, _ in kvs], revision, token

    async def _scan(
        self,
        res: Resource,
        namespace: str | None,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        limit: int | None,
        continue_token: str | None,
    ) -> tuple[list[tuple[KeyValue, dict[str, Any] | None]], int, str | None]:
        """The matching key-values (with their decoded object when filtering needed it)."""
        prefix = res.key_prefix(namespace)
        revision, start_after = None, None
        if continue_token:
            revision, start_after = _decode_token(continue_token, prefix)
        filtering = not (labels is None or labels.empty) or not (fields is None or fields.empty)
        page = (max(limit, LIST_PAGE) if filtering else limit) if limit else None
        items: list[tuple[KeyValue, dict[str, Any] | None]] = []
        while True:
            kvs, rev = await self.store.list(prefix, start_after=start_after, limit=page)
            if revision is None:
                revision = rev
            for idx, kv in enumerate(kvs):
                obj = None
                if filtering:
                    obj = decode(kv)
                    if labels is not None and not labels.matches(obj["metadata"].get("labels")):
                        continue
                    if fields is not None and not fields.matches(obj):
                        continue
                items.append((kv, obj))
                if limit and len(items) >= limit:
                    more = idx < len(kvs) - 1 or (page is not None and len(kvs) == page)
                    return items, revision, (_encode_token(revision, kv.key, prefix)
                                             if more else None)
            if page is None or len(kvs) < page:
                return items, revision, None
            start_after = kvs[-1].key


def _encode_token(revision: int, last_key: str, prefix: str) -> str:
    raw = json.dumps({"rv": revision, "start": last_key[len(prefix):]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, prefix: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        rv, start = int(data["rv"]), str(data["start"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ApiError(400, "BadRequest", f"continue token {token!r} is not valid") from None
    if not start or ".." in start:
        raise ApiError(400, "BadRequest", f"continue token {token!r} is not valid")
    return rv, prefix + start
