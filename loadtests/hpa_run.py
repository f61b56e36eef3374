"""Autoscaling end to end (issue #10): ``python -m loadtests.hpa_run [--quick] [--out DIR]``.

One machine, loopback only. This process runs the API server (SQLite, plain HTTP), the
scheduler and workload controllers of the real controller manager, the real metrics
collector and the HPA controller; the node agent (``meshctl agent``, process runtime)
and a client-side meshproxy are child processes. The agent runs a meshed Deployment
``web`` whose app is a deliberately small server: one request at a time, each taking
``service_time`` (so one replica has a capacity of roughly ``1 / service_time`` req/s,
whatever the machine's other load; the CPU is not what saturates). The client proxy
follows the ``web`` Service's Endpoints through discovery and balances over them, each
request entering a replica through its sidecar, so new replicas get load only if the
proxy spreads it to them.

The load is open loop (``openloop.py``: request *i* is due at ``t0 + i / rate``, latency
counted from that time, so queueing shows) and runs in a child process of its own
(``--load-child``) so the controllers sharing this event loop do not delay it. The rate
steps ``low`` → ``high`` → ``low``; the child runs one open-loop schedule per second of
the plan and prints, per second, what it scheduled, completed and the p99 of those
requests. Every ``sample_interval`` this process reads the Deployment's scale and
status, the HPA's status and the per-Pod request rates the metrics API holds (the very
numbers the HPA decides on).

The HPA targets ``target_rps`` mesh requests/s per Pod, scales up by at most
``up_pods`` Pods per ``up_period`` s (``behavior.scaleUp.policies``) and its scale-down
stabilisation window is shortened from Kubernetes' 300 s to ``down_window`` s
(``behavior.scaleDown.stabilizationWindowSeconds``) so a run takes minutes. The collector
and the HPA sync every second (defaults 5 s and 15 s); the arithmetic is the same.

Bounded: every wait has a timeout; the load has an end; everything started (children,
Pods, controllers, the API server, the temporary directory) is stopped on the way out,
also on failure or Ctrl-C. Writes ``hpa.json`` (the time series and the findings) and
``hpa.png`` (``hpa_plot.py``) into ``--out``.

Neighbours: ``tests/autoscaler/test_hpa_e2e.py`` (the same system as a test),
``hpa_plot.py`` (findings and plot), the README's "Autoscaling (issue #10)" section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from control.agent.runtime.process import ProcessRuntime
from control.api import ApiServer, ApiServerConfig
from control.api.auth import User
from control.autoscaler.controller import HPAController
from control.autoscaler.source import METRICS_PATH
from control.client.config import ClientConfig
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.controllers.events import EventRecorder
from control.controllers.manager import ControllerManager, ManagerConfig
from control.metrics.collector import MetricsCollector
from loadtests.procs import ServerFailed, ServerSet, free_port

Obj = dict[str, Any]
NS = "default"
ROOT = str(Path(__file__).resolve().parents[1])  # the child runs ``-m loadtests.hpa_run``
NODE = "hpa-run"
NODE_TOKEN = "node-token-for-hpa-run-0123456789"
#: The app: serial (one request at a time, HTTP/1.0 so each connection closes), each
#: request sleeping the service time. Capacity per replica ~ 1 / service time.
APP = """
import os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
DELAY = float(os.environ["SERVICE_TIME"])
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(DELAY)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *a):
        pass
HTTPServer.request_queue_size = 256
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


class RunError(RuntimeError):
    """The run could not proceed (something did not come up in time)."""


@dataclass(frozen=True)
class HPARunConfig:
    """One run's settings; the defaults are the full run (about 3 minutes of load)."""

    low_rate: float = 20.0      # req/s before and after the step
    high_rate: float = 120.0    # req/s during the step
    low_s: float = 15.0         # s of low load before the step
    high_s: float = 75.0        # s of high load
    after_s: float = 75.0       # s of low load after the step (covers the down-window)
    service_time: float = 0.010  # s per request in the app (capacity ~100/s per replica)
    target_rps: float = 30.0    # HPA target: mesh requests/s per Pod (AverageValue)
    max_replicas: int = 5
    up_pods: int = 1            # scale-up policy: at most this many Pods ...
    up_period: int = 5          # ... per this many seconds
    down_window: int = 30       # scale-down stabilisation window, s (Kubernetes: 300)
    p99_target: float = 0.100   # s; the latency objective drawn on the plot
    sample_interval: float = 0.5
    ready_timeout: float = 90.0

    def __post_init__(self) -> None:
        if not 0 < self.low_rate < self.high_rate:
            raise ValueError(f"need 0 < low_rate < high_rate, got {self.low_rate}, "
                             f"{self.high_rate}")
        if min(self.low_s, self.high_s, self.after_s) < 1:
            raise ValueError("low_s, high_s and after_s must each be at least 1 s")
        if self.after_s <= self.down_window:
            raise ValueError(f"after_s ({self.after_s}) must exceed down_window "
                             f"({self.down_window}) or the scale-down cannot be seen")
        if not (self.service_time > 0 and self.target_rps > 0 and self.p99_target > 0):
            raise ValueError("service_time, target_rps and p99_target must be positive")
        if self.max_replicas < 2 or self.up_pods < 1 or self.up_period < 1:
            raise ValueError("need max_replicas >= 2, up_pods >= 1, up_period >= 1")

    def rate_at(self, t: float) -> float:
        """The planned rate at ``t`` s into the load."""
        return self.high_rate if self.low_s <= t < self.low_s + self.high_s else self.low_rate

    @property
    def duration(self) -> float:
        return self.low_s + self.high_s + self.after_s


