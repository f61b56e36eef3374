"""The agent's pod manager: one task per Pod, fed with the desired set of Pods.

Wherever the Pods come from (the API server's watch of Pods bound to this node, or a
directory of static manifests, see ``static.py``), the agent is told the *whole
desired set* (:meth:`Agent.set_pods`), level-triggered like the kubelet's pod config:

- a Pod not yet known gets a :class:`~control.agent.pod_worker.PodWorker` and a task
  that syncs it whenever something is due (probe, back-off, a 1 s resync to notice
  exits) and reports its status when it changed;
- a Pod marked for deletion (``deletionTimestamp``, Kubernetes' graceful delete) is
  terminated gracefully (its ``deletionGracePeriodSeconds``: SIGTERM, SIGKILL after the
  grace) and then *finalized*: the finalize sink deletes it from the API server with
  ``gracePeriodSeconds=0``, which is what makes it disappear. A marked Pod this agent
  does not run (it restarted mid-termination) has whatever containers are left stopped
  and is finalized the same way; a failed finalization is retried with the next set;
  deleted again with a shorter grace while it terminates (``--now``), it gets the
  shorter one: hooks still running are cut off and the containers stopped again
  within what is left (:class:`~control.agent.lifecycle.Grace`);
- a Pod that disappears from the set (force-deleted) is terminated gracefully (its
  ``terminationGracePeriodSeconds``) and forgotten;
- a Pod whose spec changed (same uid, different spec) is terminated and started again
  from the new spec once its old containers are gone (containers cannot be changed in
  place, and the two incarnations must not share containers or host ports);
- a Pod dict the agent cannot run is reported once with its PodSpecError (a Failed
  status and a Warning event) and not retried until it changes.

Housekeeping after the first desired set: containers in the runtime that belong to
this node but to no desired Pod (left by a crash, or Pods deleted while the agent was
down) are stopped and removed, so an agent restart leaves no orphans.

Status and events leave through two callbacks, so the API server writer and the static
mode's status files are interchangeable. Stopping the agent (:meth:`Agent.close`)
leaves containers running, as a kubelet restart does; they are adopted on the next
start. ``stop_pods=True`` stops them too (the all-in-one's Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from control.agent import sidecar
from control.agent.clock import Clock
from control.agent.lifecycle import Grace
from control.agent.pod_worker import EventType, PodWorker
from control.agent.ports import HostPorts
from control.agent.restart import BackOff
from control.agent.runtime.base import ContainerRuntimeError, Runtime
from control.agent.spec import Pod, PodSpecError, parse_pod

log = logging.getLogger(__name__)

Obj = dict[str, Any]
StatusSink = Callable[[Obj, Obj], Awaitable[None]]
"""``(pod dict, status)``: publish a Pod's new status (API server or file)."""
EventSink = Callable[[Obj, EventType, str, str], Awaitable[None]]
"""``(pod dict, type, reason, message)``: record an Event about a Pod."""
FinalizeSink = Callable[[Obj], Awaitable[bool]]
"""``(pod dict)``: a Pod being deleted has no container left: delete it for good (the
API server's ``gracePeriodSeconds=0``); False when that failed and must be retried."""


class _Entry:
    def __init__(self, obj: Obj, pod: Pod, worker: PodWorker) -> None:
        self.obj = obj
        self.pod = pod
        self.worker = worker
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_status: Obj | None = None
        self.stopping = False


