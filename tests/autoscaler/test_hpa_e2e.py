"""End to end on one machine: a meshed Deployment run by the real node agent
(``meshctl agent`` as a process, the ``process`` runtime, the injected meshproxy sidecar),
the scheduler and workload controllers of the real controller manager, the real metrics
collector scraping the sidecar and the agent, and the HPA controller. Load sent through
the Pod's sidecar pushes its requests/s over the HPA's target, and the HPA scales the
Deployment up to its maximum; when the load stops, the scale-down waits out the HPA's
down-window (held, said in an Event) and then returns to one replica. Nothing is played
by the test except the client load.

The collector and the HPA run with short periods (1 s) instead of the defaults (5 s,
15 s) so the test stays short; the arithmetic is the same."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from control.agent.runtime.process import ProcessRuntime
from control.api import ApiServer, ApiServerConfig
from control.api.auth import User
from control.autoscaler.controller import HPAController
from control.client.config import ClientConfig
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.controllers.events import EventRecorder
from control.controllers.manager import ControllerManager, ManagerConfig
from control.metrics.collector import MetricsCollector
from support.net import free_port as support_free_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow,
              pytest.mark.system(commands=["busybox"])]
T = TypeVar("T")
NODE = "e2e-node"
NODE_TOKEN = "node-token-for-hpa-e2e-0123"
HTTPD = ("mkdir -p www && echo hello > www/index.html && "
         "exec busybox httpd -f -p $(PORT) -h www")


def _deployment() -> dict:
    labels = {"app": "web"}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels,
                                               "annotations": {"mesh.io/inject": "true"}},
                                  "spec": {"terminationGracePeriodSeconds": 1,
                                           "containers": [{
                                               "name": "app", "image": "busybox",
                                               "command": ["busybox", "sh", "-c", HTTPD],
                                               "ports": [{"containerPort": 8080,
                                                          "name": "http"}],
                                               "resources": {"requests": {
                                                   "cpu": "50m", "memory": "32Mi"}}}]}}}}


def _hpa() -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "web"},
                     "minReplicas": 1, "maxReplicas": 3,
                     # A short down-window so the test sees it hold, then let go.
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}},
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": "mesh_requests_per_second"},
                         "target": {"type": "AverageValue", "averageValue": "5"}}}]}}


async def _until(check: Callable[[], Awaitable[T]], *, timeout: float, what: str) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_hpa_scales_a_meshed_deployment_up_under_load(data_dir: Path, tmp_path: Path,
                                                            spawn, free_port: int) -> None:
    agent_dir = tmp_path / "agent"
    token_file = tmp_path / "node.token"
    token_file.write_text(NODE_TOKEN + "\n")
    server = ApiServer(ApiServerConfig(
        data_dir=data_dir, port=0, tls=False, bookmark_interval=0.5,
        tokens={NODE_TOKEN: User(f"system:node:{NODE}", frozenset({"node"}))}))
    await server.start()
    admin = ClientConfig(server=server.url, token=server.admin_token)
    stop_manager = asyncio.Event()
    manager = ControllerManager(admin, ManagerConfig(
        leader_elect=False, resync_period=None,
        controllers=("scheduler", "replicaset", "deployment", "endpoints")))
    manager_task = asyncio.create_task(manager.run(stop_manager))
    api = ApiClient(admin)
    factory = InformerFactory(api)
    recorder = EventRecorder(api, "horizontal-pod-autoscaler")
    collector = MetricsCollector(api, factory, agent_token_file=agent_dir / "agent-token",
                                 interval=1.0, window=3.0)
    hpa = HPAController(api, factory, recorder, sync_period=1.0)
    factory.start()
    recorder.start()
    loops = [asyncio.create_task(collector.run()), asyncio.create_task(hpa.run())]
    agent = spawn.python(
        "-m", "control.cli.main", "agent", "--server", server.url,
        "--api-token-file", str(token_file), "--node-name", NODE, "--runtime", "process",
        "--data-dir", str(agent_dir), "--listen", f"127.0.0.1:{support_free_port()}",
        "--port-range", f"{free_port}-{free_port + 40}",
        "--process-path", str(Path(sys.executable).parent),
        "--heartbeat", "1", "--sync-interval", "0.3", "--stop-pods-on-exit", name="agent")
    try:
        await api.create("deployments", _deployment(), namespace="default")
        await api.create("horizontalpodautoscalers", _hpa(), namespace="default")

        async def ready_inbound() -> int | None:
            pods, _ = await api.list_all("pods", namespace="default", label_selector="app=web")
            for p in pods:
                st = p.get("status") or {}
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in st.get("conditions") or ()):
                    return next((m["hostPort"] for m in st.get("portMappings") or ()
                                 if m.get("sidecar")), None)
            return None

        port = await _until(ready_inbound, timeout=60, what="the meshed Pod to be Ready")
        url = f"http://127.0.0.1:{port}/index.html"

        async def load(session: aiohttp.ClientSession) -> None:
            while True:  # about 40 requests/s, 8x the HPA's target of 5 per Pod
                async with session.get(url) as resp:
                    assert resp.status == 200
                    await resp.read()
                await asyncio.sleep(0.025)

        async with aiohttp.ClientSession() as session:
            generator = asyncio.create_task(load(session))
            try:
                async def scaled() -> bool:
                    if generator.done():
                        generator.result()  # surface a failed request
                    s = await api.get_scale("deployments", "web", namespace="default")
                    return s["spec"]["replicas"] == 3

                await _until(scaled, timeout=60, what="the HPA to scale web to 3")
            finally:
                generator.cancel()
                await asyncio.gather(generator, return_exceptions=True)

        async def back_to_one() -> bool:  # the load has stopped: rps falls to 0
            s = await api.get_scale("deployments", "web", namespace="default")
            return s["spec"]["replicas"] == 1

        await _until(back_to_one, timeout=60, what="the HPA to scale web back to 1")
        await recorder.flush()
        events, _ = await api.list_all("events", namespace="default")
        events.sort(key=lambda e: e["metadata"]["creationTimestamp"])
        rescale = [e["message"] for e in events if e["reason"] == "SuccessfulRescale"]
        sizes = [int(m.split(";")[0].removeprefix("New size: ")) for m in rescale]
        # Up to the maximum first: in one step, or in two when the collector's window
        # still held the seconds before the load began (its first rate is then lower).
        assert 3 in sizes, "\n".join(rescale)
        top = sizes.index(3)
        assert top <= 1, "\n".join(rescale)
        assert sizes[:top + 1] == sorted(sizes[:top + 1]), "\n".join(rescale)
        assert re.match(r"New size: 3; current [12]; pods metric "
                        r"mesh_requests_per_second: ", rescale[top]), rescale[top]
        # The load asks for 3 or more; anything above maxReplicas is said to be clamped.
        # (How far above depends on the rate measured in the window, so it is read back.)
        wanted = int(re.search(r"→ (\d+)", rescale[top]).group(1))
        assert wanted >= 3, rescale[top]
        assert ("clamped to maxReplicas 3" in rescale[top]) == (wanted > 3), rescale[top]
        # Then down in the steps the window allows (a falling rate may pass through 2),
        # never up again.
        assert sizes[top:] == sorted(sizes[top:], reverse=True), "\n".join(rescale)
        assert sizes[-1] == 1
        # The down-window held the count above the recommendation at least once.
        held = [e["message"] for e in events if e["reason"] == "DesiredReplicasHeld"]
        assert any("stabilised to" in m for m in held + rescale[top + 1:]), "\n".join(held)
    finally:
        collector.shutdown()
        hpa.shutdown()
        await asyncio.gather(*loops, return_exceptions=True)
        await recorder.stop()
        await factory.stop()
        await api.close()
        agent.send_signal(signal.SIGTERM)  # --stop-pods-on-exit: it stops its Pods
        with contextlib.suppress(Exception):
            await asyncio.to_thread(agent.wait, 30)
        stop_manager.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(manager_task, 30)
        # Whatever the agent did not stop (it was killed, say) is stopped here; a
        # container it removed meanwhile is simply gone.
        rt = ProcessRuntime(agent_dir / "process", node=NODE)
        for info in await rt.list():
            with contextlib.suppress(Exception):
                await rt.stop(info.id, grace=0)
                await rt.remove(info.id)
        if rt.cgroups is not None:
            rt.cgroups.remove_node()
        await server.stop()
