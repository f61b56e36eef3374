"""The node lifecycle controller: NotReady marks, Pod readiness, eviction, orphaned Pods.

**Heartbeat = a Node status update.** The agent rewrites its Node's status every few
seconds with a fresh ``lastHeartbeatTime`` on the ``Ready`` condition (``agent/node.py``).
This controller does not compare that timestamp with its own clock (the machines' clocks
may disagree, and it has one-second resolution): like Kubernetes' ``probeTimestamp`` it
records *when it observed* the timestamp change, on its own monotonic clock, and feeds
that to :class:`~control.controllers.nodehealth.NodeHealth`. A Node first seen (also
after a fail-over to a new leader) counts as heard from now, so a restart never evicts
on old data. Its own writes keep ``lastHeartbeatTime`` unchanged, so they never count.

Every ``tick`` seconds, :meth:`NodeLifecycleController.tick` asks ``NodeHealth`` what to
do and converges, level-triggered:

- a node past the grace period gets ``Ready=Unknown`` (reason ``NodeStatusUnknown``) and
  every Pod on it gets ``Ready=False``, so the endpoints controller drops them at once
  and the scheduler stops placing Pods there; re-checked each tick while NotReady;
- a node NotReady for the eviction timeout has its Pods deleted (rate-limited across
  nodes; none at all in a mass outage, see ``nodehealth.py``) so their owners recreate
  them on healthy nodes; an Event ``NodeControllerEviction`` names each. These deletes
  are forced (``gracePeriodSeconds=0``), also for Pods already Terminating there: a
  graceful delete waits for the node's agent to finalize it, and that agent is silent;
- when a disruption ends (enough nodes are back), the nodes still silent start a new
  grace period, as in Kubernetes, rather than being evicted the moment the first
  returning node turns the cluster's state back to normal;
- a Pod bound to a node that no longer exists is force-deleted after ``orphan_grace``
  seconds (Kubernetes' pod garbage collector), which is what happens to a deleted node's
  Pods, Terminating or not. The grace runs from the Node's delete event (from the first
  pass that finds the Pods when the controller did not see the event), and the loop
  wakes when the first of them falls due rather than at its next tick.

Runs on a :class:`~control.client.clock.Clock`, so tests move time by hand.

Neighbours: ``nodehealth.py`` (the decisions), ``events.py``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import Any

from control.client import errors
from control.client.cache import object_key, pods_by_node
from control.client.clock import Clock, LoopClock, sleep
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.controllers.events import EventRecorder
from control.controllers.nodehealth import Decisions, NodeHealth, NodeHealthConfig
from control.controllers.podutil import condition, is_ready

Obj = dict[str, Any]
log = logging.getLogger(__name__)

NODE_INDEX = "node"
# While evictions wait for tokens, look again this often (Kubernetes' eviction pass runs
# every 100 ms): the token bucket holds one eviction at a time, so with a 1 s monitor
# period a rate of 10 nodes/s would otherwise mean one node per second.
EVICTION_PASS = 0.1  # seconds
CONCURRENCY = 32  # writes in flight at once when a whole node's Pods change


async def _bounded(coros: list[Any], limit: int = CONCURRENCY) -> None:
    """Run the writes concurrently, at most ``limit`` at a time (a node holds up to 110
    Pods: one by one that is seconds of round trips)."""
    slots = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with slots:
            await coro
    await asyncio.gather(*(one(c) for c in coros))


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def heartbeat_stamp(node: Obj) -> str | None:
    c = condition(node, "Ready")
    return c.get("lastHeartbeatTime") if c else None


def _with_condition(obj: Obj, type_: str, status: str, reason: str, message: str) -> list[Obj]:
    conds = copy.deepcopy((obj.get("status") or {}).get("conditions") or [])
    for c in conds:
        if c.get("type") == type_:
            if c.get("status") != status:
                c["lastTransitionTime"] = _stamp()
            c.update(status=status, reason=reason, message=message)
            return conds
    conds.append({"type": type_, "status": status, "reason": reason, "message": message,
                  "lastTransitionTime": _stamp()})
    return conds


class NodeLifecycleController:
    """Turns missing heartbeats into NotReady nodes, unready Pods and evictions."""

    name = "nodelifecycle"

    def __init__(self, api: ApiClient, factory: InformerFactory, recorder: EventRecorder, *,
                 config: NodeHealthConfig | None = None, tick: float = 1.0,
                 orphan_grace: float = 10.0, clock: Clock | None = None) -> None:
        if tick <= 0:
            raise ValueError(f"tick must be > 0 seconds, got {tick}")
        self.api = api
        self.recorder = recorder
        self.health = NodeHealth(config)
        self.tick_period = tick
        self.orphan_grace = orphan_grace
        self._clock = clock or LoopClock()
        self.nodes = factory.informer("nodes")
        self.pods = factory.informer("pods", indexers={NODE_INDEX: pods_by_node})
        self._stamps: dict[str, str | None] = {}
        self.not_ready: set[str] = set()
        self.evicting: set[str] = set()
        self._orphans: dict[str, float] = {}  # pod uid -> when its grace started
        #: node name -> when this controller saw the Node deleted: its Pods' orphan grace
        #: starts then, not at the next pass that notices them
        self._node_gone_at: dict[str, float] = {}
        #: the earliest instant an orphan's grace ends (the loop wakes for it)
        self._next_orphan_due: float | None = None
        self.last: Decisions | None = None
        self._stopped = asyncio.Event()
        self.nodes.add_handler(on_add=self.observe_node,
                               on_update=lambda _o, n: self.observe_node(n),
                               on_delete=self._node_deleted)

    # -- heartbeats ----------------------------------------------------------------------

    def observe_node(self, node: Obj) -> None:
        """Informer handler: a changed heartbeat stamp is a heartbeat, now."""
        name = object_key(node)
        stamp = heartbeat_stamp(node)
        if name not in self._stamps or stamp != self._stamps[name]:
            self._stamps[name] = stamp
            self.health.heartbeat(name, self._clock.now())

    def _node_deleted(self, node: Obj) -> None:
        name = object_key(node)
        self._node_gone_at[name] = self._clock.now()
        self._stamps.pop(name, None)
        self.health.forget(name)
        self.not_ready.discard(name)
        self.evicting.discard(name)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        await self.nodes.wait_synced()
        await self.pods.wait_synced()
        while not self._stopped.is_set():
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node lifecycle pass failed; trying again next tick")
            delay = self.tick_period
            if self.last is not None and self.last.waiting_for_eviction \
                    and self.last.state == "Normal":
                delay = min(delay, EVICTION_PASS)
            if self._next_orphan_due is not None:  # a deleted node's Pods fall due
                delay = min(delay, max(self._next_orphan_due - self._clock.now(), 0.0))
            await sleep(self._clock, delay)

    def shutdown(self) -> None:
        self._stopped.set()

    async def tick(self) -> Decisions:
        """One pass: evaluate, then converge nodes and Pods. Returns the decisions."""
        now = self._clock.now()
        if self.last is not None and self.last.state != "Normal" \
                and self.health.state(now) == "Normal":
            # Leaving a disruption (Kubernetes does the same when a zone leaves full
            # disruption): the nodes still silent get a fresh grace period instead of
            # being evicted at once because the first returning node tipped the balance.
            for name in sorted(self.not_ready):
                self.health.heartbeat(name, now)
            log.info("disruption over: %d NotReady nodes get a new grace period",
                     len(self.not_ready))
        d = self.health.evaluate(now)
        self.last = d
        for name in d.mark_not_ready:
            self.not_ready.add(name)
            node = self.nodes.get(None, name)
            if node is not None:
                self.recorder.record(node, "Normal", "NodeNotReady",
                                     f"Node {name} status is now: NodeNotReady (no heartbeat "
                                     f"for {self.health.config.grace_period:g}s)")
        for name in d.mark_ready:
            self.not_ready.discard(name)
            self.evicting.discard(name)
        for name in d.evict:
            self.evicting.add(name)
        if d.waiting_for_eviction and d.state != "Normal":
            log.warning("%s: not evicting pods of %d NotReady nodes (%s)", d.state,
                        len(d.waiting_for_eviction), ", ".join(d.waiting_for_eviction[:5]))
        for name in sorted(self.not_ready):
            await self._enforce_not_ready(name)
        for name in sorted(self.evicting):
            await self._evict(name)
        await self._collect_orphans(now)
        return d

    async def _enforce_not_ready(self, name: str) -> None:
        node = self.nodes.get(None, name)
        if node is None:
            return
        ready = condition(node, "Ready")
        if ready is None or ready.get("status") != "Unknown":
            conds = _with_condition(node, "Ready", "Unknown", "NodeStatusUnknown",
                                    "Agent stopped posting node status.")
            try:
                await self.api.patch("nodes", name, {"status": {"conditions": conds}},
                                     subresource="status")
            except errors.NotFound:
                return
        await _bounded([self._pod_not_ready(pod, name)
                        for pod in self.pods.store.by_index(NODE_INDEX, name)
                        if is_ready(pod)])

    async def _pod_not_ready(self, pod: Obj, node: str) -> None:
        md = pod["metadata"]
        conds = _with_condition(pod, "Ready", "False", "NodeNotReady",
                                f"node {node} is not ready")
        try:
            await self.api.patch("pods", md["name"], {"status": {"conditions": conds}},
                                 namespace=md.get("namespace"), subresource="status")
        except errors.NotFound:
            pass

    async def _evict(self, name: str) -> None:
        await _bounded([
            self._delete_pod(pod, "NodeControllerEviction",
                             f"Deleting pod {object_key(pod)}: node {name} has been "
                             f"NotReady for {self.health.config.eviction_timeout:g}s")
            for pod in self.pods.store.by_index(NODE_INDEX, name)])

    async def _collect_orphans(self, now: float) -> None:
        seen: set[str] = set()
        missing: set[str] = set()
        due = []
        next_due: float | None = None
        for node_name in self.pods.store.index_values(NODE_INDEX):
            if self.nodes.get(None, node_name) is not None:
                continue
            missing.add(node_name)
            # The grace runs from the Node's delete event when this controller saw it,
            # else (deleted while it was not watching) from the first pass that notices.
            start = min(self._node_gone_at.get(node_name, now), now)
            for pod in self.pods.store.by_index(NODE_INDEX, node_name):
                uid = pod["metadata"].get("uid", "")
                seen.add(uid)
                first = self._orphans.setdefault(uid, start)
                if now - first >= self.orphan_grace:
                    due.append(self._delete_pod(pod, "NodeDeleted",
                                                f"Deleting pod {object_key(pod)}: its node "
                                                f"{node_name} no longer exists"))
                elif next_due is None or first + self.orphan_grace < next_due:
                    next_due = first + self.orphan_grace
        self._next_orphan_due = next_due
        await _bounded(due)
        for uid in list(self._orphans):
            if uid not in seen:
                del self._orphans[uid]
        for name in list(self._node_gone_at):
            if name not in missing and (self.nodes.get(None, name) is not None
                                        or now - self._node_gone_at[name] > self.orphan_grace):
                del self._node_gone_at[name]  # came back, or nothing left to collect

    async def _delete_pod(self, pod: Obj, reason: str, message: str) -> None:
        try:
            await force_delete_pod(self.api, pod)
        except (errors.NotFound, errors.Conflict):
            return  # gone already, or replaced by a new Pod of that name
        self.recorder.record(pod, "Warning", reason, message)


async def force_delete_pod(api: ApiClient, pod: Obj) -> None:
    """Delete ``pod`` now (``gracePeriodSeconds=0``), also when it is already
    Terminating: no agent will stop it and finalize a graceful delete on a dead or
    deleted node. The uid precondition spares a new Pod that took the name."""
    md = pod["metadata"]
    await api.delete("pods", md["name"], namespace=md.get("namespace"), uid=md.get("uid"),
                     grace_period_seconds=0)
