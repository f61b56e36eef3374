"""Scheduler benchmark (issue #7): ``python -m loadtests.scheduler_bench``.

Simulated nodes, a real control plane, on loopback:

1. starts the **API server** (``meshctl apiserver``: HTTPS, SQLite store in a temporary
   directory) and the **controller manager** (``meshctl controller-manager``: scheduler
   and controllers, leader-elected), each in its own process group;
2. registers ``--nodes`` Node objects (8 CPU, 32 GiB, 110 pods each, spread over
   ``--zones`` zones) and **heartbeats** them from this process every ``--heartbeat``
   seconds, as agents would (a status write with a fresh ``lastHeartbeatTime``); no
   containers run anywhere;
3. **placement**: creates one Deployment of ``--replicas`` Pods (100m CPU, 128 MiB each):
   time until all are bound, binds per second, Pods per node and per zone, resource fit;
4. **node deletion**: deletes ``--lost`` Node objects: time until every Pod they held is
   replaced by a bound Pod elsewhere (the node lifecycle controller deletes Pods of a
   vanished node after ``--orphan-grace``; target: orphan grace + 5 s);
5. **node silence**: stops heartbeating ``--lost`` other nodes: time until their Pods
   are replaced elsewhere (NotReady after ``--grace``, evicted after
   ``--eviction-timeout``; the issue's target: grace + eviction timeout + 5 s).
   For both, a **timeline** says where the time went (NotReady seen, first and last
   Pod deleted, last replacement created, last bound);
6. **decision replay** (in this process, ``scheduler_replay.py``): the same placement
   through the scheduler's framework alone, for ``--replay-nodes`` cluster sizes: CPU
   per decision, nodes examined and scored per decision, spread. It isolates the
   scheduler's own cost from HTTP and the other controllers, and shows what
   ``percentageOfNodesToScore`` does to spreading on clusters above 100 nodes.

Every phase has a time limit; a phase that does not finish is reported as such with how
far it got, never filled in. Both servers are killed as process groups at the end, also
on failure or Ctrl-C. Only ``127.0.0.1`` is used.

``--profile FILE`` (or ``SCHEDULER_BENCH_PROFILE=FILE``) runs the controller manager
under cProfile and writes its stats there (wall-clock timer: compare shares within one
run, not seconds across runs).

Neighbours: ``procs.py`` (process groups, CPU sampling), ``scheduler_replay.py``,
``scheduler_report.py`` (the printed tables and verdicts); the README's "Scheduler"
section has the measured table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control.client.config import ClientConfig
from control.client.informer import Informer
from control.client.rest import ApiClient
from control.quantity import bytes_value, cpu_millis
from loadtests.procs import Server, ServerSet, free_port, group_usage
from loadtests.scheduler_replay import ReplayResult, replay
from loadtests.scheduler_report import machine, report

ZONE = "topology.kubernetes.io/zone"
Obj = dict[str, Any]


@dataclass(frozen=True)
class BenchConfig:
    nodes: int = 100
    replicas: int = 3000
    lost: int = 10
    zones: int = 4
    node_cpu: str = "8"
    node_memory: str = "32Gi"
    pod_cpu: str = "100m"
    pod_memory: str = "128Mi"
    heartbeat: float = 2.5        # s between a node's heartbeats
    grace: float = 10.0           # s without heartbeat before NotReady
    eviction_timeout: float = 10.0  # s NotReady before eviction
    eviction_rate: float = 10.0   # nodes/s
    orphan_grace: float = 5.0     # s before a deleted node's Pods are deleted
    place_timeout: float = 300.0  # s allowed for placing every replica
    recover_timeout: float = 120.0  # s allowed for each node-loss phase
    replay_nodes: tuple[int, ...] = (100, 1000)  # cluster sizes for the decision replay

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.replicas < 1 or self.zones < 1:
            raise ValueError("need at least 2 nodes, 1 replica and 1 zone")
        if not 0 <= 2 * self.lost < self.nodes:
            raise ValueError(f"--lost must leave most nodes alive: 2 x {self.lost} lost of "
                             f"{self.nodes}")
        if any(n < 1 for n in self.replay_nodes):
            raise ValueError(f"--replay-nodes must be positive, got {self.replay_nodes}")
        if self.heartbeat >= self.grace:
            raise ValueError(f"--heartbeat ({self.heartbeat}s) must be shorter than --grace "
                             f"({self.grace}s)")


@dataclass
class Result:
    config: dict[str, Any]
    machine: dict[str, Any]
    placed: int = 0
    place_seconds: float | None = None          # Deployment created -> last bound
    binds_per_second: float | None = None       # first -> last binding
    binds_per_second_overall: float | None = None  # Deployment created -> last binding
    creates_per_second: float | None = None     # Deployment created -> last Pod created
    per_node: dict[str, float] = field(default_factory=dict)
    per_zone: dict[str, int] = field(default_factory=dict)
    overcommitted_nodes: int | None = None
    fullest_cpu: float | None = None
    fullest_memory: float | None = None
    apiserver_cpu_seconds: float | None = None
    manager_cpu_seconds: float | None = None
    bench_cpu_seconds: float | None = None      # this process (watch, heartbeats, checks)
    deleted_pods: int = 0
    delete_recover_seconds: float | None = None
    silent_pods: int = 0
    silence_recover_seconds: float | None = None
    # Seconds from the phase's start: not_ready, first_deleted, last_deleted,
    # last_created, last_bound (None: not seen).
    delete_timeline: dict[str, float | None] = field(default_factory=dict)
    silence_timeline: dict[str, float | None] = field(default_factory=dict)
    replay: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Bench:
    def __init__(self, cfg: BenchConfig, work: Path, *, profile: str | None = None) -> None:
        self.cfg = cfg
        self.work = work
        self.profile = profile  # cProfile output file for the controller manager
        self.api: ApiClient | None = None
        self.alive: set[str] = set()
        self.pods: Informer | None = None
        self.first_bound: dict[str, float] = {}  # pod uid -> when first seen bound
        self.first_seen: dict[str, float] = {}   # pod uid -> when first seen at all
        self.deleting: dict[str, float] = {}     # pod uid -> deletion first seen
        self.not_ready: dict[str, float] = {}    # node name -> first seen not Ready
        self.went_not_ready: list[tuple[str, float]] = []  # every Ready -> not Ready seen
        self._was_ready: dict[str, bool] = {}
        self.nodes: Informer | None = None
        self.changed = asyncio.Event()
        self.manager: Server | None = None

    # -- servers ---------------------------------------------------------------------

    def start_apiserver(self, servers: ServerSet) -> tuple[Server, ClientConfig]:
        port = free_port()
        data = self.work / "apiserver"
        server = servers.start("apiserver", [
            sys.executable, "-m", "control.cli.main", "apiserver", "--data-dir", str(data),
            "--port", str(port),
            "--log-level", "WARNING"], port=port, timeout=60)
        token = (data / "admin.token").read_text().strip()
        return server, ClientConfig(server=f"https://127.0.0.1:{port}", token=token,
                                    ca_file=str(data / "ca.crt"))

    def start_manager(self, servers: ServerSet, client: ClientConfig) -> Server:
        c = self.cfg
        profile = self.profile or os.environ.get("SCHEDULER_BENCH_PROFILE")
        server = Server("controller-manager", [
            sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []),
            "-m", "control.cli.main", "controller-manager", "--server", client.server,
            "--token", str(client.token), "--certificate-authority", str(client.ca_file),
            "--node-grace-period", str(c.grace), "--pod-eviction-timeout",
            str(c.eviction_timeout), "--eviction-rate", str(c.eviction_rate),
            "--orphan-grace", str(c.orphan_grace), "--log-level", "WARNING",
            # What this benchmark measures; the metrics collector would poll 100 agents
            # that do not exist here.
            "--controllers", "scheduler,replicaset,deployment,endpoints,nodelifecycle"],
            log_dir=servers.log_dir)
        self.manager = server
        return server

    # -- simulated nodes -------------------------------------------------------------

    def _node(self, i: int) -> Obj:
        c = self.cfg
        res = {"cpu": c.node_cpu, "memory": c.node_memory, "pods": "110"}
        name = f"node-{i:03d}"
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                      ZONE: f"zone-{i % c.zones}"}},
                "status": {"capacity": res, "allocatable": res,
                           "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                           "conditions": [self._ready()]}}

    @staticmethod
    def _ready() -> Obj:
        now = _stamp()
        return {"type": "Ready", "status": "True", "reason": "AgentReady",
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    async def register_nodes(self) -> None:
        assert self.api is not None
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                node = await self.api.create("nodes", self._node(i))  # type: ignore[union-attr]
                self.alive.add(node["metadata"]["name"])
        await asyncio.gather(*(one(i) for i in range(self.cfg.nodes)))

    async def heartbeat_loop(self) -> None:
        """Each live node posts Ready every ``heartbeat`` s, spread over the interval.

        Beats are sent on schedule without waiting for the previous node's answer (at
        most 16 in flight, and never two for one node), as independent agents would: on
        an overloaded machine a slow API server then delays a beat, but does not stretch
        every node's period until they all miss the grace period together."""
        assert self.api is not None
        api = self.api
        slots = asyncio.Semaphore(16)
        inflight: dict[str, asyncio.Task[None]] = {}

        async def beat(name: str) -> None:
            async with slots:
                with contextlib.suppress(Exception):  # deleted meanwhile
                    await api.patch("nodes", name, {
                        "status": {"conditions": [self._ready()]}}, subresource="status")

        try:
            while True:
                names = sorted(self.alive)
                gap = self.cfg.heartbeat / max(1, len(names))
                for name in names:
                    if name in self.alive and (name not in inflight or inflight[name].done()):
                        inflight[name] = asyncio.create_task(beat(name), name=f"beat-{name}")
                    await asyncio.sleep(gap)
        finally:
            for t in inflight.values():
                t.cancel()
            await asyncio.gather(*inflight.values(), return_exceptions=True)

    # -- watching pods ---------------------------------------------------------------

    def _seen(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        self.first_seen.setdefault(uid, time.monotonic())
        if pod["spec"].get("nodeName"):
            self.first_bound.setdefault(uid, time.monotonic())
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.setdefault(uid, time.monotonic())
        self.changed.set()

    def _gone(self, pod: Obj) -> None:
        self.deleting.setdefault(pod["metadata"]["uid"], time.monotonic())
        self.changed.set()

    def _node_seen(self, node: Obj) -> None:
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or ())
        name = node["metadata"]["name"]
        if not ready:
            self.not_ready.setdefault(name, time.monotonic())
            if self._was_ready.get(name, True):
                self.went_not_ready.append((name, time.monotonic()))
        self._was_ready[name] = ready

    def live_pods(self) -> list[Obj]:
        assert self.pods is not None
        return [p for p in self.pods.list() if not p["metadata"].get("deletionTimestamp")]

    async def until(self, check: Any, timeout: float) -> bool:
        """Wait until ``check()`` holds. It is evaluated at most every 0.1 s: it walks
        every Pod, and this process shares the CPU with the servers it measures. The
        times reported come from the handlers' timestamps, not from when this returns."""
        deadline = time.monotonic() + timeout
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.1))
            self.changed.clear()
            if not check():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True

    def bound_elsewhere(self, gone: set[str]) -> bool:
        pods = self.live_pods()
        return (len(pods) == self.cfg.replicas
                and all(p["spec"].get("nodeName") and p["spec"]["nodeName"] not in gone
                        for p in pods))

    # -- phases ----------------------------------------------------------------------

    async def place(self, r: Result, apiserver: Server, manager: Server) -> None:
        assert self.api is not None
        c = self.cfg
        cpu0 = group_usage(apiserver.pgid).cpu_seconds, group_usage(manager.pgid).cpu_seconds
        own0 = time.process_time()
        labels = {"app": "bench"}
        start = time.monotonic()
        await self.api.create("deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bench", "namespace": "default"},
            "spec": {"replicas": c.replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                         "name": "app", "image": "busybox:1", "resources": {"requests": {
                             "cpu": c.pod_cpu, "memory": c.pod_memory}}}]}}}})

        def all_bound() -> bool:
            pods = self.live_pods()
            return len(pods) == c.replicas and all(p["spec"].get("nodeName") for p in pods)
        done = await self.until(all_bound, c.place_timeout)
        flapped = sorted({n for n, t in self.went_not_ready if t >= start})
        if flapped:
            # A heartbeat this process could not send in time (an overloaded machine):
            # the scheduler rightly avoided those nodes for a while, so the spread suffers.
            r.notes.append(f"{len(flapped)} node(s) went NotReady during placement (late "
                           f"heartbeats): {', '.join(flapped[:5])}"
                           f"{' ...' if len(flapped) > 5 else ''}")
        pods = self.live_pods()
        r.placed = sum(1 for p in pods if p["spec"].get("nodeName"))
        r.apiserver_cpu_seconds = group_usage(apiserver.pgid).cpu_seconds - cpu0[0]
        r.manager_cpu_seconds = group_usage(manager.pgid).cpu_seconds - cpu0[1]
        r.bench_cpu_seconds = time.process_time() - own0
        if not done:
            r.notes.append(f"placement did not finish in {c.place_timeout:g}s: "
                           f"{r.placed}/{c.replicas} bound")
            return
        created = max(self.first_seen[p["metadata"]["uid"]] for p in pods)
        r.creates_per_second = c.replicas / max(created - start, 1e-9)
        times = sorted(self.first_bound[p["metadata"]["uid"]] for p in pods)
        last = times[-1]
        r.place_seconds = last - start
        r.binds_per_second_overall = c.replicas / r.place_seconds
        if last > times[0]:
            r.binds_per_second = (c.replicas - 1) / (last - times[0])
        self._quality(r, pods)

    def _quality(self, r: Result, pods: list[Obj]) -> None:
        c = self.cfg
        per_node = Counter(p["spec"]["nodeName"] for p in pods)
        counts = [per_node.get(n, 0) for n in sorted(self.alive)]
        r.per_node = {"min": min(counts), "max": max(counts),
                      "mean": round(statistics.fmean(counts), 2),
                      "stdev": round(statistics.pstdev(counts), 2)}
        zone_of = {f"node-{i:03d}": f"zone-{i % c.zones}" for i in range(c.nodes)}
        r.per_zone = dict(sorted(Counter(zone_of[p["spec"]["nodeName"]] for p in pods).items()))
        node_cpu, node_mem = cpu_millis(c.node_cpu), bytes_value(c.node_memory)
        pod_cpu, pod_mem = cpu_millis(c.pod_cpu), bytes_value(c.pod_memory)
        r.overcommitted_nodes = sum(1 for n in counts
                                    if n * pod_cpu > node_cpu or n * pod_mem > node_mem)
        r.fullest_cpu = round(max(counts) * pod_cpu / node_cpu, 3)
        r.fullest_memory = round(max(counts) * pod_mem / node_mem, 3)

    async def lose_nodes(self, r: Result, *, how: str) -> None:
        assert self.api is not None
        c = self.cfg
        names = sorted(self.alive)
        # Take nodes from the middle of the list: delete and silence hit different ones.
        victims = set(names[:c.lost]) if how == "delete" else set(names[-c.lost:])
        held_uids = {p["metadata"]["uid"] for p in self.live_pods()
                     if p["spec"].get("nodeName") in victims}
        held = len(held_uids)
        start = time.monotonic()
        self.alive -= victims
        if how == "delete":
            for name in sorted(victims):
                await self.api.delete("nodes", name)
        done = await self.until(lambda: self.bound_elsewhere(victims), c.recover_timeout)
        took = time.monotonic() - start
        timeline = self._timeline(start, victims, held_uids)
        if how == "delete":
            r.deleted_pods = held
            r.delete_recover_seconds = took if done else None
            r.delete_timeline = timeline
        else:
            r.silent_pods = held
            r.silence_recover_seconds = took if done else None
            r.silence_timeline = timeline
        if not done:
            r.notes.append(f"node {how}: pods not all rescheduled within "
                           f"{c.recover_timeout:g}s")

    def _timeline(self, start: float, victims: set[str], held: set[str]
                  ) -> dict[str, float | None]:
        """When each step of a node loss was last (or first) seen, from ``start``."""
        def rel(times: list[float], pick: Any) -> float | None:
            return round(pick(times) - start, 2) if times else None
        deleted = [self.deleting[u] for u in held if u in self.deleting]
        new = [u for u, t in self.first_seen.items() if t >= start]
        return {
            "not_ready": rel([self.not_ready[n] for n in victims if n in self.not_ready
                              and self.not_ready[n] >= start], max),
            "first_deleted": rel(deleted, min),
            "last_deleted": rel(deleted, max),
            "last_created": rel([self.first_seen[u] for u in new], max),
            "last_bound": rel([self.first_bound[u] for u in new if u in self.first_bound],
                              max),
        }

    def replay(self, r: Result) -> None:
        c = self.cfg
        for n in c.replay_nodes:
            res: ReplayResult = replay(
                nodes=n, replicas=c.replicas, zones=c.zones, node_cpu=c.node_cpu,
                node_memory=c.node_memory, pod_cpu=c.pod_cpu, pod_memory=c.pod_memory)
            r.replay.append(asdict(res))

    async def run(self) -> Result:
        r = Result(config=asdict(self.cfg), machine=machine())
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        with ServerSet(self.work / "logs") as servers:
            apiserver, client = self.start_apiserver(servers)
            async with ApiClient(client, timeout=60) as api:
                self.api = api
                await self.register_nodes()
                beats = asyncio.create_task(self.heartbeat_loop(), name="heartbeats")
                self.pods = Informer(api, "pods", namespace="default")
                self.pods.add_handler(on_add=self._seen, on_update=lambda _o, n: self._seen(n),
                                      on_delete=self._gone)
                self.nodes = Informer(api, "nodes")
                self.nodes.add_handler(on_add=self._node_seen,
                                       on_update=lambda _o, n: self._node_seen(n))
                try:
                    async with self.pods, self.nodes:
                        await self.pods.wait_synced(60)
                        await self.nodes.wait_synced(60)
                        manager = self.start_manager(servers, client)
                        await self._wait_leader(manager)
                        await self.place(r, apiserver, manager)
                        if r.place_seconds is not None and self.cfg.lost:
                            await self.lose_nodes(r, how="delete")
                            await self.lose_nodes(r, how="silence")
                finally:
                    beats.cancel()
                    await asyncio.gather(beats, return_exceptions=True)
                    if self.manager is not None:  # before the API server it talks to
                        self.manager.stop()
        # After the servers are gone: the replay measures CPU and must not compete.
        self.replay(r)
        return r

    async def _wait_leader(self, manager: Server, timeout: float = 60.0) -> None:
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if manager.popen.poll() is not None:
                raise RuntimeError(f"controller manager exited: {manager.output()}")
            with contextlib.suppress(Exception):
                ep = await self.api.get("endpoints", "mesh-controller-manager",
                                        namespace="kube-system")
                if ep["metadata"].get("annotations"):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError("the controller manager never became leader")


