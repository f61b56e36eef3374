"""The scheduling loop: pending Pods in, Bindings out.

kube-scheduler's shape, on the pieces beside this module:

- **informers** for Pods and Nodes feed the :class:`~control.scheduler.cache.SchedulerCache`
  (bound Pods counted on their nodes) and a work queue of *pending* Pods (no
  ``spec.nodeName``, ``schedulerName`` ours, not being deleted);
- a **scheduling cycle** that is serial: one Pod at a time, ``Framework.schedule`` over
  the cache (``percentage_of_nodes_to_score``: Kubernetes' setting, adaptive by default,
  see ``framework.py``), then ``assume`` (the Pod is counted on its node at once, so the
  next Pod of a burst sees the node fuller without waiting for the watch);
- a **binding cycle** that is concurrent: up to ``bind_concurrency`` ``pods/{name}/binding``
  calls in flight, so throughput is not one round trip per Pod. The API server binds with
  compare-and-swap and refuses to re-bind a bound Pod (409), so two schedulers can never
  place one Pod twice. A failed bind forgets the assumption and re-queues the Pod with
  back-off; a success records a ``Scheduled`` Event;
- a Pod that fits nowhere gets the condition ``PodScheduled=False`` with reason
  ``Unschedulable`` and the framework's message ("0/3 nodes are available: 2 Insufficient
  memory, 1 node(s) were not ready.") plus a ``FailedScheduling`` Warning Event. It then
  waits in an *unschedulable* set and is tried again only when the cluster changes in a
  way that could help (a node added, or its readiness, labels, taints or allocatable
  changed; a Pod deleted), or every ``unschedulable_flush`` seconds as a safety net.

Neighbours: ``framework.py`` (one decision), ``cache.py`` (accounting), ``plugins.py``;
the Events go through :mod:`control.controllers.events`; ``control.controllers.manager``
runs this under leader election.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

from control.client import errors
from control.client.cache import object_key, split_key
from control.client.clock import Clock, LoopClock, sleep
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.client.workqueue import QueueShutDown, WorkQueue
from control.controllers.events import EventRecorder
from control.scheduler.cache import SchedulerCache
from control.scheduler.framework import Framework, Unschedulable
from control.scheduler.podinfo import pod_info

Obj = dict[str, Any]
log = logging.getLogger(__name__)

SCHEDULER_NAME = "default-scheduler"


@dataclass(slots=True)
class SchedulerStats:
    attempts: int = 0
    bound: int = 0
    unschedulable: int = 0
    bind_errors: int = 0


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _node_signature(node: Obj) -> tuple:
    """What about a node can make an unschedulable Pod fit (heartbeats are not)."""
    md, spec, status = node.get("metadata") or {}, node.get("spec") or {}, \
        node.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    return (repr(sorted((md.get("labels") or {}).items())), repr(spec.get("taints")),
            bool(spec.get("unschedulable")), ready,
            repr(sorted((status.get("allocatable") or status.get("capacity") or {}).items())))


class Scheduler:
    """Binds pending Pods to Nodes; see the module docstring."""

    name = "scheduler"

    def __init__(self, api: ApiClient, factory: InformerFactory, recorder: EventRecorder, *,
                 scheduler_name: str = SCHEDULER_NAME, bind_concurrency: int = 32,
                 unschedulable_flush: float = 60.0,
                 percentage_of_nodes_to_score: int | None = None,
                 clock: Clock | None = None) -> None:
        if bind_concurrency < 1:
            raise ValueError(f"bind_concurrency must be >= 1, got {bind_concurrency}")
        self.api = api
        self.recorder = recorder
        self.scheduler_name = scheduler_name
        self.cache = SchedulerCache()
        self.framework = Framework(self.cache,
                                   percentage_of_nodes_to_score=percentage_of_nodes_to_score)
        self.stats = SchedulerStats()
        self._clock = clock or LoopClock()
        self.queue: WorkQueue[str] = WorkQueue(name="scheduler", clock=self._clock)
        self._flush_period = unschedulable_flush
        self._bind_slots = asyncio.Semaphore(bind_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unschedulable: dict[str, str] = {}   # pod key -> last failure message
        self._node_sigs: dict[str, tuple] = {}
        self.pods = factory.informer("pods")
        self.nodes = factory.informer("nodes")
        self.pods.add_handler(on_add=self._pod_added, on_update=self._pod_updated,
                              on_delete=self._pod_deleted)
        self.nodes.add_handler(on_add=self._node_changed,
                               on_update=lambda _o, n: self._node_changed(n),
                               on_delete=self._node_deleted)

    # -- event handlers: keep the cache, enqueue keys ------------------------------------

    def _responsible_for(self, pod: Obj) -> bool:
        spec = pod.get("spec") or {}
        return (not spec.get("nodeName")
                and spec.get("schedulerName", SCHEDULER_NAME) == self.scheduler_name
                and not (pod.get("metadata") or {}).get("deletionTimestamp"))

    def _pod_added(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName"):
            try:
                self.cache.set_pod(pod)
            except ValueError as e:  # a bad quantity: count nothing rather than crash
                log.warning("pod %s: cannot account its requests: %s", object_key(pod), e)
            self._unschedulable.pop(object_key(pod), None)
        elif self._responsible_for(pod):
            key = object_key(pod)
            if key not in self._unschedulable:
                self.queue.add(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        if old.get("spec") != new.get("spec"):
            # The user changed the Pod (tolerations, say): worth a new attempt at once.
            self._unschedulable.pop(object_key(new), None)
        self._pod_added(new)

    def _pod_deleted(self, pod: Obj) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        key = object_key(pod)
        self._unschedulable.pop(key, None)
        counted = self.cache.node_of(uid) is not None
        # Also when it is not counted on a node: it may be remembered as bound to a
        # deleted Node, and must not be charged to a new Node of that name.
        self.cache.remove_pod(uid)
        if counted:
            self._retry_unschedulable("a pod was deleted")

    def _node_changed(self, node: Obj) -> None:
        try:
            self.cache.set_node(node)
        except ValueError as e:
            log.warning("node %s: cannot read its allocatable: %s", object_key(node), e)
            return
        name = object_key(node)
        sig = _node_signature(node)
        if self._node_sigs.get(name) != sig:
            self._node_sigs[name] = sig
            self._retry_unschedulable(f"node {name} changed")

    def _node_deleted(self, node: Obj) -> None:
        name = object_key(node)
        self._node_sigs.pop(name, None)
        self.cache.remove_node(name)

    def _retry_unschedulable(self, why: str) -> None:
        if not self._unschedulable:
            return
        log.debug("retrying %d unschedulable pods: %s", len(self._unschedulable), why)
        keys = list(self._unschedulable)
        self._unschedulable.clear()
        for key in keys:
            self.queue.add(key)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Schedule until :meth:`shutdown` (or cancellation). Waits for the informers'
        first lists, so the cache is complete before the first decision."""
        await self.pods.wait_synced()
        await self.nodes.wait_synced()
        flusher = asyncio.create_task(self._flush_loop(), name="scheduler-flush")
        try:
            while True:
                try:
                    key = await self.queue.get()
                except QueueShutDown:
                    return
                self._schedule_one(key)
        finally:
            flusher.cancel()
            tasks = [flusher, *self._tasks]
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def shutdown(self) -> None:
        self.queue.shut_down()

    async def _flush_loop(self) -> None:
        while True:
            await sleep(self._clock, self._flush_period)
            self._retry_unschedulable("periodic flush")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def schedule_one(self, key: str) -> None:
        """One scheduling cycle for ``key`` and its binding (or failure record), awaited:
        what the loop does per Pod, for tests and tools."""
        task = self._schedule_one(key)
        if task is not None:
            await task

    def _schedule_one(self, key: str) -> asyncio.Task[None] | None:
        """One scheduling cycle (synchronous: nothing else touches the cache meanwhile);
        returns the binding or failure-recording task it started, if any."""
        ns, name = split_key(key)
        pod = self.pods.get(ns, name)
        if pod is None or not self._responsible_for(pod):
            self.queue.forget(key)
            self.queue.done(key)
            return None
        try:
            info = pod_info(pod)
        except ValueError as e:
            message = f"invalid resources: {e}"
            self._unschedulable[key] = message
            return self._spawn(self._record_unschedulable(key, pod, message),
                               f"unschedulable-{key}")
        if self.cache.node_of(info.uid) is not None:
            # Assumed already: its bind is in flight or done and the watch lags behind.
            self.queue.done(key)
            return None
        self.stats.attempts += 1
        result = self.framework.schedule(info)
        if isinstance(result, Unschedulable):
            self.stats.unschedulable += 1
            self._unschedulable[key] = result.message
            return self._spawn(self._record_unschedulable(key, pod, result.message),
                               f"unschedulable-{key}")
        self.cache.assume(info, result.node)
        return self._spawn(self._bind(key, pod, info.uid, result.node), f"bind-{key}")

    async def _bind(self, key: str, pod: Obj, uid: str, node: str) -> None:
        ns, name = split_key(key)
        try:
            async with self._bind_slots:
                await self.api.bind(name, node, namespace=ns)
        except errors.NotFound:
            self.cache.forget(uid)
            self.queue.forget(key)
        except (errors.ClientError, OSError) as e:
            # 409: bound by someone else meanwhile, being deleted, or a racing write;
            # the cache forgets the guess and the retry reads the Pod afresh.
            self.stats.bind_errors += 1
            log.info("binding %s to %s failed: %s; retrying", key, node, e)
            self.cache.forget(uid)
            self.queue.add_rate_limited(key)
        else:
            self.stats.bound += 1
            self.queue.forget(key)
            self.recorder.record(pod, "Normal", "Scheduled",
                                 f"Successfully assigned {key} to {node}")
            if _pod_scheduled_status(pod) == "False":
                await self._set_condition(pod, "True", None, None)
        finally:
            self.queue.done(key)

    async def _record_unschedulable(self, key: str, pod: Obj, message: str) -> None:
        try:
            self.queue.forget(key)
            self.recorder.record(pod, "Warning", "FailedScheduling", message)
            cond = _pod_scheduled(pod)
            if cond is None or cond.get("status") != "False" or cond.get("message") != message:
                await self._set_condition(pod, "False", "Unschedulable", message)
        finally:
            self.queue.done(key)

    async def _set_condition(self, pod: Obj, status: str, reason: str | None,
                             message: str | None) -> None:
        conds = [c for c in copy.deepcopy((pod.get("status") or {}).get("conditions") or [])
                 if c.get("type") != "PodScheduled"]
        cond: Obj = {"type": "PodScheduled", "status": status, "lastProbeTime": None,
                     "lastTransitionTime": _stamp()}
        if reason:
            cond["reason"] = reason
        if message:
            cond["message"] = message
        conds.append(cond)
        md = pod["metadata"]
        with contextlib.suppress(errors.NotFound):
            try:
                await self.api.patch("pods", md["name"], {"status": {"conditions": conds}},
                                     namespace=md.get("namespace"), subresource="status")
            except errors.ClientError as e:
                log.warning("pod %s: could not set PodScheduled=%s: %s", md["name"], status, e)


def _pod_scheduled(pod: Obj) -> Obj | None:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "PodScheduled":
            return c
    return None


def _pod_scheduled_status(pod: Obj) -> str | None:
    c = _pod_scheduled(pod)
    return c.get("status") if c else None
