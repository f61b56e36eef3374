"""Garbage collection by owner references, and the deletions that wait for it.

Kubernetes' garbage collector, in the API server process: it keeps an index of who owns
whom from the watch cache's event stream (every write passes through it) and acts on:

- an owner deleted (Background propagation): each dependent whose owners are now all
  gone is deleted in turn (and its own dependents after it); a dependent that still
  has a live owner only loses the dangling reference;
- an owner marked with the ``foregroundDeletion`` finalizer: its dependents are deleted
  (foreground too, so grandchildren go first) and once none is left the finalizer is
  removed, which deletes the owner;
- a Namespace being deleted: everything in it is deleted, then the namespace;
- at start-up, a sweep over everything: dependents whose owners vanished while the
  server was down are collected, and unfinished foreground or namespace deletions
  resume, so a crash between deleting an owner and its dependents leaves nothing behind.

The index only says where to look: before deleting anything the collector reads the
owner from the store and compares its uid, as the real one does, so a stale index can
delay collection but never delete an object whose owner exists.

Neighbours: ``objects.py`` marks deletions (finalizers, propagation); ``watchcache.py``
feeds the event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from control.api.errors import ApiError
from control.api.objects import FOREGROUND, NAMESPACE_FINALIZER, Objects
from control.api.resources import Resource, all_namespaced, by_kind, parse_key
from control.api.watchcache import ROOT, CachedEvent, WatchCache

log = logging.getLogger(__name__)

RETRY_DELAY = 0.2  # seconds before re-checking a deletion that waits on others


class GarbageCollector:
    def __init__(self, objects: Objects, cache: WatchCache) -> None:
        self.objects = objects
        self.cache = cache
        self.owners_of: dict[str, tuple[str, ...]] = {}  # key -> owner uids
        self.dependents: dict[str, set[str]] = {}  # owner uid -> dependent keys
        self.uid_of: dict[str, str] = {}  # key -> uid
        self.key_of: dict[str, str] = {}  # uid -> key
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self) -> None:
        """Index everything, queue the start-up sweep, then follow the cache."""
        kvs, _ = await self.objects.storage.store.list(ROOT)
        for kv in kvs:
            obj = json.loads(kv.value)
            self._index(kv.key, obj)
            self._enqueue_work_for(kv.key, obj, startup=True)
        self.cache.add_listener(self._on_event)
        self._task = asyncio.create_task(self._worker(), name="garbage-collector")

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- index -------------------------------------------------------------------------------

    def _index(self, key: str, obj: dict[str, Any]) -> None:
        self._unindex(key)
        md = obj.get("metadata") or {}
        uid = md.get("uid")
        if uid:
            self.uid_of[key] = uid
            self.key_of[uid] = key
        owners = tuple(r.get("uid") for r in md.get("ownerReferences") or () if r.get("uid"))
        if owners:
            self.owners_of[key] = owners
            for o in owners:
                self.dependents.setdefault(o, set()).add(key)

    def _unindex(self, key: str) -> None:
        uid = self.uid_of.pop(key, None)
        if uid and self.key_of.get(uid) == key:
            del self.key_of[uid]
        for o in self.owners_of.pop(key, ()):
            deps = self.dependents.get(o)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self.dependents[o]

    def _on_event(self, ev: CachedEvent) -> None:
        if ev.type == "DELETED":
            uid = self.uid_of.get(ev.key)
            owners = self.owners_of.get(ev.key, ())
            self._unindex(ev.key)
            for dep in list(self.dependents.get(uid or "", ())):
                self._enqueue("orphan-check", dep)
            for o in owners:  # an owner waiting in the foreground may now be done
                if o in self.key_of:
                    self._enqueue("foreground", self.key_of[o])
            return
        self._index(ev.key, ev.obj)
        self._enqueue_work_for(ev.key, ev.obj, startup=False)

    def _enqueue_work_for(self, key: str, obj: dict[str, Any], *, startup: bool) -> None:
        md = obj.get("metadata") or {}
        if md.get("deletionTimestamp"):
            fins = md.get("finalizers") or ()
            if NAMESPACE_FINALIZER in fins:
                self._enqueue("namespace", key)
            if FOREGROUND in fins:
                self._enqueue("foreground", key)
        owners = self.owners_of.get(key, ())
        if owners and (startup or any(o not in self.key_of for o in owners)):
            self._enqueue("orphan-check", key)

    def _enqueue(self, what: str, key: str) -> None:
        item = (what, key)
        if item not in self._queued:
            self._queued.add(item)
            self._queue.put_nowait(item)

    def _enqueue_later(self, what: str, key: str) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            self._timers.discard(timer)  # type: ignore[arg-type]
            self._enqueue(what, key)
        timer = loop.call_later(RETRY_DELAY, fire)
        self._timers.add(timer)

    # -- work --------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            what, key = await self._queue.get()
            self._queued.discard((what, key))
            try:
                if what == "orphan-check":
                    await self._orphan_check(key)
                elif what == "foreground":
                    await self._foreground(key)
                elif what == "namespace":
                    await self._namespace(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("garbage collection of %s (%s) failed; retrying", key, what)
                self._enqueue_later(what, key)

    async def _read(self, key: str) -> tuple[Resource, dict[str, Any]] | None:
        parsed = parse_key(key)
        if parsed is None:
            return None
        res, ns, name = parsed
        try:
            obj, _ = await self.objects.storage.get(res, ns, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise
        return res, obj

    async def _owner_exists(self, ref: dict[str, Any], namespace: str | None) -> bool:
        res = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if res is None:
            return True  # a kind this server does not serve: never collect on its say
        try:
            owner, _ = await self.objects.storage.get(
                res, namespace if res.namespaced else None, ref.get("name", ""))
        except ApiError as e:
            if e.code == 404:
                return False
            raise
        return owner["metadata"].get("uid") == ref.get("uid")

    async def _orphan_check(self, key: str) -> None:
        found = await self._read(key)
        if found is None:
            return
        res, obj = found
        md = obj["metadata"]
        refs = md.get("ownerReferences") or []
        if not refs:
            return
        alive = [r for r in refs if await self._owner_exists(r, md.get("namespace"))]
        if len(alive) == len(refs):
            return
        if alive:
            await self.objects.patch(res, md.get("namespace"), md["name"], "merge",
                                     {"metadata": {"ownerReferences": alive,
                                                   "resourceVersion": md["resourceVersion"]}})
            return
        log.info("collecting %s: its owners are gone", key)
        await self._delete(res, md, "Background")

    async def _delete(self, res: Resource, md: dict[str, Any], policy: str) -> None:
        try:
            await self.objects.delete(res, md.get("namespace"), md["name"],
                                      propagation=policy,  # type: ignore[arg-type]
                                      precondition_uid=md["uid"])
        except ApiError as e:
            if e.code not in (404, 409):
                raise

    async def _foreground(self, key: str) -> None:
        found = await self._read(key)
        if found is None:
            return
        res, owner = found
        md = owner["metadata"]
        if not md.get("deletionTimestamp") or FOREGROUND not in (md.get("finalizers") or ()):
            return
        waiting = False
        for dep_key in list(self.dependents.get(md["uid"], ())):
            dep = await self._read(dep_key)
            if dep is None:
                continue
            dep_res, dep_obj = dep
            if not any(r.get("uid") == md["uid"]
                       for r in dep_obj["metadata"].get("ownerReferences") or ()):
                continue
            waiting = True
            if not dep_obj["metadata"].get("deletionTimestamp"):
                await self._delete(dep_res, dep_obj["metadata"], "Foreground")
        if waiting:
            self._enqueue_later("foreground", key)
            return
        await self._remove_finalizer(res, owner, FOREGROUND)

    async def _namespace(self, key: str) -> None:
        found = await self._read(key)
        if found is None:
            return
        res, ns_obj = found
        name = ns_obj["metadata"]["name"]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            return
        remaining = 0
        for r in all_namespaced():
            items, _, _ = await self.objects.storage.list(r, name)
            for item in items:
                remaining += 1
                if not item["metadata"].get("deletionTimestamp"):
                    await self._delete(r, item["metadata"], "Background")
        if remaining:
            self._enqueue_later("namespace", key)
            return
        await self._remove_finalizer(res, ns_obj, NAMESPACE_FINALIZER)

    async def _remove_finalizer(self, res: Resource, obj: dict[str, Any], fin: str) -> None:
        md = obj["metadata"]
        fins = [f for f in md.get("finalizers") or () if f != fin]
        try:
            await self.objects.patch(res, md.get("namespace"), md["name"], "merge",
                                     {"metadata": {"finalizers": fins or None,
                                                   "resourceVersion": md["resourceVersion"]}})
        except ApiError as e:
            if e.code == 409:
                self._enqueue_later("foreground" if fin == FOREGROUND else "namespace",
                                    res.key(md.get("namespace"), md["name"]))
            elif e.code != 404:
                raise
