"""The Consul backend: the store for clusters that outgrow one machine.

Mapping onto Consul's KV (through py-consul's asyncio client, ``consul_client.py``):

- A store key ``/registry/pods/ns/a`` lives at ``<prefix>/data/registry/pods/ns/a``;
  leader locks at ``<prefix>/locks/<name>``. The ACL token (``X-Consul-Token``) needs
  ``key_prefix "<prefix>/"`` write and ``session_prefix ""`` write.
- **Revision = Consul's raft index**: a key's ``ModifyIndex``/``CreateIndex``, a list's
  ``X-Consul-Index``. It grows with every write, but not by one, and it is shared with
  the rest of Consul (writes elsewhere advance it too).
- ``version`` is kept in the entry's ``Flags`` (Consul has no per-key write count).
- **Writes** use ``/v1/txn`` with the ``cas`` verb (``Index`` 0 = create only if absent)
  so that one request both checks and returns the new ``ModifyIndex``; deletes use
  ``delete-cas`` on the index just read, so the value returned is exactly the one
  deleted. An unconditional update or delete that loses a race re-reads and retries.
- **Watches**: one background poller per store runs blocking queries (``index`` +
  ``wait``) on the whole data prefix, diffs each answer against its snapshot into
  ADDED/MODIFIED/DELETED events and publishes them to the shared
  :class:`~control.store.watch.WatchHub`.

Where Consul's semantics differ from the interface, and what this backend does:

- **No history.** Consul keeps only current values. This store keeps a bounded
  in-process ring of the events its poller has seen (``history_limit``). Watching from
  a revision older than the store's start, or older than the ring, raises
  :class:`~control.store.base.Compacted` (the API server answers 410 and the client
  relists, as with etcd). ``compact()`` drops ring entries.
- **Changes between two polls coalesce**: two updates of a key become one MODIFIED
  (the latest value); a key created and deleted in between is never seen. Each event
  is still correct for the state it reports; watchers converge to the same state.
- **A delete's revision** is not returned by Consul; a DELETED event carries the
  ``X-Consul-Index`` of the poll that noticed it (its tombstone's index when nothing
  else changed), so several deletes seen in one poll share a revision. Watch
  positions (see ``watch.py``) keep them distinct and in order.
- **"From now"** (``from_revision=0``) means after the newest revision this client has
  written or its poller has seen; a delete acknowledged just before the watch may
  still be reported, since its revision is unknown.
- **Locks** are Consul sessions (``Behavior=delete``, ``LockDelay=0``) acquired on the
  lock key with the holder as value. Consul accepts TTLs from 10 s to 24 h only, and may
  invalidate an unrenewed session up to 2 x TTL late; renewing resets the session's
  original TTL (a different ``ttl`` on renewal is ignored).
- ``list`` has no server-side range: it reads the prefix and pages in process.

Neighbours: ``base.py`` (the interface), ``watch.py``, ``sqlite.py`` (the default),
``tests/support/consul_double.py`` (the test double of the endpoints used here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import consul

from control.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    KeyValue,
    NotFound,
    StoreError,
    check_key,
    check_lock_args,
    check_prefix,
    check_revision,
    check_value,
)
from control.store.consul_client import Client
from control.store.watch import Watch, WatchHub

MIN_TTL, MAX_TTL = 10.0, 86400.0


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    """Library and transport errors become StoreError once, here, naming the call."""
    try:
        yield
    except StoreError:
        raise
    except consul.ACLPermissionDenied as exc:
        raise StoreError(f"consul refused {what}: permission denied ({exc})") from exc
    except (consul.ConsulException, aiohttp.ClientError, OSError) as exc:
        raise StoreError(f"consul {what} failed: {exc}") from exc


class ConsulStore:
    """The Consul backend of :class:`~control.store.base.Store`; open with :meth:`open`
    or :meth:`from_url`. Several processes may share one Consul prefix (each keeps its
    own poller)."""

    def __init__(self, client: Client, prefix: str, *, token: str | None, wait: float,
                 history_limit: int, watch_buffer: int) -> None:
        self._c = client
        self.prefix = prefix
        self._data = f"{prefix}/data"
        self._locks = f"{prefix}/locks/"
        self._token = token
        self._wait = wait
        self._hub = WatchHub(self._history, buffer_limit=watch_buffer)
        self._ring: deque[tuple[int, Event]] = deque()
        self._history_limit = history_limit
        self._floor = 0  # history at or below this revision is not kept
        self._dropped_position = 0
        self._position = 0
        self._snapshot: dict[str, KeyValue] = {}
        self._acked = 0
        self._poller: asyncio.Task[None] | None = None
        self._closed = False
        #: errors the poller met (it retries with back-off); for tests and metrics
        self.poll_errors = 0

    @classmethod
    async def open(cls, host: str = "127.0.0.1", port: int = 8500, *, prefix: str = "mesh",
                   token: str | None = None, scheme: str = "http",
                   verify: bool | str = True, wait: float = 30.0,
                   history_limit: int = 10_000, watch_buffer: int = 10_000) -> ConsulStore:
        """Connect, read the current state (failing with StoreError when Consul cannot be
        reached or refuses the token) and start the watch poller."""
        prefix = prefix.strip("/")
        if not prefix or any(not part for part in prefix.split("/")):
            raise ValueError(f"consul key prefix must be a non-empty path, got {prefix!r}")
        if not 0.01 <= wait <= 600:
            raise ValueError(f"wait must be between 0.01 and 600 seconds, got {wait!r}")
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit!r}")
        client = Client(host=host, port=port, token=token, scheme=scheme, verify=verify)
        store = cls(client, prefix, token=token, wait=wait, history_limit=history_limit,
                    watch_buffer=watch_buffer)
        try:
            index, items = await store._read_all()
        except BaseException:
            await client.close()
            raise
        store._snapshot = items
        store._floor = store._hub.last_revision = index
        store._poller = asyncio.create_task(store._poll_forever(index),
                                            name=f"consul-store-poller {prefix}")
        return store

    @classmethod
    async def from_url(cls, url: str, **options: Any) -> ConsulStore:
        """``consul://host:port/prefix?token=...`` (``consuls://`` for HTTPS). Without a
        ``token`` parameter, ``CONSUL_HTTP_TOKEN`` is used when set."""
        parts = urlsplit(url)
        if parts.scheme not in ("consul", "consuls") or not parts.hostname:
            raise ValueError(f"consul store URL must be consul://host:port/prefix, got {url!r}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"token"}
        if unknown:
            raise ValueError(f"unknown consul store URL parameter(s): {sorted(unknown)}")
        token = query.get("token", [os.environ.get("CONSUL_HTTP_TOKEN") or ""])[0] or None
        prefix = unquote(parts.path).strip("/") or "mesh"
        return await cls.open(parts.hostname, parts.port or 8500, prefix=prefix, token=token,
                              scheme="https" if parts.scheme == "consuls" else "http",
                              **options)

    async def __aenter__(self) -> ConsulStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- mapping ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return self._data + key

    def _entry(self, item: dict) -> KeyValue:
        return KeyValue(item["Key"][len(self._data):], item.get("Value") or b"",
                        item["CreateIndex"], item["ModifyIndex"], max(item.get("Flags", 1), 1))

    def _entries(self, items: list[dict] | None) -> dict[str, KeyValue]:
        """Entries under the data prefix as KeyValues; entries this store cannot have
        written (a "folder" key ending in '/', put there by hand) are ignored."""
        out = {}
        for item in items or []:
            key = item["Key"][len(self._data):]
            if len(key) > 1 and not key.endswith("/"):
                out[key] = self._entry(item)
        return out

    async def _read_all(self) -> tuple[int, dict[str, KeyValue]]:
        async with _translated("read"):
            index, items = await self._c.kv.get(self._data + "/", recurse=True)
        return int(index), self._entries(items)

    async def _txn(self, ops: list[dict]) -> tuple[bool, dict]:
        """Run a KV transaction; (committed, body). A 409 is a failed check, not an
        error."""
        async with _translated("transaction"):
            response = await self._c.http.put(
                lambda r: r, "/v1/txn", data=json.dumps(ops),
                headers=self._c.prepare_headers(self._token))
        if response.code == 403:
            raise StoreError(f"consul refused transaction: {response.body}")
        if response.code not in (200, 409):
            raise StoreError(f"consul transaction failed: {response.code} {response.body}")
        return response.code == 200, json.loads(response.body)

    def _set_op(self, key: str, value: bytes, index: int, version: int) -> dict:
        return {"KV": {"Verb": "cas", "Key": self._path(key), "Index": index,
                       "Flags": version, "Value": base64.b64encode(value).decode()}}

    def _acknowledge(self, revision: int) -> None:
        self._acked = max(self._acked, revision)

    # -- the Store interface -------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        async with _translated("get"):
            _index, item = await self._c.kv.get(self._path(key))
        return self._entry(item) if item else None

    async def list(self, prefix: str, *, start_after: str | None = None,
                   limit: int | None = None) -> tuple[list[KeyValue], int]:
        check_prefix(prefix)
        if start_after is not None and not isinstance(start_after, str):
            raise ValueError(f"start_after must be a str, got {type(start_after).__name__}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        async with _translated("list"):
            index, items = await self._c.kv.get(self._path(prefix or "/"), recurse=True)
        kvs = list(self._entries(items).values())  # Consul answers in key order
        if start_after is not None:
            kvs = [kv for kv in kvs if kv.key > start_after]
        if limit is not None:
            kvs = kvs[:limit]
        return kvs, int(index)

    async def create(self, key: str, value: bytes) -> KeyValue:
        check_key(key)
        value = check_value(value)
        ok, body = await self._txn([self._set_op(key, value, 0, 1)])
        if not ok:
            raise AlreadyExists(key)
        result = body["Results"][0]["KV"]
        self._acknowledge(result["ModifyIndex"])
        return KeyValue(key, value, result["CreateIndex"], result["ModifyIndex"], 1)

    async def _current(self, key: str, expected: int | None) -> KeyValue:
        current = await self.get(key)
        if current is None:
            raise NotFound(key)
        if expected is not None and current.mod_revision != expected:
            raise Conflict(key, expected, current.mod_revision)
        return current

    async def update(self, key: str, value: bytes, *,
                     expected_revision: int | None = None) -> KeyValue:
        check_key(key)
        value = check_value(value)
        check_revision(expected_revision)
        while True:
            current = await self._current(key, expected_revision)
            ok, body = await self._txn(
                [self._set_op(key, value, current.mod_revision, current.version + 1)])
            if ok:
                result = body["Results"][0]["KV"]
                self._acknowledge(result["ModifyIndex"])
                return KeyValue(key, value, result["CreateIndex"], result["ModifyIndex"],
                                current.version + 1)
            # Lost a race between the read and the CAS: re-read; with an expected
            # revision the re-read raises Conflict or NotFound.

    async def delete(self, key: str, *, expected_revision: int | None = None) -> KeyValue:
        check_key(key)
        check_revision(expected_revision)
        while True:
            current = await self._current(key, expected_revision)
            ok, _body = await self._txn([{"KV": {"Verb": "delete-cas", "Key": self._path(key),
                                                 "Index": current.mod_revision}}])
            if ok:
                return current

    def watch(self, prefix: str, *, from_revision: int = 0) -> Watch:
        check_prefix(prefix)
        check_revision(from_revision, allow_zero=True)
        if from_revision == 0:
            from_revision = max(self._hub.last_revision, self._acked)
        return self._hub.watch(prefix, from_revision)

    async def current_revision(self) -> int:
        async with _translated("read index"):
            index, _keys = await self._c.kv.get(self._data + "/", keys=True)
        return int(index)

    async def compact(self, revision: int) -> None:
        """Drop in-process history at or below ``revision`` (Consul itself keeps only
        current values)."""
        check_revision(revision, allow_zero=True)
        while self._ring and self._ring[0][1].revision <= revision:
            self._dropped_position = self._ring.popleft()[0]
        self._floor = max(self._floor, min(revision, self._hub.last_revision))

    async def _history(self, prefix: str, after_position: int | None, after_revision: int,
                       limit: int) -> list[tuple[int, Event]]:
        if after_position is None:
            if after_revision < self._floor:
                raise Compacted(after_revision, self._floor)
            picked = (pe for pe in self._ring if pe[1].revision > after_revision)
        else:
            if after_position < self._dropped_position:
                raise Compacted(after_revision, self._floor)
            picked = (pe for pe in self._ring if pe[0] > after_position)
        out = []
        for pe in picked:
            if pe[1].kv.key.startswith(prefix):
                out.append(pe)
                if len(out) >= limit:
                    break
        return out

    # -- the poller ------------------------------------------------------------------------

    async def _poll_forever(self, index: int) -> None:
        backoff = 0.1
        while True:
            try:
                async with _translated("blocking query"):
                    new_index, items = await self._c.kv.get(
                        self._data + "/", recurse=True, index=index,
                        wait=f"{int(self._wait * 1000)}ms")
            except StoreError:
                self.poll_errors += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            new_index = int(new_index)
            self._apply(self._entries(items), new_index)
            # Consul's index can go backwards (tombstones reaped); it asks clients to
            # start over then, which the snapshot diff makes safe.
            index = new_index if new_index >= index else 0

    def _apply(self, items: dict[str, KeyValue], index: int) -> None:
        """Diff the new snapshot against the last one and publish the events."""
        old = self._snapshot
        events: list[Event] = []
        for key, kv in items.items():
            before = old.get(key)
            if before is None:
                events.append(Event("ADDED", kv, kv.mod_revision))
            elif before.mod_revision != kv.mod_revision:
                events.append(Event("MODIFIED", kv, kv.mod_revision, before))
        deleted_at = max([index, self._hub.last_revision]
                         + [e.revision for e in events])
        for key, before in old.items():
            if key not in items:
                events.append(Event("DELETED", before, deleted_at, before))
        self._snapshot = items
        if not events:
            self._hub.publish([], index)
            return
        events.sort(key=lambda e: (e.revision, e.type == "DELETED", e.kv.key))
        published = []
        for event in events:
            self._position += 1
            published.append((self._position, event))
        self._ring.extend(published)
        while len(self._ring) > self._history_limit:
            position, dropped = self._ring.popleft()
            self._dropped_position = position
            self._floor = max(self._floor, dropped.revision)
        self._hub.publish(published, index)

    # -- leader locks ----------------------------------------------------------------------

    async def try_acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        _check_lock_args(name, holder, ttl)
        key = self._locks + name
        async with _translated("lock"):
            _index, item = await self._c.kv.get(key)
            if item and item.get("Session"):
                if item.get("Value") != holder.encode():
                    return False
                try:
                    await self._c.session.renew(item["Session"])
                    return True
                except consul.NotFound:
                    pass  # invalidated between the read and the renewal: take it anew
            session = await self._c.session.create(
                name=f"mesh lock {name} for {holder}", behavior="delete",
                ttl=math.ceil(ttl), lock_delay=0)
            acquired = await self._c.kv.put(key, holder, acquire=session)
            if not acquired:
                await self._c.session.destroy(session)
            return bool(acquired)

    async def release_lock(self, name: str, holder: str) -> None:
        _check_lock_args(name, holder)
        async with _translated("unlock"):
            _index, item = await self._c.kv.get(self._locks + name)
            if item and item.get("Session") and item.get("Value") == holder.encode():
                # Destroying the session deletes the key (Behavior=delete).
                await self._c.session.destroy(item["Session"])

    async def lock_holder(self, name: str) -> str | None:
        _check_lock_args(name)
        async with _translated("lock read"):
            _index, item = await self._c.kv.get(self._locks + name)
        if not item or not item.get("Session"):
            return None
        return (item.get("Value") or b"").decode()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        await self._c.close()


def _check_lock_args(name: object, holder: object = "-", ttl: float = MIN_TTL) -> None:
    check_lock_args(name, holder, ttl)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"lock ttl must be between {MIN_TTL:g} and {MAX_TTL:g} seconds for"
                         f" Consul sessions, got {ttl!r}")