class Agent:
    """Runs the desired Pods of one node on one runtime."""

    def __init__(self, *, node: str, node_ip: str, runtime: Runtime, ports: HostPorts,
                 clock: Clock, state_dir: Path, status_sink: StatusSink,
                 event_sink: EventSink | None = None,
                 finalize_sink: FinalizeSink | None = None,
                 mesh: sidecar.MeshSettings | None = None) -> None:
        self.node = node
        #: How sidecars reach the control plane (outbound discovery); None: inbound only.
        self.mesh = mesh
        self.node_ip = node_ip
        self.runtime = runtime
        self.ports = ports
        self.clock = clock
        self.state_dir = Path(state_dir)
        self.backoff = BackOff(clock)
        self._status_sink = status_sink
        self._event_sink = event_sink
        self._finalize_sink = finalize_sink
        self._pods: dict[str, _Entry] = {}  # uid -> entry
        # uids of deleted Pods already stopped and finalized (or being finalized): the
        # watch may still list them until the final delete comes back as an event
        self._finalized: set[str] = set()
        self._rejected: dict[str, str] = {}  # uid -> repr of the refused spec
        self._background: set[asyncio.Task[None]] = set()  # terminations, event writes
        # A Pod whose old incarnation (same uid) is still being terminated starts only
        # once that is done: both would otherwise share its containers and host ports.
        self._terminating: dict[str, asyncio.Task[None]] = {}
        self._graces: dict[str, Grace] = {}  # uid -> the grace of its termination
        self._pending: dict[str, tuple[Obj, Pod]] = {}
        self._closing = False
        self._housekept = False

    # -- desired state -----------------------------------------------------------

    async def set_pods(self, objs: list[Obj]) -> None:
        """Make the running set match ``objs`` (every Pod bound to this node)."""
        desired: dict[str, tuple[Obj, Pod]] = {}
        deleting: dict[str, Obj] = {}  # uid -> Pod marked with a deletionTimestamp
        for obj in objs:
            uid = str((obj.get("metadata") or {}).get("uid", ""))
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                deleting[uid] = obj  # being deleted: stopped gracefully, then finalized
                continue
            try:
                pod = sidecar.inject(parse_pod(obj), mesh=self.mesh)
            except PodSpecError as e:
                await self._reject(obj, uid, e)
                continue
            self._rejected.pop(uid, None)
            desired[pod.uid] = (obj, pod)
        self._finalized &= set(deleting)
        self._shorten_graces(deleting)
        for uid in list(self._pods):
            entry = self._pods[uid]
            if uid not in desired:
                gone = deleting.get(uid)
                if gone is not None:
                    entry.obj = gone
                    self._finalized.add(uid)
                self._retire(uid, grace=_deletion_grace(entry.obj, objs),
                             finalize=gone is not None)
            elif desired[uid][1] != entry.pod:
                log.info("pod %s: spec changed, recreating its containers", entry.pod.key)
                self._retire(uid, grace=entry.pod.termination_grace_period)
        for uid in set(self._pending) - set(desired):
            del self._pending[uid]
        for uid, obj in deleting.items():
            if uid not in self._finalized and uid not in self._terminating:
                # Deleted while this agent was not running it (a restart in the middle
                # of a termination): stop what the runtime still has, then finalize.
                self._finalized.add(uid)
                self._spawn(self._clean_up_deleted(obj), name=f"finalize {uid}")
        for uid, (obj, pod) in desired.items():
            if uid in self._pods:
                self._pods[uid].obj = obj
                continue
            if uid in self._terminating:
                self._pending[uid] = (obj, pod)
                continue
            self._start(obj, pod)
        if not self._housekept:
            self._housekept = True
            await self._housekeeping(set(desired) | set(deleting))

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(t)
        t.add_done_callback(self._background.discard)
        return t

    async def _finalize(self, obj: Obj) -> None:
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        if self._finalize_sink is None or self._closing:
            return  # nobody to tell (no API server), or this agent is stopping
        if not await self._finalize_sink(obj):
            self._finalized.discard(uid)  # the next desired set tries again

    async def _clean_up_deleted(self, obj: Obj) -> None:
        try:
            pod = sidecar.inject(parse_pod(obj), mesh=self.mesh)
        except PodSpecError:
            pod = None  # never ran here: nothing to stop
        if pod is not None:
            worker = PodWorker(pod, runtime=self.runtime, ports=self.ports, node=self.node,
                               node_ip=self.node_ip, clock=self.clock, backoff=self.backoff,
                               state_dir=self.state_dir)
            # registered like any other termination's, so a later delete asking for a
            # shorter grace (``--now``) shortens this one too (``_shorten_graces``)
            grace = self._graces[pod.uid] = Grace(_deletion_grace(obj, [obj]),
                                                  clock=self.clock)
            try:
                await worker.terminate(grace)
            except ContainerRuntimeError as e:
                log.error("pod %s: terminating failed: %s", pod.key, e)
                self._finalized.discard(pod.uid)  # containers may be left: retry later
                return
            finally:
                if self._graces.get(pod.uid) is grace:
                    del self._graces[pod.uid]
        await self._finalize(obj)

    def _start(self, obj: Obj, pod: Pod) -> None:
        def events(kind: EventType, reason: str, message: str) -> None:
            if self._event_sink is not None:
                self._spawn(self._event_sink(obj, kind, reason, message),
                            name=f"event {reason}")

        worker = PodWorker(pod, runtime=self.runtime, ports=self.ports, node=self.node,
                           node_ip=self.node_ip, clock=self.clock, backoff=self.backoff,
                           state_dir=self.state_dir, events=events)
        entry = _Entry(obj, pod, worker)
        entry.task = asyncio.get_running_loop().create_task(
            self._run_pod(entry), name=f"pod {pod.key}")
        self._pods[pod.uid] = entry

    def _retire(self, uid: str, *, grace: float, finalize: bool = False) -> None:
        entry = self._pods.pop(uid)
        g = self._graces[uid] = Grace(grace, clock=self.clock)
        t = self._spawn(self._terminate(entry, g, finalize=finalize),
                        name=f"terminate {entry.pod.key}")
        self._terminating[uid] = t
        t.add_done_callback(lambda _: self._terminated(uid))

    def _shorten_graces(self, deleting: dict[str, Obj]) -> None:
        """A Pod already terminating here, deleted again with a shorter grace period
        (``--grace-period=1``, ``--now``): its termination gets the shorter one."""
        for uid, obj in deleting.items():
            g = self._graces.get(uid)
            seconds = (obj.get("metadata") or {}).get("deletionGracePeriodSeconds")
            if g is not None and seconds is not None and g.shorten(float(seconds)):
                log.info("pod %s/%s: grace period shortened to %gs",
                         obj["metadata"].get("namespace"), obj["metadata"].get("name"),
                         float(seconds))

    def _terminated(self, uid: str) -> None:
        self._terminating.pop(uid, None)
        self._graces.pop(uid, None)
        pending = self._pending.pop(uid, None)
        if pending is not None and not self._closing:
            self._start(*pending)

    async def _terminate(self, entry: _Entry, grace: Grace, *, finalize: bool = False
                         ) -> None:
        await self._stop_task(entry)
        try:
            await entry.worker.terminate(grace)
        except ContainerRuntimeError as e:
            log.error("pod %s: terminating failed: %s", entry.pod.key, e)
            self._finalized.discard(entry.pod.uid)  # retried by the next desired set
            finalize = False
        await self._publish(entry, entry.worker.status())
        if finalize:
            await self._finalize(entry.obj)

    async def _reject(self, obj: Obj, uid: str, err: PodSpecError) -> None:
        if self._rejected.get(uid) == str(err):
            return
        self._rejected[uid] = str(err)
        log.warning("pod %s/%s refused: %s", (obj.get("metadata") or {}).get("namespace"),
                    (obj.get("metadata") or {}).get("name"), err)
        status = {"phase": "Failed", "reason": "InvalidPodSpec", "message": str(err),
                  "hostIP": self.node_ip}
        await self._status_sink(obj, status)
        if self._event_sink is not None:
            await self._event_sink(obj, "Warning", "FailedCreate", str(err))

    async def _housekeeping(self, desired: set[str]) -> None:
        """Remove this node's containers that belong to no desired Pod (orphans)."""
        try:
            infos = await self.runtime.list()
        except ContainerRuntimeError as e:
            log.warning("housekeeping skipped: %s", e)
            return
        for info in infos:
            if info.pod_uid in desired:
                continue
            log.info("removing orphaned container %s (pod uid %s)", info.id[:12], info.pod_uid)
            with contextlib.suppress(ContainerRuntimeError):
                if info.state == "running":
                    await self.runtime.stop(info.id, grace=0)
                await self.runtime.remove(info.id)

    # -- the per-Pod loop ----------------------------------------------------------

    async def _stop_task(self, entry: _Entry) -> None:
        """End a Pod's loop at a safe point: never in the middle of a sync (a start cut
        short could leave a container the worker does not know about)."""
        entry.stopping = True
        entry.wake.set()
        if entry.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await entry.task

    async def _run_pod(self, entry: _Entry) -> None:
        while not entry.stopping:
            entry.wake.clear()
            try:
                status = await entry.worker.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not kill the agent; the next pass retries
                log.exception("pod %s: sync failed", entry.pod.key)
                status = entry.worker.status()
            await self._publish(entry, status)
            if not entry.stopping:
                await self._sleep(entry)

    async def _sleep(self, entry: _Entry) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(entry.worker.next_wake()))
        waker = asyncio.ensure_future(entry.wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (sleeper, waker):
                f.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def _publish(self, entry: _Entry, status: Obj) -> None:
        # Timestamps aside, publish only real changes: a write per pod per second
        # would be a load on the API server for nothing.
        if _stable(status) == _stable(entry.last_status):
            return
        entry.last_status = status
        try:
            await self._status_sink(entry.obj, status)
        except Exception:
            entry.last_status = None  # try again next pass
            log.exception("pod %s: publishing status failed", entry.pod.key)

    def poke(self, uid: str) -> None:
        """Sync one Pod now (a watch event, an exec that changed it)."""
        entry = self._pods.get(uid)
        if entry is not None:
            entry.wake.set()

    def workers(self) -> list[PodWorker]:
        """The workers of the Pods currently desired."""
        return [e.worker for e in self._pods.values()]

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        for entry in self._pods.values():
            if entry.pod.namespace == namespace and entry.pod.name == name:
                return entry.worker
        return None

    # -- shutdown -------------------------------------------------------------------

    async def close(self, *, stop_pods: bool = False) -> None:
        """Stop the agent's tasks. Containers keep running unless ``stop_pods``."""
        self._closing = True
        self._pending.clear()
        entries = list(self._pods.values())
        if stop_pods:
            for entry in entries:
                self._retire(entry.pod.uid, grace=entry.pod.termination_grace_period)
        else:
            self._pods.clear()
            await asyncio.gather(*(self._stop_task(e) for e in entries))
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


def _deletion_grace(obj: Obj, objs: list[Obj]) -> float:
    """The grace period for a Pod leaving the set: the deleting object's
    ``deletionGracePeriodSeconds`` when it is still listed as terminating, else its spec."""
    uid = (obj.get("metadata") or {}).get("uid")
    for o in objs:
        meta = o.get("metadata") or {}
        if meta.get("uid") == uid and meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
    spec = obj.get("spec") or {}
    return float(spec.get("terminationGracePeriodSeconds", 30))


def _stable(status: Obj | None) -> str:
    if status is None:
        return ""
    return json.dumps(status, sort_keys=True, default=str)
