"""The collector end to end against the real API server: it finds the agent through the
Node's advertised endpoint, reads ``/stats/summary`` with the agent's token, finds the
meshed Pod's sidecar admin port in ``status.portMappings``, and pushes rates computed
between two rounds (``metrics_kit`` plays the agent and the sidecar with their real wire
formats; the rounds run on timestamps the test chooses, not on sleeps)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from metrics_kit import AGENT_TOKEN, FakeAgent, FakeSidecar, api_server, call, serving

from control.api import ApiServer
from control.client.config import ClientConfig
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.metrics.collector import MetricsCollector

PODS = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with api_server(data_dir) as s:
        yield s


async def _seed(api: ApiClient, agent_port: int, sidecar_port: int) -> tuple[str, str]:
    await api.create("nodes", {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}}}})
    uids = []
    for name, meshed in (("web-0", True), ("batch-0", False)):
        pod = await api.create("pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"mesh.io/inject": "true"} if meshed else {}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "x"}]}},
            namespace="default")
        mappings = [{"containerPort": 15000, "hostPort": sidecar_port, "protocol": "TCP",
                     "container": "meshproxy"}] if meshed else []
        await api.patch("pods", name, {"status": {"phase": "Running", "podIP": "127.0.0.1",
                                                  "portMappings": mappings}},
                        namespace="default", subresource="status")
        uids.append(pod["metadata"]["uid"])
    return uids[0], uids[1]


async def test_collector_pushes_cpu_memory_and_mesh_rates(server: ApiServer) -> None:
    """Round 1 only remembers the cumulative readings (no rate from one point); round 2,
    10 s later, pushes: CPU = 2e9 ns / 10 s = 200m, memory as read, 300 requests / 10 s =
    30 rps with their p99 (all took 40 ms: inside the (0.025, 0.05] bucket), in-flight
    from the busy pool connections; the unmeshed Pod has no mesh figures; the Node's
    usage is its Pods' sum."""
    agent, sidecar = FakeAgent(), FakeSidecar()
    async with serving(agent.app()) as agent_port, serving(sidecar.app()) as sidecar_port, \
            ApiClient(ClientConfig(server=server.url, token=server.admin_token)) as api:
        web_uid, batch_uid = await _seed(api, agent_port, sidecar_port)
        factory = InformerFactory(api)
        collector = MetricsCollector(api, factory, agent_token=AGENT_TOKEN, window=30.0)
        factory.start()
        try:
            await factory.wait_synced(timeout=30)
            t0 = time.time()
            agent.usage = {("default", "web-0", web_uid): {"app": (5e9, 50 * 2**20),
                                                          "meshproxy": (1e9, 20 * 2**20)},
                           ("default", "batch-0", batch_uid): {"app": (1e9, 10 * 2**20)}}
            sidecar.serve_requests(100, 0.01)
            assert await collector.collect_once(t0) == ([], [])

            agent.usage = {("default", "web-0", web_uid): {"app": (7e9, 60 * 2**20),
                                                          "meshproxy": (1.5e9, 20 * 2**20)},
                           ("default", "batch-0", batch_uid): {"app": (1.1e9, 10 * 2**20)}}
            sidecar.serve_requests(300, 0.04)
            sidecar.stats.pool_connections.labels("local-app", "busy").set(4)
            pods, nodes = await collector.collect_once(t0 + 10)
        finally:
            await collector.close()
            await factory.stop()
    assert collector.failures == 0
    by_name = {p.name: p for p in pods}
    web = by_name["web-0"]
    assert [(c.name, round(c.cpu_millis), c.memory_bytes) for c in web.containers] == [
        ("app", 200, 60 * 2**20), ("meshproxy", 50, 20 * 2**20)]
    assert web.mesh is not None
    assert web.mesh.requests_per_second == pytest.approx(30.0)
    assert web.mesh.requests == 300
    assert web.mesh.in_flight == 4
    assert web.mesh.latency_p99 == pytest.approx(0.025 + 0.025 * 0.99)
    assert by_name["batch-0"].mesh is None
    assert round(by_name["batch-0"].cpu_millis) == 10
    assert len(nodes) == 1
    assert round(nodes[0].cpu_millis) == 260
    status, listed = await call(server, "GET", PODS, server.admin_token)
    assert status == 200
    served = {p["metadata"]["name"]: p for p in listed["items"]}
    assert served["web-0"]["containers"][0]["usage"] == {"cpu": "200m", "memory": "61440Ki"}
    assert served["web-0"]["mesh"]["requestsPerSecond"] == pytest.approx(30.0)