QUICK = HPARunConfig(low_rate=10.0, high_rate=45.0, low_s=5.0, high_s=25.0, after_s=16.0,
                     service_time=0.025, target_rps=15.0, max_replicas=3, up_period=3,
                     down_window=6, p99_target=0.150, ready_timeout=60.0)


def deployment(cfg: HPARunConfig) -> Obj:
    labels = {"app": "web"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels,
                                               "annotations": {"mesh.io/inject": "true"}},
                                  "spec": {"terminationGracePeriodSeconds": 1,
                                           "containers": [{
                                               "name": "app", "image": "python",
                                               "command": ["python", "-c", APP],
                                               "env": [{"name": "SERVICE_TIME",
                                                        "value": str(cfg.service_time)}],
                                               "ports": [{"containerPort": 8080,
                                                          "name": "http"}],
                                               "resources": {"requests": {
                                                   "cpu": "50m", "memory": "32Mi"}}}]}}}}


def service() -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def hpa(cfg: HPARunConfig) -> Obj:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "web"},
                     "minReplicas": 1, "maxReplicas": cfg.max_replicas,
                     "behavior": {
                         "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [
                             {"type": "Pods", "value": cfg.up_pods,
                              "periodSeconds": cfg.up_period}]},
                         "scaleDown": {"stabilizationWindowSeconds": cfg.down_window}},
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": "mesh_requests_per_second"},
                         "target": {"type": "AverageValue",
                                    "averageValue": f"{cfg.target_rps:g}"}}}]}}


def progress(line: str) -> None:
    print(f"[hpa_run] {line}", file=sys.stderr, flush=True)


