"""List-then-watch informers: a local, indexed copy of one kind that stays current.

client-go's shared informer, for one event loop. :class:`Informer` lists the objects
(paging), fills its :class:`~control.client.cache.Indexer`, then watches from the list's
resourceVersion and applies every event to the cache before calling the handlers:

- **resume**: when the watch ends (server timeout, broken connection), it watches again
  from the last resourceVersion it saw (events or BOOKMARKs), so nothing is missed and
  nothing is listed again;
- **relist on 410 Gone**: if that revision has been compacted, it lists again and
  diffs the result against the cache: objects that vanished meanwhile get ``on_delete``,
  new ones ``on_add``, changed ones (different resourceVersion) ``on_update``; unchanged
  ones get nothing, so a relist neither loses nor duplicates state;
- **reconnect with back-off**: list or watch failures (server down, 5xx, 401/403) are
  retried with exponential back-off and jitter, reset after a watch opens;
- **periodic resync**: every ``resync_period`` seconds every cached object is passed to
  ``on_update(obj, obj)``, the level-triggered safety net for controllers;
- duplicate deliveries (an ADDED/MODIFIED whose resourceVersion the cache already has,
  a DELETED for an object it does not have) are dropped.

Handlers are plain functions called on the loop; controllers' handlers only enqueue
keys (see :mod:`control.client.workers`). An exception in a handler is logged and does
not stop the informer.

Neighbours: :mod:`control.client.rest` (list/watch), :mod:`control.client.cache`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from control.client import errors
from control.client.cache import Indexer, IndexFunc, object_key
from control.client.clock import Clock, LoopClock, sleep
from control.client.resources import Resource, lookup
from control.client.rest import ApiClient

Obj = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Handler:
    """Callbacks for one consumer; any may be None."""

    on_add: Callable[[Obj], None] | None = None
    on_update: Callable[[Obj, Obj], None] | None = None
    on_delete: Callable[[Obj], None] | None = None


class Informer:
    """A cache of one resource kind kept current by list-then-watch.

    ``clock`` times both the resync period and the reconnect back-off, so a test on a
    :class:`~control.client.clock.ManualClock` must advance it for reconnects too.
    """

    def __init__(self, client: ApiClient, resource: Resource | str, *,
                 namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None, resync_period: float | None = None,
                 indexers: Mapping[str, IndexFunc] | None = None, clock: Clock | None = None,
                 backoff_base: float = 0.2, backoff_max: float = 30.0,
                 watch_timeout: int = 300) -> None:
        self.client = client
        self.resource = resource if isinstance(resource, Resource) else lookup(resource)
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.store = Indexer(indexers)
        self._clock = clock or LoopClock()
        self._backoff = (backoff_base, backoff_max)
        self._watch_timeout = watch_timeout
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.resource_version: str | None = None
        # Counters for observability and tests.
        self.lists = 0
        self.watches = 0
        self.failures = 0  # failed list/watch attempts (each followed by a back-off)
        self.last_error: BaseException | None = None

    # -- configuration ---------------------------------------------------------------

    def add_handler(self, handler: Handler | None = None, *,
                    on_add: Callable[[Obj], None] | None = None,
                    on_update: Callable[[Obj, Obj], None] | None = None,
                    on_delete: Callable[[Obj], None] | None = None) -> Handler:
        """Register callbacks. Added after the initial list, the handler first gets
        ``on_add`` for every cached object, as client-go does."""
        h = handler or Handler(on_add, on_update, on_delete)
        self._handlers.append(h)
        if self._synced.is_set() and h.on_add:
            for obj in self.store.list():
                self._call(h.on_add, obj)
        return h

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start listing and watching in background tasks (idempotent)."""
        if self._tasks:
            return
        name = f"informer-{self.resource.plural}"
        self._tasks.append(asyncio.create_task(self._run(), name=name))
        if self.resync_period:
            self._tasks.append(asyncio.create_task(self._resync_loop(), name=f"{name}-resync"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Informer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def has_synced(self) -> bool:
        """True once the first list has filled the cache."""
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait for the first list (TimeoutError after ``timeout`` seconds)."""
        await asyncio.wait_for(self._synced.wait(), timeout)

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.store.get(namespace, name)

    def list(self, namespace: str | None = None) -> list[Obj]:
        return self.store.list(namespace)

    # -- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        base, cap = self._backoff
        delay = base
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list_and_replace()
                    need_list = False
                    delay = base
                await self._watch_once()
                delay = base
            except errors.Gone as e:
                log.info("%s: resourceVersion %s is gone (%s); relisting",
                         self.resource.plural, self.resource_version, e)
                self.last_error = e
                need_list = True
            except errors.ClientError as e:
                self.last_error = e
                self.failures += 1
                log.warning("%s: %s failed: %s; retrying in %.2fs", self.resource.plural,
                            "list" if need_list else "watch", e, delay)
                # Jitter keeps many informers from reconnecting in lock step.
                await sleep(self._clock, random.uniform(delay / 2, delay))
                delay = min(delay * 2, cap)
            except Exception as e:
                # A malformed object or a bug: never let the informer die silently;
                # start over from a fresh list after a back-off.
                self.last_error = e
                self.failures += 1
                log.exception("%s informer: unexpected error; relisting in %.2fs",
                              self.resource.plural, delay)
                need_list = True
                await sleep(self._clock, random.uniform(delay / 2, delay))
                delay = min(delay * 2, cap)

    async def _list_and_replace(self) -> None:
        items, rv = await self.client.list_all(
            self.resource, namespace=self.namespace, label_selector=self.label_selector,
            field_selector=self.field_selector)
        self.lists += 1
        old = {object_key(o): o for o in self.store.list()}
        self.store.replace(items)
        self.resource_version = rv or None
        self._synced.set()
        for obj in items:
            prev = old.pop(object_key(obj), None)
            if prev is None:
                self._dispatch("add", obj)
            elif _rv(prev) != _rv(obj):
                self._dispatch("update", obj, prev)
        for gone in old.values():
            self._dispatch("delete", gone)

    async def _watch_once(self) -> None:
        # Jitter the server-side timeout so many informers do not re-watch together.
        timeout = int(self._watch_timeout * random.uniform(1.0, 1.5))
        async with self.client.watch(
                self.resource, namespace=self.namespace,
                resource_version=self.resource_version, label_selector=self.label_selector,
                field_selector=self.field_selector, timeout_seconds=timeout) as stream:
            self.watches += 1
            async for ev in stream:
                rv = ev.resource_version
                if ev.type == "BOOKMARK":
                    if rv:
                        self.resource_version = rv
                    continue
                obj = ev.object
                obj.setdefault("kind", self.resource.kind)
                obj.setdefault("apiVersion", self.resource.api_version)
                if ev.type == "DELETED":
                    prev = self.store.delete(obj)
                    if prev is not None:
                        self._dispatch("delete", obj)
                else:
                    prev = self.store.get_by_key(object_key(obj))
                    if prev is None:
                        self.store.add(obj)
                        self._dispatch("add", obj)
                    elif _rv(prev) != rv:
                        self.store.add(obj)
                        self._dispatch("update", obj, prev)
                if rv:
                    self.resource_version = rv

    async def _resync_loop(self) -> None:
        assert self.resync_period
        await self._synced.wait()
        while True:
            await sleep(self._clock, self.resync_period)
            for obj in self.store.list():
                self._dispatch("update", obj, obj)

    # -- handlers --------------------------------------------------------------------

    def _dispatch(self, what: str, obj: Obj, prev: Obj | None = None) -> None:
        for h in self._handlers:
            if what == "add" and h.on_add:
                self._call(h.on_add, obj)
            elif what == "update" and h.on_update:
                self._call(h.on_update, prev if prev is not None else obj, obj)
            elif what == "delete" and h.on_delete:
                self._call(h.on_delete, obj)

    def _call(self, fn: Callable[..., None], *args: Obj) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%s informer: handler %r failed", self.resource.plural, fn)

    def __repr__(self) -> str:
        return (f"<Informer {self.resource.plural} ns={self.namespace} objects={len(self.store)}"
                f" rv={self.resource_version} synced={self.has_synced}>")


def _rv(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")