async def test_an_agent_that_refuses_costs_only_its_usage_figures(server: ApiServer) -> None:
    """A wrong agent token (401) is a counted failure and no CPU/memory (nor Node) sample
    is pushed, but the meshed Pod's sidecar, found through the Pods bound to the node,
    still gives its mesh figures; the unmeshed Pod has nothing to report."""
    agent, sidecar = FakeAgent(), FakeSidecar()
    async with serving(agent.app()) as agent_port, serving(sidecar.app()) as sidecar_port, \
            ApiClient(ClientConfig(server=server.url, token=server.admin_token)) as api:
        web_uid, _ = await _seed(api, agent_port, sidecar_port)
        agent.usage = {("default", "web-0", web_uid): {"app": (5e9, 50 * 2**20)}}
        factory = InformerFactory(api)
        collector = MetricsCollector(api, factory, agent_token="wrong-token-0123456789")
        factory.start()
        try:
            await factory.wait_synced(timeout=30)
            t0 = time.time()
            assert await collector.collect_once(t0) == ([], [])
            sidecar.serve_requests(50, 0.01)
            pods, nodes = await collector.collect_once(t0 + 10)
        finally:
            await collector.close()
            await factory.stop()
    assert collector.failures == 2
    assert nodes == []
    assert [(p.name, p.containers) for p in pods] == [("web-0", ())]
    assert pods[0].mesh is not None
    assert pods[0].mesh.requests_per_second == pytest.approx(5.0)


async def test_agent_token_is_read_from_its_file_once_the_agent_wrote_it(
        server: ApiServer, tmp_path: Path) -> None:
    """The collector may start before the agent: without the token file the agent refuses
    (a counted failure); once the file exists its token is used."""
    agent, sidecar = FakeAgent(), FakeSidecar()
    token_file = tmp_path / "agent" / "agent-token"
    async with serving(agent.app()) as agent_port, serving(sidecar.app()) as sidecar_port, \
            ApiClient(ClientConfig(server=server.url, token=server.admin_token)) as api:
        web_uid, _ = await _seed(api, agent_port, sidecar_port)
        agent.usage = {("default", "web-0", web_uid): {"app": (5e9, 50 * 2**20)}}
        factory = InformerFactory(api)
        collector = MetricsCollector(api, factory, agent_token_file=token_file)
        factory.start()
        try:
            await factory.wait_synced(timeout=30)
            t0 = time.time()
            await collector.collect_once(t0)
            assert collector.failures == 1
            token_file.parent.mkdir()
            token_file.write_text(AGENT_TOKEN + "\n")
            await collector.collect_once(t0 + 5)
            agent.usage = {("default", "web-0", web_uid): {"app": (6e9, 50 * 2**20)}}
            pods, _ = await collector.collect_once(t0 + 10)
        finally:
            await collector.close()
            await factory.stop()
    assert collector.failures == 1
    assert [(p.name, round(p.cpu_millis)) for p in pods] == [("web-0", 200)]


async def test_rounds_further_apart_than_the_window_still_give_rates(server: ApiServer) -> None:
    """With a 3 s window and rounds 10 s apart (a busy machine, a failed round), the rate
    is measured over the 10 s between the readings rather than lost; a third round 4 s
    later measures from the newest reading at or before the window's start (the second),
    so over 4 s."""
    agent, sidecar = FakeAgent(), FakeSidecar()
    async with serving(agent.app()) as agent_port, serving(sidecar.app()) as sidecar_port, \
            ApiClient(ClientConfig(server=server.url, token=server.admin_token)) as api:
        web_uid, _ = await _seed(api, agent_port, sidecar_port)
        factory = InformerFactory(api)
        collector = MetricsCollector(api, factory, agent_token=AGENT_TOKEN, window=3.0)
        factory.start()
        try:
            await factory.wait_synced(timeout=30)
            t0 = time.time()
            agent.usage = {("default", "web-0", web_uid): {"app": (1e9, 2**20)}}
            await collector.collect_once(t0)
            agent.usage = {("default", "web-0", web_uid): {"app": (2e9, 2**20)}}
            sidecar.serve_requests(100, 0.01)
            slow, _ = await collector.collect_once(t0 + 10)
            agent.usage = {("default", "web-0", web_uid): {"app": (2.5e9, 2**20)}}
            next_, _ = await collector.collect_once(t0 + 14)
        finally:
            await collector.close()
            await factory.stop()
    web = next(p for p in slow if p.name == "web-0")
    assert web.window == 10
    assert round(web.cpu_millis) == 100
    assert web.mesh is not None
    assert web.mesh.requests_per_second == pytest.approx(10.0)
    web = next(p for p in next_ if p.name == "web-0")
    assert web.window == 4
    assert round(web.cpu_millis) == 125