class HPARun:
    """The system, the load and the sampler of one run."""

    def __init__(self, cfg: HPARunConfig, work: Path) -> None:
        self.cfg, self.work = cfg, work
        self.samples: list[Obj] = []
        self.load: list[Obj] = []

    async def run(self) -> Obj:
        work = self.work
        (work / "logs").mkdir(parents=True)
        token_file = work / "node.token"
        token_file.write_text(NODE_TOKEN + "\n")
        server = ApiServer(ApiServerConfig(
            data_dir=work / "api", port=0, tls=False, bookmark_interval=0.5,
            tokens={NODE_TOKEN: User(f"system:node:{NODE}", frozenset({"node"}))}))
        await server.start()
        admin = ClientConfig(server=server.url, token=server.admin_token)
        (work / "admin.token").write_text(server.admin_token + "\n")
        stop_manager = asyncio.Event()
        manager = ControllerManager(admin, ManagerConfig(
            leader_elect=False, resync_period=None,
            controllers=("scheduler", "replicaset", "deployment", "endpoints")))
        manager_task = asyncio.create_task(manager.run(stop_manager))
        api = ApiClient(admin)
        factory = InformerFactory(api)
        recorder = EventRecorder(api, "horizontal-pod-autoscaler")
        agent_dir = work / "agent"
        collector = MetricsCollector(api, factory, agent_token_file=agent_dir / "agent-token",
                                     interval=1.0, window=3.0)
        controller = HPAController(api, factory, recorder, sync_period=1.0)
        factory.start()
        recorder.start()
        loops = [asyncio.create_task(collector.run()), asyncio.create_task(controller.run())]
        servers = ServerSet(work / "logs")
        try:
            with servers:
                self.api = api
                result = await self._run(servers, server.url, agent_dir, token_file)
                await recorder.flush()
                events, _ = await api.list_all("events", namespace=NS)
                result["events"] = sorted(
                    ({"time": e["metadata"]["creationTimestamp"], "reason": e["reason"],
                      "message": e["message"]} for e in events
                     if e["reason"] in ("SuccessfulRescale", "DesiredReplicasHeld")),
                    key=lambda e: e["time"])
                # The agent stops its Pods on SIGTERM (--stop-pods-on-exit) if given time;
                # on failure the ServerSet stops it sooner and _sweep does the rest.
                await asyncio.to_thread(self.agent.stop, 20.0)
                return result
        finally:
            collector.shutdown()
            controller.shutdown()
            await asyncio.gather(*loops, return_exceptions=True)
            await recorder.stop()
            await factory.stop()
            await api.close()
            stop_manager.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(manager_task, 30)
            await _sweep(agent_dir)
            await server.stop()

    async def _run(self, servers: ServerSet, api_url: str, agent_dir: Path,
                   token_file: Path) -> Obj:
        cfg = self.cfg
        agent_port = free_port()
        pods_from = free_port()
        progress("starting the node agent")
        self.agent = await asyncio.to_thread(servers.start, "agent", [
            sys.executable, "-m", "control.cli.main", "agent", "--server", api_url,
            "--api-token-file", str(token_file), "--node-name", NODE, "--runtime", "process",
            "--data-dir", str(agent_dir), "--listen", f"127.0.0.1:{agent_port}",
            "--port-range", f"{pods_from}-{pods_from + 60}",
            "--process-path", str(Path(sys.executable).parent),
            "--heartbeat", "1", "--sync-interval", "0.3", "--stop-pods-on-exit"],
            port=agent_port, timeout=60)
        for res, obj in (("services", service()), ("deployments", deployment(cfg)),
                         ("horizontalpodautoscalers", hpa(cfg))):
            await self.api.create(res, obj, namespace=NS)
        proxy_port, admin_port = free_port(), free_port()
        conf = self.work / "client-proxy.yaml"
        conf.write_text(yaml.safe_dump({
            "admin": {"address": "127.0.0.1", "port": admin_port},
            "listeners": [{"protocol": "http", "name": "client", "address": "127.0.0.1",
                           "port": proxy_port,
                           "routes": [{"name": "web", "cluster": "web", "timeout": 30.0}]}],
            "clusters": [{"name": "web"}],
            "discovery": {"server": api_url, "token_file": str(self.work / "admin.token"),
                          "clusters": [{"cluster": "web", "service": f"{NS}/web",
                                        "port": "http"}]}}))
        progress("starting the client proxy")
        self.proxy = await asyncio.to_thread(servers.start, "client-proxy", [
            str(Path(sys.executable).parent / "meshproxy"), "--config", str(conf)],
            port=proxy_port, timeout=30)
        url = f"http://127.0.0.1:{proxy_port}/"
        await self._until_serving(url)
        progress(f"web serves through the client proxy; load for {cfg.duration:g}s")
        return await self._load_and_sample(url)

    async def _until_serving(self, url: str) -> None:
        deadline = time.monotonic() + self.cfg.ready_timeout
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while time.monotonic() < deadline:
                if self.agent.popen.poll() is not None:
                    raise RunError(f"the agent exited: {self.agent.output(600)}")
                try:
                    async with http.get(url) as r:
                        last = f"{r.status} {(await r.text())[:200]}"
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError) as e:
                    last = repr(e)
                await asyncio.sleep(0.5)
        pods, _ = await self.api.list_all("pods", namespace=NS)
        states = [(p["metadata"]["name"], (p.get("status") or {}).get("phase")) for p in pods]
        raise RunError(f"web did not answer 200 through the client proxy within "
                       f"{self.cfg.ready_timeout:g}s (last: {last}); Pods {states}; "
                       f"client proxy log: {self.proxy.output(1500)}; "
                       f"agent log: {self.agent.output(1500)}")

    async def _load_and_sample(self, url: str) -> Obj:
        cfg = self.cfg
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtests.hpa_run", "--load-child", url,
            "--plan", json.dumps(asdict(cfg)), stdout=asyncio.subprocess.PIPE,
            cwd=ROOT)
        assert child.stdout is not None
        t0: float | None = None
        reader = asyncio.create_task(self._read_load(child.stdout))
        try:
            while t0 is None:  # the child's first line says when its plan starts
                await asyncio.sleep(0.05)
                if self.load:
                    t0 = self.load[0]["start"]
                if reader.done():
                    raise RunError("the load generator ended before starting")
            end = t0 + cfg.duration + 1.0
            while time.monotonic() < end:
                await self._sample(time.monotonic() - t0)
                await asyncio.sleep(max(0.0, cfg.sample_interval - 0.05))
            rc = await asyncio.wait_for(child.wait(), 60)
            await reader
            if rc != 0:
                raise RunError(f"the load generator exited with status {rc}")
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        load = [{**s, "t": s["start"] - t0} for s in self.load[1:]]
        for s in load:
            del s["start"]
        return {"config": asdict(cfg), "samples": self.samples, "load": load,
                "loadavg": os.getloadavg()}

    async def _read_load(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.load.append(json.loads(line))

    async def _sample(self, t: float) -> None:
        try:
            dep = await self.api.get("deployments", "web", namespace=NS)
            hpa_obj = await self.api.get("horizontalpodautoscalers", "web", namespace=NS)
            metrics = await self.api.request("GET", METRICS_PATH.format(ns=NS))
            pods, _ = await self.api.list_all("pods", namespace=NS, label_selector="app=web")
        except Exception as e:  # a slow answer costs one sample, said in the series
            self.samples.append({"t": round(t, 2), "error": str(e)[:200]})
            return
        status, hstatus = dep.get("status") or {}, hpa_obj.get("status") or {}
        # The metrics API keeps a deleted Pod's last sample until its TTL: only live Pods.
        live = {p["metadata"]["name"] for p in pods
                if not p["metadata"].get("deletionTimestamp")}
        per_pod = {item["metadata"]["name"]: (item.get("mesh") or {}).get("requestsPerSecond")
                   for item in metrics.get("items") or ()
                   if item["metadata"]["name"] in live}
        self.samples.append({
            "t": round(t, 2), "planned_rate": self.cfg.rate_at(t),
            "spec_replicas": dep["spec"].get("replicas"),
            "replicas": status.get("replicas", 0),
            "ready_replicas": status.get("readyReplicas", 0),
            "hpa_desired": hstatus.get("desiredReplicas"),
            "hpa_current": hstatus.get("currentReplicas"),
            "pod_rps": per_pod,
            "total_rps": sum(v for v in per_pod.values() if v is not None)})


async def _sweep(agent_dir: Path) -> None:
    """Stop whatever the agent left running (it was killed, say)."""
    if not (agent_dir / "process").exists():
        return
    rt = ProcessRuntime(agent_dir / "process", node=NODE)
    for info in await rt.list():
        with contextlib.suppress(Exception):
            await rt.stop(info.id, grace=0)
            await rt.remove(info.id)
    if rt.cgroups is not None:
        rt.cgroups.remove_node()


async def load_child(url: str, cfg: HPARunConfig) -> None:
    """The load process: one open-loop schedule per second of the plan, started on time
    whether or not the previous second's answers are in; one JSON line per second."""
    from loadtests.openloop import OpenLoopGenerator  # uvloop/httptools: child only

    start = time.monotonic() + 0.5
    print(json.dumps({"start": start}), flush=True)
    tasks = []

    async def second(i: int, rate: float) -> None:
        gen = OpenLoopGenerator(url, rate=rate, duration=1.0,
                                connections=max(4, int(rate // 4)), drain_timeout=20.0)
        res = await gen.run()
        lat = res.latency
        print(json.dumps({
            "start": start + i, "rate": rate, "scheduled": res.scheduled,
            "completed": res.completed, "errors": res.error_count,
            "error_kinds": dict(res.errors),
            "unfinished": res.unfinished,
            "p50": lat.percentile(50) if len(lat) else None,
            "p99": lat.percentile(99) if len(lat) else None}), flush=True)

    for i in range(int(cfg.duration)):
        # Connecting takes a moment: start it a little before the second begins.
        await asyncio.sleep(max(0.0, start + i - 0.05 - time.monotonic()))
        tasks.append(asyncio.create_task(second(i, cfg.rate_at(i + 0.5))))
    await asyncio.gather(*tasks)


async def _main(cfg: HPARunConfig, work: Path) -> Obj:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM ends the run as Ctrl-C does: cancelled, and everything started is stopped.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await HPARun(cfg, work).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.hpa_run", description=(
        "HPA end to end: load steps up and down, replicas and p99 over time, plotted."))
    p.add_argument("--quick", action="store_true", help="a ~45 s plan instead of ~3 min")
    p.add_argument("--out", type=Path, default=Path("loadtests/results"),
                   help="directory for hpa.json and hpa.png (default loadtests/results)")
    p.add_argument("--plan", metavar="JSON", help=(
        "settings overriding the chosen preset, a JSON object of HPARunConfig fields "
        'e.g. \'{"high_s": 40}\''))
    p.add_argument("--load-child", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        plan = json.loads(args.plan) if args.plan else {}
        if not isinstance(plan, dict):
            raise ValueError("--plan must be a JSON object")
        cfg = replace(QUICK if args.quick else HPARunConfig(), **plan)
    except (ValueError, TypeError) as e:  # bad JSON, unknown field, invalid value
        p.error(f"--plan: {e}")
    if args.load_child:
        import uvloop
        uvloop.run(load_child(args.load_child, cfg))
        return 0
    from loadtests.hpa_plot import findings, plot  # matplotlib: only when plotting

    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="hpa-run-") as tmp:
            result = asyncio.run(_main(cfg, Path(tmp)))
    except (RunError, ServerFailed) as e:  # a child that never came up says why
        print(f"hpa_run: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("hpa_run: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    result["findings"] = findings(result)
    (args.out / "hpa.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "hpa.png")
    print(json.dumps(result["findings"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
