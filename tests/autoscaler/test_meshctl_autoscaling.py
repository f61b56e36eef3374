"""``meshctl top``, ``meshctl capacity`` and ``meshctl describe hpa`` through the real
command line (``control.cli.main.main`` in a worker thread, configured by ``MESH_*``
environment as a user's shell would be) against the real API server, with metrics
samples pushed as the collector would (``hpa_kit``)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hpa_kit import NS, Clock, Seeder, api_server, client_config, frozen_hpa

from control.api import ApiServer
from control.cli.main import main
from control.client.rest import ApiClient
from control.metrics.window import ContainerUsage, MeshSample, NodeSample, PodSample, push_body

PUSH = "/apis/metrics.k8s.io/v1beta1/samples"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with api_server(data_dir) as s:
        yield s


@pytest.fixture
async def seed(server: ApiServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Seeder]:
    monkeypatch.setenv("MESH_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("MESH_SERVER", server.url)
    monkeypatch.setenv("MESH_TOKEN", server.admin_token)
    async with ApiClient(client_config(server)) as api:
        yield Seeder(api)


async def meshctl(*argv: str) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(list(argv))
        return rc, out.getvalue(), err.getvalue()
    return await asyncio.to_thread(run)


async def test_top_pods_prints_usage_and_mesh_traffic(seed: Seeder) -> None:
    """CPU in millicores, memory in Mi, and RPS / P99 / IN-FLIGHT for the meshed Pod;
    dashes for the Pod without a sidecar."""
    await seed.push({"web-0": 250.0, "batch-0": 1200.4},
                    memory={"web-0": 64 * 2**20, "batch-0": 300 * 2**20},
                    mesh={"web-0": MeshSample(12.5, 0.1204, 3.0, 375)})
    rc, out, err = await meshctl("top", "pods")
    assert (rc, err) == (0, "")
    assert out == (
        "NAME      CPU(cores)   MEMORY(bytes)   RPS    P99     IN-FLIGHT\n"
        "batch-0   1201m        300Mi           -      -       -\n"
        "web-0     250m         64Mi            12.5   120ms   3\n")
    rc, out, _ = await meshctl("top", "pods", "-A")
    assert out.splitlines()[1].startswith("default     batch-0")


async def test_top_pods_filters_by_label_and_says_when_nothing_is_sampled(
        seed: Seeder) -> None:
    await seed.pods("web", 1)
    await seed.pods("batch", 1)
    rc, out, _ = await meshctl("top", "pods")
    assert rc == 1
    assert out.startswith("error: metrics not available yet")
    await seed.push({"web-0": 100.0, "batch-0": 100.0})
    rc, out, _ = await meshctl("top", "pods", "-l", "app=web")
    assert rc == 0
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "web-0"]


async def test_top_nodes_prints_usage_against_allocatable(seed: Seeder) -> None:
    await seed.api.create("nodes", {"apiVersion": "v1", "kind": "Node",
                                    "metadata": {"name": "node-1"},
                                    "status": {"allocatable": {"cpu": "2", "memory": "4Gi"}}})
    await seed.api.request("POST", PUSH, body=push_body(
        [], [NodeSample("node-1", time.time(), 30.0, 500.0, 1024 * 2**20)]))
    rc, out, _ = await meshctl("top", "nodes")
    assert rc == 0
    assert out == ("NAME     CPU(cores)   CPU%   MEMORY(bytes)   MEMORY%\n"
                   "node-1   500m         25%    1024Mi          25%\n")


async def _service_with_history(seed: Seeder, *, loaded: int) -> None:
    """Deployment + HPA (max 6, p99 target 200 ms) + Service over 2 Pods, and ``loaded``
    history samples per Pod at rising rates (p99 over target from 45 requests/s)."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", max_replicas=6, metrics=[{
        "type": "Pods", "pods": {"metric": {"name": "mesh_latency_p99_seconds"},
                                 "target": {"type": "AverageValue", "averageValue": "200m"}}}])
    await seed.api.create("services", {"apiVersion": "v1", "kind": "Service",
                                       "metadata": {"name": "web", "namespace": NS},
                                       "spec": {"selector": {"app": "web"},
                                                "ports": [{"port": 80}]}}, namespace=NS)
    now = time.time()
    samples = []
    for i in range(loaded):
        rate = 10.0 + 5 * i
        p99 = 0.05 if rate < 45 else 0.5
        for pod in ("web-0", "web-1"):
            samples.append(PodSample(NS, pod, now - 20 + i, 30.0,
                                     (ContainerUsage("app", 100.0, 2**20),), "node-1",
                                     MeshSample(rate, p99, 1.0, int(rate * 30))))
    await seed.api.request("POST", PUSH, body=push_body(samples))


async def test_capacity_estimates_from_the_services_history(seed: Seeder) -> None:
    """Rates 10..55 requests/s per pod; p99 met the 200 ms target (from the HPA) up to
    40/s: 80/s now with 2 replicas, 240/s at the HPA's maximum of 6; the load now is
    the two Pods' latest 55/s each."""
    await _service_with_history(seed, loaded=10)
    rc, out, err = await meshctl("capacity", "web")
    assert (rc, err) == (0, "")
    assert out == (
        "Service:          default/web\n"
        "Replicas:         2 now, 6 at most (deployment web, autoscaler web)\n"
        "Latency target:   p99 <= 200 ms (autoscaler web)\n"
        "Samples:          20 mesh samples, 20 under load\n"
        "Load now:         110.0 requests/s\n"
        "Per replica:      40.0 requests/s with p99 <= 200 ms\n"
        "                  (p99 exceeded the target from 45.0 requests/s per pod)\n"
        "Capacity now:     80.0 requests/s (2 x 40.0)\n"
        "Capacity at max:  240.0 requests/s (6 x 40.0)\n"
        "Headroom now:     -30.0 requests/s (-38% of capacity)\n")


async def test_capacity_says_plainly_when_there_is_too_little_data(seed: Seeder) -> None:
    await _service_with_history(seed, loaded=3)
    rc, out, _ = await meshctl("capacity", "web", "--latency-target", "300ms")
    assert rc == 0
    assert "Latency target:   p99 <= 300 ms (--latency-target)" in out
    assert "Estimate:         none: too little data: 6 of 6 samples were under load" in out
    rc, _, err = await meshctl("capacity", "nope")
    assert rc == 1
    assert "NotFound" in err


async def test_describe_hpa_shows_current_against_target(server: ApiServer,
                                                         seed: Seeder) -> None:
    """After one reconcile, describe lists each metric as current / target, the replica
    counts, the conditions and the rescale Event."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}])
    await seed.push({"web-0": 180.0, "web-1": 180.0})
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile("default/web")
        await recorder.flush()
    rc, out, _ = await meshctl("describe", "hpa", "web")
    assert rc == 0
    assert "  cpu:                             180% / 60%" in out
    assert "2 current / 6 desired" in out
    assert "SucceededRescale" in out
    assert "New size: 6" in out
