"""The agent's HTTP API over a real socket, on the process runtime: token auth, logs,
exec, stats summary, and Status errors for bad requests."""

from __future__ import annotations

import aiohttp
import pytest
from agent_kit import container, pod, wait_until
from aiohttp import web

from control.agent.agent import Agent
from control.agent.clock import SystemClock
from control.agent.server import build_app

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret-token"


@pytest.fixture
async def served(runtime, host_ports, tmp_path):
    """An Agent running one Pod, its API on a loopback port; yields (base URL, agent)."""
    statuses: dict[str, dict] = {}

    async def sink(obj, status):
        statuses[obj["metadata"]["name"]] = status

    agent = Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime, ports=host_ports,
                  clock=SystemClock(), state_dir=tmp_path / "agent", status_sink=sink)
    await agent.set_pods([pod("tools", container(
        "app", "echo line-1; echo line-2; while true; do busybox sleep 0.2; done"),
        grace=0)])
    await wait_until(lambda: agent.worker("default", "tools").container_id("app"),
                     what="the pod's container")
    runner = web.AppRunner(build_app(agent, token=TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", agent
    finally:
        await runner.cleanup()
        await agent.close(stop_pods=True)


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_agent_api_requires_token_except_healthz(served):
    """/healthz answers anyone; every other endpoint is 401 without the right token."""
    base, _ = served
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/healthz") as r:
            assert (r.status, await r.text()) == (200, "ok")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with s.get(base + "/pods", headers=headers) as r:
                assert r.status == 401
                assert (await r.json())["reason"] == "Unauthorized"


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_logs_exec_and_stats_through_the_agent_api(served):
    """Logs (with tailLines), exec (exit code and output) and the stats summary reach
    the Pod's running container."""
    base, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        async def logged() -> bool:
            async with s.get(base + "/containerLogs/default/tools/app") as r:
                return r.status == 200 and "line-2" in await r.text()

        await wait_until(logged, what="the container's log")
        async with s.get(base + "/containerLogs/default/tools/app?tailLines=1") as r:
            assert await r.text() == "line-2\n"
        async with s.post(base + "/exec/default/tools/app",
                          json={"command": ["busybox", "sh", "-c", "echo hi; exit 3"]}) as r:
            assert r.status == 200
            assert await r.json() == {"exitCode": 3, "output": "hi\n"}
        async with s.get(base + "/stats/summary") as r:
            summary = await r.json()
        [p] = summary["pods"]
        assert p["podRef"]["name"] == "tools"
        assert p["containers"][0]["memory"]["workingSetBytes"] > 0
        async with s.get(base + "/pods") as r:
            [item] = (await r.json())["items"]
            assert item["status"]["phase"] == "Running"


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
@pytest.mark.parametrize(("method", "path", "body", "code", "text"), [
    ("get", "/containerLogs/default/nope/app", None, 404, 'pod "default/nope"'),
    ("get", "/containerLogs/default/tools/nope", None, 404, 'no container "nope"'),
    ("get", "/containerLogs/default/tools/app?tailLines=-1", None, 400, "tailLines"),
    ("post", "/exec/default/tools/app", {"command": "ls"}, 400, "non-empty list"),
    ("post", "/exec/default/tools/app", {"command": ["ls"], "timeoutSeconds": 0}, 400,
     "timeoutSeconds"),
])
async def test_bad_agent_api_requests_get_status_errors(served, method, path, body, code,
                                                        text):
    """Unknown pods/containers are 404, malformed parameters 400, each a Status body
    whose message says what was wrong."""
    base, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (aiohttp.ClientSession(headers=auth) as s,
                s.request(method, base + path, json=body) as r):
        assert r.status == code
        st = await r.json()
    assert st["kind"] == "Status"
    assert text in st["message"]


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_agent_client_reads_logs_execs_and_reports_refusals(served):
    """AgentClient (what meshctl logs/exec and the metrics pipeline use) gets logs,
    runs commands, reads stats; a refusal is an AgentError with the agent's reason, a
    wrong token 401, and a dead address AgentUnreachable."""
    from control.agent.remote import AgentClient, AgentError, AgentUnreachable
    base, _ = served
    async with AgentClient(base, TOKEN) as agent:
        async def logged() -> bool:
            return b"line-2" in await agent.logs("default", "tools", "app")

        await wait_until(logged, what="the container's log")
        assert await agent.logs("default", "tools", "app", tail=1) == b"line-2\n"
        out = await agent.exec("default", "tools", "app", ["busybox", "echo", "hi"])
        assert (out.exit_code, out.output) == (0, "hi\n")
        assert (await agent.stats())["pods"][0]["podRef"]["name"] == "tools"
        assert [p["name"] for p in await agent.pods()] == ["tools"]
        with pytest.raises(AgentError) as err:
            await agent.logs("default", "tools", "nope")
        assert (err.value.code, err.value.reason) == (404, "NotFound")
    async with AgentClient(base, "wrong") as agent:
        with pytest.raises(AgentError) as err:
            await agent.pods()
        assert err.value.code == 401
    from support.net import free_port
    async with AgentClient(f"http://127.0.0.1:{free_port()}", TOKEN) as agent:
        with pytest.raises(AgentUnreachable):
            await agent.pods()


def test_endpoint_of_reads_the_nodes_advertised_agent_api():
    """The agent API URL comes from the Node's InternalIP and daemonEndpoints; a Node
    without them is a ValueError naming it."""
    from control.agent.remote import endpoint_of
    node = {"metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "Hostname", "address": "h"},
                                     {"type": "InternalIP", "address": "10.0.0.5"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}}
    assert endpoint_of(node) == "http://10.0.0.5:10250"
    with pytest.raises(ValueError, match="n1"):
        endpoint_of({"metadata": {"name": "n1"}, "status": {}})
