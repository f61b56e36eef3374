"""The controller manager: the scheduler and every controller in one process, leader-elected.

:class:`ControllerManager` is kube-controller-manager and kube-scheduler in one:

1. with ``leader_elect`` (the default) it waits until it is the leader
   (:class:`~control.controllers.leader.LeaderElector`); a standby does nothing else,
   so several managers can run against one API server and only one acts;
2. it then builds one :class:`~control.client.factory.InformerFactory` (one list+watch
   per kind for all controllers), one Event recorder per component, and the controllers
   named in ``controllers``, starts the informers and runs each controller's loop;
3. it keeps renewing the lease; when renewing fails for the renew deadline it stops
   every controller at once and :meth:`run` returns ``"lost-leadership"`` (Kubernetes
   exits the process then; ``main.py`` does too, so a supervisor restarts it as a fresh
   candidate). When ``stop`` is set it stops, releases the lease and returns
   ``"stopped"``. A controller that crashes (a bug: reconcile errors are retried, not
   raised) stops everything too, and :meth:`run` returns ``"failed"``.

A controller is anything with ``name``, ``async run()`` and ``shutdown()``
(:class:`Controller`). Garbage collection by owner references is not here: the API
server's collector (``control/api/gc.py``) already does it, with foreground, background
and orphan propagation, on every write.

Neighbours: ``main.py`` (``meshctl controller-manager``), ``leader.py``, the controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from control.autoscaler.controller import HPAController
from control.client.config import ClientConfig
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.controllers.deployment import DeploymentController
from control.controllers.endpoints_controller import EndpointsController
from control.controllers.events import EventRecorder
from control.controllers.leader import LeaderElectionConfig, LeaderElector
from control.controllers.nodehealth import NodeHealthConfig
from control.controllers.nodelifecycle import NodeLifecycleController
from control.controllers.replicaset import ReplicaSetController
from control.metrics.collector import MetricsCollector
from control.scheduler.scheduler import Scheduler

log = logging.getLogger(__name__)

ControllerName = Literal["scheduler", "replicaset", "deployment", "endpoints", "nodelifecycle",
                         "metrics", "horizontalpodautoscaler"]
ALL_CONTROLLERS: tuple[ControllerName, ...] = ("scheduler", "replicaset", "deployment",
                                               "endpoints", "nodelifecycle", "metrics",
                                               "horizontalpodautoscaler")
Outcome = Literal["stopped", "lost-leadership", "failed"]


class Controller(Protocol):
    name: str

    async def run(self) -> None: ...

    def shutdown(self) -> None: ...


def default_identity() -> str:
    # Host name for people, a random suffix so two managers on one host differ.
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ManagerConfig:
    """Settings of one controller manager; defaults are Kubernetes' where it has one."""

    identity: str = field(default_factory=default_identity)
    leader_elect: bool = True
    election: LeaderElectionConfig = field(default_factory=LeaderElectionConfig)
    node_health: NodeHealthConfig = field(default_factory=NodeHealthConfig)
    node_monitor_period: float = 1.0   # s between node lifecycle passes (kube: 5 s)
    orphan_grace: float = 10.0         # s before Pods of a deleted node are deleted
    resync_period: float | None = 300.0  # s; the informers' level-triggered safety net
    bind_concurrency: int = 32         # bindings in flight at once
    #: share of feasible nodes the scheduler looks for before scoring (Kubernetes'
    #: percentageOfNodesToScore; None or 0: adaptive, 50% at 100 nodes falling to 5%)
    percentage_of_nodes_to_score: int | None = None
    controllers: tuple[ControllerName, ...] = ALL_CONTROLLERS
    agent_token_file: Path | None = None  # the agents' API token (metrics collector)

    def __post_init__(self) -> None:
        unknown = [c for c in self.controllers if c not in ALL_CONTROLLERS]
        if unknown:
            raise ValueError(f"unknown controllers {unknown}; known: "
                             f"{', '.join(ALL_CONTROLLERS)}")
        if self.node_monitor_period <= 0:
            raise ValueError(f"node_monitor_period must be > 0, got {self.node_monitor_period}")
        if self.orphan_grace < 0:
            raise ValueError(f"orphan_grace must be >= 0, got {self.orphan_grace}")
        p = self.percentage_of_nodes_to_score
        if p is not None and not 0 <= p <= 100:
            raise ValueError(f"percentage_of_nodes_to_score must be 0..100 (0: adaptive), "
                             f"got {p}")


