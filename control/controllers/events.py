"""Recording Events: what a controller decided, in words a user reads in ``describe``.

client-go's event recorder, reduced: :meth:`EventRecorder.record` never blocks and never
raises (a controller must not stall or fail because an Event could not be written); it
puts the Event on a bounded queue that one sender task writes through the API. Repeats
are aggregated as Kubernetes does: an Event with the same involved object, type, reason,
message and source as one already written bumps that Event's ``count`` and
``lastTimestamp`` instead of creating another object, so a Pod that fails to schedule a
hundred times has one Event with ``count: 100``.

When the queue is full (the API server is slow or down) new Events are dropped and
counted in :attr:`EventRecorder.dropped`, as client-go drops them: Events are a
diagnostic, not state.

Neighbours: every controller and the scheduler record through one recorder per process
(``manager.py`` builds it); ``control.cli.describe`` shows the Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from control.client import errors
from control.client.rest import ApiClient

Obj = dict[str, Any]
EventType = Literal["Normal", "Warning"]
log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000      # Events waiting to be written; client-go's channel holds 1000
AGGREGATE_LIMIT = 4096  # recent Events remembered for aggregation (LRU)
SENDERS = 4             # concurrent writes: a burst of 3,000 bindings is not serialised


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True, slots=True)
class _Pending:
    involved: Obj
    type: EventType
    reason: str
    message: str
    at: float


def _key(ev: _Pending) -> tuple:
    return (ev.involved.get("namespace", ""), ev.involved["kind"], ev.involved["name"],
            ev.involved["uid"], ev.type, ev.reason, ev.message)


class EventRecorder:
    """Writes Events for one component (``source.component``) on one host."""

    def __init__(self, api: ApiClient, component: str, *, host: str = "",
                 queue_limit: int = QUEUE_LIMIT) -> None:
        self.api = api
        self.component = component
        self.host = host
        # One queue per sender, chosen by the aggregation key: repeats of one Event are
        # written by one sender in order, so two never both create its first copy.
        self._queues: list[asyncio.Queue[_Pending]] = [
            asyncio.Queue(max(1, queue_limit // SENDERS)) for _ in range(SENDERS)]
        # aggregation key -> (namespace, event name, count)
        self._recent: OrderedDict[tuple, tuple[str, str, int]] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0
        self.written = 0

    # -- producer ----------------------------------------------------------------------

    def record(self, obj: Obj, type_: EventType, reason: str, message: str) -> None:
        """Queue an Event about ``obj`` (any API object with metadata). Never raises."""
        md = obj.get("metadata") or {}
        involved = {"kind": obj.get("kind", ""), "apiVersion": obj.get("apiVersion", ""),
                    "name": md.get("name", ""), "namespace": md.get("namespace") or "",
                    "uid": md.get("uid", "")}
        if not involved["namespace"]:
            # Cluster-scoped objects (Nodes): their Events live in "default", as in Kubernetes.
            involved.pop("namespace")
        ev = _Pending(involved, type_, reason, message, time.time())
        try:
            self._queues[hash(_key(ev)) % SENDERS].put_nowait(ev)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("event queue full; dropped %d events so far (latest: %s %s)",
                            self.dropped, reason, involved["name"])

    # -- sender ------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._sender(q), name=f"events-{i}")
                           for i, q in enumerate(self._queues)]

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued Event has been written (or given up on)."""
        await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)

    async def stop(self, *, drain_timeout: float = 2.0) -> None:
        """Write what is queued (for up to ``drain_timeout`` seconds), then stop."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await self.flush(drain_timeout)
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sender(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            ev = await queue.get()
            try:
                await self._write(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a diagnostic: log and move on, never stop the sender
                log.warning("could not write event %s for %s: %s", ev.reason,
                            ev.involved.get("name"), e)
            finally:
                queue.task_done()

    async def _write(self, ev: _Pending) -> None:
        key = _key(ev)
        ns = ev.involved.get("namespace") or "default"
        seen = self._recent.get(key)
        if seen is not None:
            _, name, count = seen
            try:
                await self.api.patch("events", name, {"count": count + 1,
                                                      "lastTimestamp": _stamp(ev.at)},
                                     namespace=ns)
                self._remember(key, ns, name, count + 1)
                self.written += 1
                return
            except errors.NotFound:
                pass  # deleted meanwhile (or expired): write a fresh one
        # Kubernetes names Events "<object>.<hex nanoseconds>": unique and sortable.
        name = f"{ev.involved['name']}.{time.time_ns():x}"
        body: Obj = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": ev.involved,
            "reason": ev.reason, "message": ev.message, "type": ev.type,
            "count": 1,
            "firstTimestamp": _stamp(ev.at), "lastTimestamp": _stamp(ev.at),
            "source": {"component": self.component, **({"host": self.host}
                                                       if self.host else {})},
            "reportingComponent": self.component,
        }
        await self.api.create("events", body, namespace=ns)
        self._remember(key, ns, name, 1)
        self.written += 1

    def _remember(self, key: tuple, ns: str, name: str, count: int) -> None:
        self._recent[key] = (ns, name, count)
        self._recent.move_to_end(key)
        while len(self._recent) > AGGREGATE_LIMIT:
            self._recent.popitem(last=False)
