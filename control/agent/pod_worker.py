"""One Pod on this node: converge its containers to the spec and render its status.

The kubelet's ``syncPod`` for one Pod, level-triggered: :meth:`PodWorker.sync` looks at
what the runtime has, never at which event happened, and does the next step for each
container: adopt what already runs (first sync after an agent restart), create and
start a missing container, probe a running one, restart an exited one under the
restart policy and crash-loop back-off, and remember why something could not be done
(a waiting reason such as ``ErrImagePull`` / ``ImagePullBackOff``,
``CreateContainerError``, ``RunContainerError``, ``CrashLoopBackOff``). Failures are
status, never exceptions out of ``sync``: one broken Pod cannot stop the agent.

:meth:`PodWorker.status` renders Kubernetes' PodStatus (phase, conditions,
containerStatuses with state/lastState/restartCount/ready, hostIP, podIP, startTime)
plus ``portMappings``, the host ports this node published for the Pod (the endpoints
controller needs them: pods here are reached at ``hostIP:hostPort``).
:meth:`PodWorker.terminate` is the graceful delete: preStop hooks, SIGTERM to the app
containers, the mesh sidecar last, SIGKILL after the grace period (``lifecycle.py``);
then the containers are removed and the Pod's ports are released.

Container hooks as the kubelet runs them: a ``postStart`` hook runs right after its
container started, before its probes are armed (the container is not ready until it
succeeded); a failing one is a ``FailedPostStartHook`` Warning and the container is
killed, then restarted under the restart policy. Killing one container (a failed
postStart, a failed liveness or startup probe) runs its ``preStop`` hook first, inside
the Pod's grace period, as a Pod deletion does.

Time comes from a :class:`~control.agent.clock.Clock`: probe periods and back-off
run on a :class:`~control.agent.clock.ManualClock` in tests. The agent loop
(``agent.py``) calls ``sync`` periodically and whenever the Pod changes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from control.agent import sidecar
from control.agent.clock import Clock
from control.agent.lifecycle import (
    POST_START_TIMEOUT,
    Grace,
    StopTarget,
    run_hook,
    stop_in_order,
)
from control.agent.ports import HostPorts, PortError
from control.agent.probes import ProbeTracker, run_action
from control.agent.restart import BackOff, should_restart
from control.agent.runtime.base import (
    ContainerConfig,
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntimeError,
    CreateContainerError,
    ImagePullError,
    PortBinding,
    RunContainerError,
    Runtime,
)
from control.agent.spec import Container, Pod, ProbeKind

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
EventSink = Callable[[EventType, str, str], None]
"""``(type, reason, message)``: the agent turns these into Event objects."""


@dataclass
class _Slot:
    """What the worker knows about one container of the Pod."""

    spec: Container
    current: ContainerInfo | None = None
    next_attempt: int = 0
    exited_at: float | None = None  # clock time the current container's exit was seen
    last_terminated: dict[str, Any] | None = None
    waiting: tuple[str, str] | None = None  # (reason, message)
    failed_at: float | None = None  # clock time of the last failure to start
    trackers: dict[ProbeKind, ProbeTracker] = field(default_factory=dict)
    started: bool = False
    ready: bool = False


class PodWorker:
    """Runs one Pod's containers on a runtime; ``sync`` converges, ``status`` reports."""

    def __init__(self, pod: Pod, *, runtime: Runtime, ports: HostPorts, node: str,
                 node_ip: str, clock: Clock, backoff: BackOff, state_dir: Path,
                 events: EventSink | None = None) -> None:
        self.pod = pod
        self.runtime = runtime
        self.ports = ports
        self.node = node
        self.node_ip = node_ip
        self.clock = clock
        self.backoff = backoff
        self.volume_root = Path(state_dir) / "pods" / pod.uid / "volumes"
        self._events = events or (lambda *_: None)
        self._slots = {c.name: _Slot(c) for c in pod.containers}
        self._bindings: dict[str, tuple[PortBinding, ...]] = {}
        self._port_error = ""
        self._adopted = False
        self._start_time: datetime | None = None
        self._conditions: dict[str, tuple[bool, datetime]] = {}
        self.terminated = False
        # A meshed Pod (already injected, see sidecar.py): which app port the sidecar fronts.
        self._fronted = (sidecar.target_port(pod)
                         if any(c.name == sidecar.NAME for c in pod.containers)
                         and sidecar.wanted(pod) else None)

    # -- converge ----------------------------------------------------------------

    async def sync(self) -> dict[str, Any]:
        """One pass toward the spec; returns the status after it."""
        if self.terminated:
            return self.status()
        if self._start_time is None:
            self._start_time = self.clock.wall()
        if not self._adopted:
            try:
                await self._adopt()
            except ContainerRuntimeError as e:
                # Cannot even list what runs: report it on every container, retry later.
                for slot in self._slots.values():
                    slot.waiting = (e.reason, str(e))
                log.warning("pod %s: %s", self.pod.key, e)
                return self.status()
        for slot in self._slots.values():
            try:
                await self._sync_container(slot)
            except ContainerRuntimeError as e:
                # The runtime itself failed (engine down, inspect refused): report, retry.
                slot.waiting = (e.reason, str(e))
                log.warning("pod %s container %s: %s", self.pod.key, slot.spec.name, e)
        return self.status()

    async def _adopt(self) -> None:
        """Take over what this Pod already has in the runtime (after an agent restart)."""
        found = await self.runtime.list(pod_uid=self.pod.uid)
        for name, group in _by_name(found).items():
            slot = self._slots.get(name)
            if slot is None:  # a container the spec no longer has: an orphan
                for info in group:
                    await self._stop_and_remove(info, grace=self.pod.termination_grace_period)
                continue
            group.sort(key=lambda i: i.attempt)
            *older, newest = group
            for info in older:  # keep only the newest run; the one before gives lastState
                if info.state == "exited":
                    slot.last_terminated = _terminated(info)
                await self._stop_and_remove(info, grace=0)
            slot.current = newest
            slot.next_attempt = newest.attempt + 1
            if newest.ports:
                self._bindings[name] = newest.ports
                self.ports.adopt(self.pod.uid, [b.host_port for b in newest.ports])
            if newest.state == "running":
                self._arm_probes(slot)
        self._adopted = True

    async def _sync_container(self, slot: _Slot) -> None:
        key = self._key(slot)
        if slot.current is not None:
            try:
                slot.current = await self.runtime.inspect(slot.current.id)
            except ContainerNotFound:
                slot.current = None  # removed behind our back: start a new one
        info = slot.current
        if info is not None and info.state == "running":
            slot.waiting = None
            await self._probe(slot)
            info = slot.current
            if info is None or info.state == "running":
                return
        if info is not None and info.state == "created":
            # Created but never running: a start that failed, or an agent that died
            # between create and start. Discard it and go through a fresh start.
            await self.runtime.remove(info.id)
            slot.current = info = None
        if info is not None and info.state == "exited":
            now = self.clock.now()
            if slot.exited_at is None:
                slot.exited_at = now
                slot.ready = slot.started = False
                slot.trackers.clear()
            if not should_restart(self.pod.restart_policy, info.exit_code or 0):
                slot.waiting = None
                return
            remaining = self.backoff.remaining(key, finished_at=slot.exited_at)
            if remaining > 0:
                delay = self.backoff.delay(key)
                slot.waiting = ("CrashLoopBackOff",
                                f"back-off {delay:g}s restarting failed container="
                                f"{slot.spec.name} pod={self.pod.name}")
                return
            self.backoff.next(key)
            slot.last_terminated = _terminated(info)
            await self.runtime.remove(info.id)
            slot.current = None
        if slot.current is None:
            await self._start(slot)

    async def _start(self, slot: _Slot) -> None:
        fail_key = self._key(slot) + "#start"
        if (slot.failed_at is not None
                and self.backoff.remaining(fail_key, finished_at=slot.failed_at) > 0):
            if slot.waiting and slot.waiting[0] == "ErrImagePull":
                slot.waiting = ("ImagePullBackOff",
                                f'Back-off pulling image "{slot.spec.image}"')
            return
        c = slot.spec
        try:
            extra_env = self._sidecar_env() if self._is_sidecar(slot) else {}
            bindings = self._ports_for(slot)
            if not self._is_sidecar(slot):
                await self.runtime.ensure_image(c.image, policy=c.pull_policy)
            cid = await self.runtime.create(ContainerConfig(
                node=self.node, pod=self.pod, container=c, attempt=slot.next_attempt,
                ports=bindings, volume_dirs=self._volume_dirs(), extra_env=extra_env))
            try:
                await self.runtime.start(cid)
            except ContainerRuntimeError:
                await self.runtime.remove(cid)
                raise
        except ContainerRuntimeError as e:
            slot.failed_at = self.clock.now()
            self.backoff.next(fail_key)
            slot.waiting = (e.reason, str(e))
            self._event("Warning", "Failed", f"Error: {e.reason}: {e}")
            if isinstance(e, ImagePullError):
                self._event("Warning", "Failed", f'Failed to pull image "{c.image}": {e}')
            return
        slot.failed_at = None
        self.backoff.forget(fail_key)
        slot.waiting = None
        slot.exited_at = None
        slot.current = await self.runtime.inspect(cid)
        slot.next_attempt += 1
        self._event("Normal", "Started", f"Started container {c.name}")
        if c.post_start is not None:
            try:
                failure = await run_hook(c.post_start, c, runtime=self.runtime,
                                         container_id=cid, host=self.ports.host,
                                         ports=self._bindings.get(c.name, ()),
                                         clock=self.clock, budget=POST_START_TIMEOUT)
            except Exception as e:  # the hook's own failure, reported like any other
                failure = f"{type(e).__name__}: {e}"
            if failure is not None:
                self._event("Warning", "FailedPostStartHook",
                            f"PostStartHook failed for container {c.name}: {failure}")
                await self._kill(slot)
                return
        self._arm_probes(slot)

    def _spec_of(self, name: str) -> Container | None:
        slot = self._slots.get(name)
        return slot.spec if slot is not None else None

    def _is_sidecar(self, slot: _Slot) -> bool:
        return self._fronted is not None and slot.spec.name == sidecar.NAME

    def _sidecar_env(self) -> dict[str, str]:
        """The sidecar's view of the app: the host port of the port it fronts."""
        assert self._fronted is not None
        if self.runtime.name != "process":
            raise CreateContainerError(
                "the mesh sidecar runs meshproxy as a local process and needs the process "
                f"runtime; this node runs Pods on {self.runtime.name!r}")
        app, port = self._fronted
        host = next((b.host_port for b in self._bindings.get(app, ())
                     if b.container_port == port), None)
        if host is None:
            raise CreateContainerError(f"container {app!r} has no host port for {port} yet")
        return {sidecar.APP_PORT_ENV: str(host)}

    def _ports_for(self, slot: _Slot) -> tuple[PortBinding, ...]:
        """The Pod's host ports for this container, allocated once and kept across restarts."""
        if slot.spec.name in self._bindings:
            return self._bindings[slot.spec.name]
        out = []
        try:
            for p in slot.spec.ports:
                hp = self.ports.allocate(self.pod.uid, p.host_port)
                out.append(PortBinding(container_port=p.container_port, host_port=hp,
                                       host_ip=self.ports.host, protocol=p.protocol,
                                       name=p.name))
        except PortError as e:
            for b in out:  # give back what this attempt took
                self.ports.release_port(self.pod.uid, b.host_port)
            raise RunContainerError(str(e)) from e
        self._bindings[slot.spec.name] = tuple(out)
        return self._bindings[slot.spec.name]

    def _volume_dirs(self) -> dict[str, str]:
        dirs = {}
        for v in self.pod.volumes:
            if v.kind == "hostPath":
                dirs[v.name] = v.host_path
            else:
                d = self.volume_root / v.name
                d.mkdir(parents=True, exist_ok=True)
                dirs[v.name] = str(d)
        return dirs

    # -- probes ------------------------------------------------------------------

    def _arm_probes(self, slot: _Slot) -> None:
        now = self.clock.now()
        slot.trackers = {kind: ProbeTracker(p, kind, started_at=now)
                         for kind in ("startup", "liveness", "readiness")
                         if (p := slot.spec.probe(kind)) is not None}
        slot.started = "startup" not in slot.trackers
        slot.ready = slot.started and "readiness" not in slot.trackers

    async def _probe(self, slot: _Slot) -> None:
        """Run the probes that are due; act on liveness/startup failure and readiness."""
        assert slot.current is not None
        order: tuple[ProbeKind, ...] = ("liveness", "readiness")
        if not slot.started:
            order = ("startup",)
        for kind in order:
            tracker = slot.trackers.get(kind)
            if tracker is None or not tracker.due(self.clock.now()):
                continue
            outcome = await run_action(
                tracker.probe, slot.spec, runtime=self.runtime, container_id=slot.current.id,
                host=self.ports.host, ports=self._bindings.get(slot.spec.name, ()))
            tracker.record(outcome, self.clock.now())
            if not outcome.ok:
                self._event("Warning", "Unhealthy",
                            f"{kind.capitalize()} probe failed: {outcome.message}")
            if kind == "startup" and tracker.success:
                slot.started = True
                slot.ready = "readiness" not in slot.trackers
            if kind in ("liveness", "startup") and tracker.failed:
                self._event("Normal", "Killing", f"Container {slot.spec.name} failed {kind} "
                                                 "probe, will be restarted")
                await self._kill(slot)
                return
            if kind == "readiness":
                slot.ready = tracker.success

    async def _kill(self, slot: _Slot) -> None:
        """Stop one running container as the kubelet kills it (a failed liveness or
        startup probe, a failed postStart hook): its preStop hook, then SIGTERM and
        SIGKILL within the Pod's grace period. The next sync restarts it (or not)
        under the restart policy."""
        assert slot.current is not None
        target = StopTarget(slot.current, slot.spec, self._bindings.get(slot.spec.name, ()),
                            sidecar=False)
        await stop_in_order([target], grace=self.pod.termination_grace_period,
                            runtime=self.runtime, clock=self.clock, host=self.ports.host,
                            on_hook_failure=self._pre_stop_failed)
        slot.current = await self.runtime.inspect(slot.current.id)

    def _pre_stop_failed(self, name: str, why: str) -> None:
        self._event("Warning", "FailedPreStopHook",
                    f"PreStopHook failed for container {name}: {why}")

    def next_wake(self) -> float:
        """Seconds until something is due (a probe or the end of a back-off), at most 1."""
        now = self.clock.now()
        due = [1.0]
        for slot in self._slots.values():
            due += [t.next_at - now for t in slot.trackers.values()]
            if slot.exited_at is not None:
                due.append(self.backoff.remaining(self._key(slot), finished_at=slot.exited_at))
        return max(0.0, min(due))

    # -- terminate ---------------------------------------------------------------

    async def terminate(self, grace: float | Grace | None = None) -> None:
        """Stop every container of the Pod in Kubernetes' order (``lifecycle.py``:
        preStop hooks, SIGTERM to the app, the sidecar last, SIGKILL after ``grace``),
        remove them, release the Pod's ports and volumes. Idempotent. A :class:`Grace`
        may be shortened while this runs (a later delete asking for less)."""
        self.terminated = True
        g = self.pod.termination_grace_period if grace is None else grace
        infos = await self.runtime.list(pod_uid=self.pod.uid)
        if infos:
            seconds = g.seconds if isinstance(g, Grace) else g
            self._event("Normal", "Killing", f"Stopping {len(infos)} container(s) "
                                             f"(grace period {seconds:g}s)")
        targets = [StopTarget(i, self._spec_of(i.container_name),
                              self._bindings.get(i.container_name, i.ports),
                              sidecar=self._fronted is not None
                              and i.container_name == sidecar.NAME)
                   for i in infos if i.state == "running"]
        await stop_in_order(targets, grace=g, runtime=self.runtime, clock=self.clock,
                            host=self.ports.host, on_hook_failure=self._pre_stop_failed)
        for slot in self._slots.values():
            if slot.current is not None:  # keep how it ended for the final status
                try:
                    slot.current = await self.runtime.inspect(slot.current.id)
                except ContainerNotFound:
                    pass
            slot.ready = False
            slot.waiting = None
            self.backoff.forget(self._key(slot))
            self.backoff.forget(self._key(slot) + "#start")
        await asyncio.gather(*(self.runtime.remove(i.id) for i in infos))
        self.ports.release(self.pod.uid)
        shutil.rmtree(self.volume_root.parent, ignore_errors=True)

    async def _stop_and_remove(self, info: ContainerInfo, *, grace: float) -> None:
        if info.state == "running":
            await self.runtime.stop(info.id, grace=grace)
        await self.runtime.remove(info.id)

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        statuses = [self._container_status(s) for s in self._slots.values()]
        all_ready = all(s.ready for s in self._slots.values()) and not self.terminated
        conditions = [
            self._condition("PodScheduled", True),
            self._condition("Initialized", True),
            self._condition("ContainersReady", all_ready),
            self._condition("Ready", all_ready),
        ]
        return {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": self.node_ip,
            "podIP": self.node_ip,
            "startTime": _rfc3339(self._start_time),
            "containerStatuses": statuses,
            "portMappings": self._port_mappings(),
        }

    def _port_mappings(self) -> list[dict[str, Any]]:
        """Container port → host port. In a meshed Pod the fronted app port maps to the
        sidecar's inbound port (so endpoints send traffic through the proxy); the
        app's own host port stays visible as ``appHostPort``."""
        out = []
        inbound = next((b.host_port for b in self._bindings.get(sidecar.NAME, ())
                        if b.name == sidecar.INBOUND), None) if self._fronted else None
        for name, bs in self._bindings.items():
            for b in bs:
                m = dict(b.to_json(), container=name)
                if self._fronted is not None and name == sidecar.NAME:
                    if b.name == sidecar.INBOUND:
                        continue  # represented by the fronted app port below
                elif inbound is not None and (name, b.container_port) == self._fronted:
                    m.update(hostPort=inbound, appHostPort=b.host_port, sidecar=True)
                out.append(m)
        return out

    def _phase(self) -> str:
        slots = list(self._slots.values())
        if any(s.current is not None and s.current.state == "running" for s in slots):
            return "Running"
        exited = [s.current for s in slots if s.current is not None
                  and s.current.state == "exited"]
        if exited and len(exited) == len(slots):
            restarting = not self.terminated and any(
                should_restart(self.pod.restart_policy, i.exit_code or 0) for i in exited)
            if not restarting:
                ok = all((i.exit_code or 0) == 0 for i in exited)
                return "Succeeded" if ok else "Failed"
        if any(s.last_terminated is not None or s.current is not None for s in slots):
            return "Running"  # restarting (e.g. CrashLoopBackOff) counts as Running
        return "Pending"

    def _container_status(self, slot: _Slot) -> dict[str, Any]:
        info = slot.current
        state: dict[str, Any]
        last = slot.last_terminated
        if slot.waiting is not None:
            state = {"waiting": {"reason": slot.waiting[0], "message": slot.waiting[1]}}
            if info is not None and info.state == "exited":
                last = _terminated(info)
        elif info is not None and info.state == "running":
            state = {"running": {"startedAt": _rfc3339(info.started_at)}}
        elif info is not None and info.state == "exited":
            state = {"terminated": _terminated(info)}
        else:
            state = {"waiting": {"reason": "ContainerCreating", "message": ""}}
        out: dict[str, Any] = {
            "name": slot.spec.name, "image": slot.spec.image, "imageID": "",
            "containerID": f"{self.runtime.name}://{info.id}" if info else "",
            "ready": slot.ready and not self.terminated, "started": slot.started,
            "restartCount": info.attempt if info else max(0, slot.next_attempt - 1),
            "state": state, "lastState": {"terminated": last} if last else {},
        }
        return out

    def _condition(self, kind: str, value: bool) -> dict[str, Any]:
        prev = self._conditions.get(kind)
        if prev is None or prev[0] != value:
            self._conditions[kind] = (value, self.clock.wall())
        return {"type": kind, "status": "True" if value else "False",
                "lastTransitionTime": _rfc3339(self._conditions[kind][1])}

    # -- helpers -----------------------------------------------------------------

    def _key(self, slot: _Slot) -> str:
        return f"{self.pod.uid}/{slot.spec.name}"

    def _event(self, kind: EventType, reason: str, message: str) -> None:
        self._events(kind, reason, message)

    def container_id(self, name: str) -> str | None:
        """The id of the container currently running (or last run) for ``name``."""
        info = self._slots[name].current
        return info.id if info else None


def _by_name(infos: list[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
    out: dict[str, list[ContainerInfo]] = {}
    for i in infos:
        out.setdefault(i.container_name, []).append(i)
    return out


def _terminated(info: ContainerInfo) -> dict[str, Any]:
    code = info.exit_code or 0
    reason = "OOMKilled" if info.oom_killed else ("Completed" if code == 0 else "Error")
    return {"exitCode": code, "reason": reason, "message": info.error,
            "startedAt": _rfc3339(info.started_at), "finishedAt": _rfc3339(info.finished_at),
            "containerID": info.id}


def _rfc3339(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None