def parse(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m loadtests.scheduler_bench",
                                description=__doc__.split("\n\n")[0])
    d = BenchConfig()
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--lost", type=int, default=d.lost, help="nodes deleted, then silenced")
    p.add_argument("--zones", type=int, default=d.zones)
    p.add_argument("--heartbeat", type=float, default=d.heartbeat)
    p.add_argument("--grace", type=float, default=d.grace)
    p.add_argument("--eviction-timeout", type=float, default=d.eviction_timeout)
    p.add_argument("--orphan-grace", type=float, default=d.orphan_grace)
    p.add_argument("--quick", action="store_true",
                   help="20 nodes, 300 replicas, 2 lost: checks the harness in ~1 min")
    p.add_argument("--replay-nodes", default=",".join(map(str, d.replay_nodes)),
                   help="cluster sizes for the in-process decision replay, comma-separated "
                        "('' skips it); default %(default)s")
    p.add_argument("--profile", metavar="FILE",
                   help="run the controller manager under cProfile, stats to FILE")
    p.add_argument("--json", type=Path, help="also write every number to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.replicas, args.lost = 20, 300, 2
    try:
        try:
            replay_nodes = tuple(int(x) for x in args.replay_nodes.split(",") if x.strip())
        except ValueError:
            raise ValueError(f"--replay-nodes takes comma-separated node counts, got "
                             f"{args.replay_nodes!r}") from None
        cfg = BenchConfig(nodes=args.nodes, replicas=args.replicas, lost=args.lost,
                          zones=args.zones, heartbeat=args.heartbeat, grace=args.grace,
                          eviction_timeout=args.eviction_timeout,
                          orphan_grace=args.orphan_grace, replay_nodes=replay_nodes)
    except ValueError as e:
        p.error(str(e))
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="scheduler-bench-") as tmp:
        result = asyncio.run(Bench(cfg, Path(tmp), profile=args.profile).run())
    print(report(result, cfg))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.place_seconds is not None else 1


if __name__ == "__main__":
    sys.exit(main())
