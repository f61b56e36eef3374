"""Object lifecycle: what create, update, patch, status writes and delete mean.

Independent of HTTP (the handlers in ``handlers.py`` parse requests and call this) and of
the store's encoding (``storage.py``). Kubernetes' rules, in one place:

- the server owns ``uid``, ``creationTimestamp``, ``generation`` and ``resourceVersion``;
  ``generation`` starts at 1 and is bumped only when the spec part changes;
- a write to the main resource cannot change ``status`` and a write to ``status``
  cannot change anything else (for kinds with a status subresource);
- every write is defaulted and validated by the kind's strategy (``kinds/``) and
  refused whole with a 422 naming each field; a refused write changes nothing;
- updates are compare-and-swap: the client's ``resourceVersion`` when it sent one
  (409 when stale), otherwise the version just read, retried a few times on a race;
  a write that changes nothing is not written;
- delete honours preconditions, graceful deletion (a Pod bound to a node gets a
  ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` and stays, Terminating, until
  its node's agent has stopped it and deletes it with ``gracePeriodSeconds=0``; a later
  delete may only shorten the grace), finalizers (the object gets a
  ``deletionTimestamp`` and goes when its last finalizer is removed and its grace is
  over) and ``propagationPolicy``: Background
  deletes now and lets the garbage collector (``gc.py``) remove dependents, Foreground
  keeps the owner (finalizer ``foregroundDeletion``) until its dependents are gone,
  Orphan removes the owner reference from dependents first.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import copy
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, NamedTuple

from control.api import validation as v
from control.api.errors import ApiError, bad_request, conflict, invalid
from control.api.kinds import spec_part, strategy_for
from control.api.patch import PatchError, apply_patch
from control.api.resources import RESOURCES, Resource, by_path
from control.api.storage import ObjectStorage, decode, parse_resource_version
from control.api.validation import FieldErrors
from control.api.watchcache import CachedEvent, WatchCache

Propagation = Literal["Orphan", "Background", "Foreground"]
FOREGROUND = "foregroundDeletion"
NAMESPACE_FINALIZER = "mesh.io/namespace-contents"
SERVER_OWNED = ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds", "selfLink")
UPDATE_RETRIES = 8
NAMESPACES = by_path("", "v1", "namespaces")


class Deletion(NamedTuple):
    """What a delete did: ``obj`` is the deleted object when ``gone``, else the object
    as it stays, marked for deletion (the API answers 200 or 202)."""

    obj: dict[str, Any]
    gone: bool


def now_rfc3339(clock: Callable[[], float] = time.time) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock()))


# uids and generated names must be unique, not secret: one well-seeded generator per
# process instead of a getrandom() system call per object (slow on some VMs).
_random = random.Random(os.urandom(32))


def new_uid() -> str:
    return str(uuid.UUID(int=_random.getrandbits(128), version=4))


def _random_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' alphabet: no vowels, no 0/1/3
    return "".join(_random.choice(alphabet) for _ in range(n))


class Objects:
    """The API's write semantics over :class:`ObjectStorage`."""

    def __init__(self, storage: ObjectStorage, *, clock: Callable[[], float] = time.time
                 ) -> None:
        self.storage = storage
        self.clock = clock
        #: namespace name -> terminating?, kept by the watch cache (``watch_namespaces``);
        #: a miss is checked against the store, so a lagging cache only costs a read
        self.namespaces: dict[str, bool] | None = None
        # Read-modify-write cycles on one key are serialised inside this server, so
        # concurrent patches queue instead of failing CAS in turn; CAS (and its retry)
        # still guards against writers in other processes.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def follow_namespaces(self, cache: WatchCache) -> None:
        """Keep :attr:`namespaces` from the watch cache, so creates need no store read to
        know their namespace exists (NamespaceLifecycle admission, informer-backed as in
        Kubernetes). The listener goes first; the list only fills names no event has
        touched since, so an event racing the list is never overwritten by older data."""
        known: dict[str, bool] = {}
        touched: set[str] = set()
        prefix = NAMESPACES.key_prefix()

        def on_event(ev: CachedEvent) -> None:
            if not ev.key.startswith(prefix):
                return
            name = ev.key[len(prefix):]
            touched.add(name)
            if ev.type == "DELETED":
                known.pop(name, None)
            else:
                known[name] = bool(ev.obj["metadata"].get("deletionTimestamp"))
        cache.add_listener(on_event)
        items, _, _ = await self.storage.list(NAMESPACES, None)
        for item in items:
            name = item["metadata"]["name"]
            if name not in touched:
                known[name] = bool(item["metadata"].get("deletionTimestamp"))
        self.namespaces = known

    @contextlib.asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    # -- create ------------------------------------------------------------------------------

    async def create(self, res: Resource, namespace: str | None, body: dict[str, Any],
                     ) -> dict[str, Any]:
        obj = self._check_envelope(res, namespace, body, name=None)
        md = obj["metadata"]
        if md.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        if not md.get("name") and md.get("generateName"):
            gen = md["generateName"]
            if not isinstance(gen, str):
                raise invalid(res.kind, "", res.group, [_cause("metadata.generateName",
                                                              "must be a string")])
            md["name"] = gen[:58] + _random_suffix()
        for key in SERVER_OWNED:
            md.pop(key, None)
        md["uid"] = new_uid()
        md["creationTimestamp"] = now_rfc3339(self.clock)
        md["generation"] = 1
        strategy = strategy_for(res)
        if "status" in res.subresources:
            status = strategy.initial_status(obj)
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = copy.deepcopy(status)
        self._validate(res, obj)
        if res.namespaced:
            await self._check_namespace_open(md["namespace"])
        return await self.storage.create(res, obj)

    async def _check_namespace_open(self, namespace: str) -> None:
        if self.namespaces is not None and self.namespaces.get(namespace) is False:
            return  # known to exist and not terminating (as seen by the watch cache)
        kv = await self.storage.store.get(NAMESPACES.key(None, namespace))
        if kv is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           details={"name": namespace, "kind": "namespaces"})
        if b'"deletionTimestamp"' in kv.value:
            raise ApiError(403, "Forbidden", f"unable to create new content in namespace "
                                             f"{namespace} because it is being terminated")

    # -- update, status, patch ---------------------------------------------------------------

    async def update(self, res: Resource, namespace: str | None, name: str,
                     body: dict[str, Any], *, subresource: str | None = None
                     ) -> dict[str, Any]:
        body = self._check_envelope(res, namespace, body, name=name)
        precondition = parse_resource_version(body["metadata"].get("resourceVersion"),
                                              field="metadata.resourceVersion")

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            return copy.deepcopy(body)
        return await self._write(res, namespace, name, mutate, subresource=subresource,
                                 precondition=precondition)

    async def patch(self, res: Resource, namespace: str | None, name: str, kind: str,
                    patch: Any, *, subresource: str | None = None) -> dict[str, Any]:
        state: dict[str, int | None] = {"precondition": None}

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            try:
                new = apply_patch(kind, old, patch)
            except PatchError as e:
                raise ApiError(422, "Invalid", f"the patch cannot be applied: {e}") from None
            new_md = new.get("metadata") if isinstance(new.get("metadata"), dict) else {}
            rv = new_md.get("resourceVersion")
            if rv != old["metadata"]["resourceVersion"]:
                state["precondition"] = parse_resource_version(
                    rv, field="metadata.resourceVersion")
            return self._check_envelope(res, namespace, new, name=name)
        return await self._write(res, namespace, name, mutate, subresource=subresource,
                                 precondition_ref=state)

    async def _write(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        mutate: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        subresource: str | None,
        precondition: int | None = None,
        precondition_ref: dict[str, int | None] | None = None,
    ) -> dict[str, Any]:
        async with self._key_lock(res.key(namespace, name)):
            return await self._write_locked(res, namespace, name, mutate,
                                            subresource=subresource,
                                            precondition=precondition,
                                            precondition_ref=precondition_ref)

    async def _write_locked(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        mutate: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        subresource: str | None,
        precondition: int | None,
        precondition_ref: dict[str, int | None] | None,
    ) -> dict[str, Any]:
        for _ in range(UPDATE_RETRIES):
            old, kv = await self.storage.get(res, namespace, name)
            new = mutate(decode(kv))  # a second copy: decoding beats copy.deepcopy
            if precondition_ref is not None:
                precondition = precondition_ref["precondition"]
            if precondition is not None and precondition != kv.mod_revision:
                raise conflict(res.plural, name, res.group)
            new = self._merge_update(res, old, new, subresource)
            if new == old:
                return old  # a write that changes nothing is not written
            md = new["metadata"]
            if md.get("deletionTimestamp") and not md.get("finalizers") \
                    and not md.get("deletionGracePeriodSeconds"):
                # the last finalizer of an object whose grace is over: it goes now (a
                # Pod still in its grace period waits for its agent's final delete)
                return await self._delete_now(res, new, kv.mod_revision)
            try:
                return await self.storage.update(res, new, expected=kv.mod_revision)
            except ApiError as e:
                if e.reason != "Conflict" or precondition is not None:
                    raise
        raise conflict(res.plural, name, res.group, why="too many concurrent writers")

    def _merge_update(self, res: Resource, old: dict[str, Any], new: dict[str, Any],
                      subresource: str | None) -> dict[str, Any]:
        strategy = strategy_for(res)
        has_status = "status" in res.subresources
        if subresource == "status":
            out = copy.deepcopy(old)
            if "status" in new:
                out["status"] = new["status"]
            errs = FieldErrors()
            strategy.validate_status(out, errs)
            if errs:
                raise invalid(res.kind, old["metadata"]["name"], res.group, errs.causes)
            return out
        new_md = new["metadata"]
        old_md = old["metadata"]
        uid = new_md.get("uid")
        if uid and uid != old_md["uid"]:
            raise conflict(res.plural, old_md["name"], res.group,
                           why=f"Precondition failed: UID in object meta: {uid}, "
                               f"in the stored object: {old_md['uid']}")
        for key in SERVER_OWNED:
            if key in old_md:
                new_md[key] = old_md[key]
            else:
                new_md.pop(key, None)
        new_md["resourceVersion"] = old_md["resourceVersion"]
        if has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        strategy.default(new)
        self._validate(res, new, old=old)
        if spec_part(new) != spec_part(old):
            new_md["generation"] = int(old_md.get("generation", 1)) + 1
        if old_md.get("deletionTimestamp"):
            added = set(new_md.get("finalizers") or ()) - set(old_md.get("finalizers") or ())
            if added:
                raise invalid(res.kind, old_md["name"], res.group, [_cause(
                    "metadata.finalizers", "no new finalizers can be added if the object "
                                           "is being deleted")])
        return new

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, res: Resource, namespace: str | None, name: str, *,
                     propagation: Propagation | None = None,
                     precondition_rv: int | None = None,
                     precondition_uid: str | None = None,
                     grace_period: int | None = None) -> Deletion:
        """Delete, or mark for deletion, one object; returns the marked object or the
        deleted one, and which it was. ``grace_period`` is the request's ``gracePeriodSeconds``
        (None: the kind's default, see :meth:`Strategy.deletion_grace`)."""
        if grace_period is not None and grace_period < 0:
            raise bad_request(f"gracePeriodSeconds must be a non-negative integer, "
                              f"got {grace_period}")
        async with self._key_lock(res.key(namespace, name)):
            return await self._delete_locked(res, namespace, name, propagation=propagation,
                                             precondition_rv=precondition_rv,
                                             precondition_uid=precondition_uid,
                                             grace_period=grace_period)

    async def _delete_locked(self, res: Resource, namespace: str | None, name: str, *,
                             propagation: Propagation | None, precondition_rv: int | None,
                             precondition_uid: str | None, grace_period: int | None
                             ) -> Deletion:
        for _ in range(UPDATE_RETRIES):
            obj, kv = await self.storage.get(res, namespace, name)
            md = obj["metadata"]
            if precondition_uid and precondition_uid != md["uid"]:
                raise conflict(res.plural, name, res.group,
                               why=f"Precondition failed: UID in precondition: "
                                   f"{precondition_uid}, UID in object meta: {md['uid']}")
            if precondition_rv is not None and precondition_rv != kv.mod_revision:
                raise conflict(res.plural, name, res.group)
            policy = propagation or "Background"
            finalizers = list(md.get("finalizers") or ())
            if res.kind == "Namespace" and NAMESPACE_FINALIZER not in finalizers:
                finalizers.append(NAMESPACE_FINALIZER)
            if policy == "Foreground" and FOREGROUND not in finalizers:
                finalizers.append(FOREGROUND)
            if policy == "Orphan":
                await self._orphan_dependents(obj)
            marked = self._mark_deleted(res, obj, finalizers, grace_period)
            if marked is None:
                return Deletion(obj, False)  # already being deleted, nothing new to record
            mmd = marked["metadata"]
            try:
                if not finalizers and not mmd.get("deletionGracePeriodSeconds"):
                    return Deletion(await self._delete_now(res, obj, kv.mod_revision), True)
                return Deletion(await self.storage.update(res, marked,
                                                          expected=kv.mod_revision), False)
            except ApiError as e:
                if e.reason != "Conflict" or precondition_rv is not None:
                    raise
        raise conflict(res.plural, name, res.group, why="too many concurrent writers")

    def _mark_deleted(self, res: Resource, obj: dict[str, Any], finalizers: list[str],
                      grace_period: int | None) -> dict[str, Any] | None:
        """``obj`` as a delete leaves it: ``deletionTimestamp`` (when it is due to go:
        now plus the grace period, as Kubernetes sets it), ``deletionGracePeriodSeconds``
        and the finalizers. An object already being deleted keeps its deadline unless
        the request shortens the grace (a longer one is ignored); None when the request
        changes nothing."""
        md = obj["metadata"]
        marked = copy.deepcopy(obj)
        mmd = marked["metadata"]
        mmd["finalizers"] = finalizers
        if not finalizers:
            del mmd["finalizers"]  # omitted when empty, as Kubernetes stores it
        if md.get("deletionTimestamp"):
            current = int(md.get("deletionGracePeriodSeconds") or 0)
            grace = current
            if grace_period is not None and grace_period < current:
                grace = grace_period
                mmd["deletionTimestamp"] = _shift(md["deletionTimestamp"], grace - current)
            mmd["deletionGracePeriodSeconds"] = grace
            if grace == current and finalizers == list(md.get("finalizers") or ()):
                return None
            return marked
        grace = strategy_for(res).deletion_grace(obj, grace_period)
        mmd["deletionTimestamp"] = now_rfc3339(lambda: self.clock() + grace)
        mmd["deletionGracePeriodSeconds"] = grace
        if res.kind == "Namespace":
            marked.setdefault("status", {})["phase"] = "Terminating"
        return marked

    async def _delete_now(self, res: Resource, obj: dict[str, Any], expected: int
                          ) -> dict[str, Any]:
        md = obj["metadata"]
        return await self.storage.delete(res, md.get("namespace"), md["name"],
                                         expected=expected)

    async def _orphan_dependents(self, owner: dict[str, Any]) -> None:
        uid = owner["metadata"]["uid"]
        ns = owner["metadata"].get("namespace")
        for res in RESOURCES:
            if ns and not res.namespaced:
                continue
            items, _, _ = await self.storage.list(res, ns)
            for item in items:
                refs = item["metadata"].get("ownerReferences") or ()
                if not any(r.get("uid") == uid for r in refs):
                    continue
                patch = {"metadata": {"ownerReferences": [r for r in refs
                                                          if r.get("uid") != uid]}}
                try:
                    await self.patch(res, item["metadata"].get("namespace"),
                                     item["metadata"]["name"], "merge", patch)
                except ApiError as e:
                    if e.code != 404:
                        raise

    # -- shared checks -----------------------------------------------------------------------

    def _check_envelope(self, res: Resource, namespace: str | None, body: dict[str, Any], *,
                        name: str | None) -> dict[str, Any]:
        """apiVersion/kind/namespace/name of a body against the request's path."""
        obj = dict(body)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version in (None, "") and kind in (None, ""):
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        elif kind != res.kind:
            raise bad_request(f"the kind in the body ({kind!r}) does not match the "
                              f"resource of the request ({res.kind}, {res.plural})")
        elif api_version != res.api_version:
            raise bad_request(f"the API version in the body ({api_version!r}) does not "
                              f"match the expected API version ({res.api_version})")
        md = obj.get("metadata")
        if md is None:
            md = {}
        if not isinstance(md, dict):
            raise invalid(res.kind, name or "", res.group,
                          [_cause("metadata", "must be an object")])
        md = dict(md)
        obj["metadata"] = md
        if res.namespaced:
            given = md.get("namespace")
            if given not in (None, "") and given != namespace:
                raise bad_request(f"the namespace of the object ({given!r}) does not match "
                                  f"the namespace of the request ({namespace!r})")
            md["namespace"] = namespace
        if name is not None:
            given = md.get("name")
            if given not in (None, "") and given != name:
                raise bad_request(f"the name of the object ({given!r}) does not match the "
                                  f"name of the request ({name!r})")
            md["name"] = name
        return obj

    def _validate(self, res: Resource, obj: dict[str, Any], *,
                  old: dict[str, Any] | None = None) -> None:
        strategy = strategy_for(res)
        if old is None:
            strategy.default(obj)
        errs = FieldErrors()
        v.metadata(obj, errs, namespaced=res.namespaced, name_rule=strategy.name_rule)
        strategy.validate(obj, errs)
        if old is not None:
            strategy.validate_update(obj, old, errs)
        if errs:
            name = obj["metadata"].get("name") or ""
            raise invalid(res.kind, str(name), res.group, errs.causes)


def _shift(stamp: str, seconds: int) -> str:
    """An RFC 3339 ``deletionTimestamp`` moved by ``seconds``."""
    t = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    return now_rfc3339(lambda: float(t + seconds))


def _cause(field: str, why: str) -> dict[str, str]:
    return {"reason": "FieldValueInvalid", "field": field, "message": f"{field}: {why}"}


__all__ = ["FOREGROUND", "NAMESPACE_FINALIZER", "Deletion", "Objects", "Propagation",
           "now_rfc3339"]