class ControllerManager:
    """See the module docstring. ``run(stop)`` until stopped or leadership is lost."""

    def __init__(self, client: ClientConfig | ApiClient, config: ManagerConfig | None = None
                 ) -> None:
        self._client = client
        self.config = config or ManagerConfig()
        self.controllers: list[Controller] = []
        self.scheduler: Scheduler | None = None
        self.elector: LeaderElector | None = None
        self.leading = asyncio.Event()

    def _build(self, api: ApiClient, factory: InformerFactory,
               recorders: Sequence[EventRecorder]) -> list[Controller]:
        cfg = self.config
        sched_rec, cm_rec = recorders
        out: list[Controller] = []
        for name in cfg.controllers:
            if name == "scheduler":
                self.scheduler = Scheduler(
                    api, factory, sched_rec, bind_concurrency=cfg.bind_concurrency,
                    percentage_of_nodes_to_score=cfg.percentage_of_nodes_to_score)
                out.append(self.scheduler)
            elif name == "replicaset":
                out.append(ReplicaSetController(api, factory, cm_rec))
            elif name == "deployment":
                out.append(DeploymentController(api, factory, cm_rec))
            elif name == "endpoints":
                out.append(EndpointsController(api, factory))
            elif name == "nodelifecycle":
                out.append(NodeLifecycleController(
                    api, factory, cm_rec, config=cfg.node_health,
                    tick=cfg.node_monitor_period, orphan_grace=cfg.orphan_grace))
            elif name == "metrics":
                out.append(MetricsCollector(api, factory,
                                            agent_token_file=cfg.agent_token_file))
            elif name == "horizontalpodautoscaler":
                out.append(HPAController(api, factory, cm_rec))
        return out

    async def run(self, stop: asyncio.Event) -> Outcome:
        if isinstance(self._client, ApiClient):
            return await self._run(self._client, stop)
        async with ApiClient(self._client, user_agent="mesh-controller-manager") as api:
            return await self._run(api, stop)

    async def _run(self, api: ApiClient, stop: asyncio.Event) -> Outcome:
        cfg = self.config
        if cfg.leader_elect:
            self.elector = LeaderElector(api, cfg.identity, cfg.election)
            if not await self.elector.acquire(stop):
                return "stopped"
        factory = InformerFactory(api, resync_period=cfg.resync_period)
        recorders = (EventRecorder(api, "default-scheduler", host=cfg.identity),
                     EventRecorder(api, "controller-manager", host=cfg.identity))
        self.controllers = self._build(api, factory, recorders)
        factory.start()
        for r in recorders:
            r.start()
        tasks = {asyncio.create_task(c.run(), name=f"controller-{c.name}"): c.name
                 for c in self.controllers}
        stop_wait = asyncio.create_task(stop.wait(), name="manager-stop")
        hold = (asyncio.create_task(self.elector.hold(), name="leader-hold")
                if self.elector else None)
        self.leading.set()
        outcome: Outcome = "stopped"
        try:
            watched = {stop_wait, *tasks, *([hold] if hold else [])}
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if hold in done:
                outcome = "lost-leadership"
            for t in done:
                if t in tasks and not t.cancelled() and t.exception() is not None:
                    log.error("controller %s failed: %r", tasks[t], t.exception())
                    outcome = "failed"  # a bug: stop and let the supervisor restart us
        finally:
            self.leading.clear()
            for c in self.controllers:
                c.shutdown()
            for t in (stop_wait, hold, *tasks):
                if t is not None:
                    t.cancel()
            await asyncio.gather(stop_wait, *([hold] if hold else []), *tasks,
                                 return_exceptions=True)
            if outcome == "stopped":
                for r in recorders:
                    await r.stop()
            else:
                for r in recorders:  # not the leader any more: write nothing else
                    await r.stop(drain_timeout=0)
            await factory.stop()
            if self.elector is not None and outcome == "stopped":
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.elector.release())
        return outcome

