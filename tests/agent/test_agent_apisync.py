"""The agent against the real API server (in-process, SQLite store, HTTPS, a ``node``
token): Node registration and heartbeat, a bound Pod run and its Running/Ready status
and Events written back, deletion stopping it, an agent restart adopting it, graceful
deletion (the Pod stays Terminating until the agent has stopped it and deletes it with
grace 0, also after an agent restart in the middle of it).

Needs ``control.api`` (the API server) and ``control.client``; skipped with the reason
while the API server is not importable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agent_kit import HTTPD, RUNTIMES, container, http_get, pod, wait_until

from control.agent.agent import Agent
from control.agent.clock import SystemClock

api_main = pytest.importorskip("control.api.main", reason="control.api not available")
from control.api.auth import User  # noqa: E402
from control.client import errors  # noqa: E402
from control.client.config import ClientConfig  # noqa: E402
from control.client.rest import ApiClient  # noqa: E402

pytestmark = pytest.mark.timeout(90)
NODE_TOKEN = "node-token-for-agent-tests"


@pytest.fixture
async def apiserver(data_dir: Path, runtime):
    """The API server; the runtime's node name gets a node token."""
    cfg = api_main.ApiServerConfig(
        data_dir=data_dir, port=0, bookmark_interval=0.5,
        tokens={NODE_TOKEN: User(f"system:node:{runtime.node}", frozenset({"node"}))})
    server = api_main.ApiServer(cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _client(server, token: str) -> ApiClient:
    return ApiClient(ClientConfig(server=server.url, token=token, ca_file=str(server.ca_file)))


class Running:
    """An ApiSync + Agent pair running in the background, like ``meshctl agent``."""

    def __init__(self, server, runtime, host_ports, state: Path) -> None:
        from control.agent.apisync import ApiSync
        self.api = _client(server, NODE_TOKEN)
        self.sync = ApiSync(self.api, node=runtime.node, address="127.0.0.1",
                            runtime=runtime, data_dir=state, labels={"zone": "z1"},
                            heartbeat=0.3, agent_port=10250, resync=2.0)
        self.agent = Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime,
                           ports=host_ports, clock=SystemClock(), state_dir=state,
                           status_sink=self.sync.write_status,
                           event_sink=self.sync.record_event,
                           finalize_sink=self.sync.finalize_pod)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.sync.run(self.agent, self.stop))

    async def close(self, *, stop_pods: bool = False) -> None:
        self.stop.set()
        await self.task
        await self.agent.close(stop_pods=stop_pods)
        await self.api.close()


async def _pod_status(admin: ApiClient, name: str) -> dict:
    return (await admin.get("pods", name, namespace="default")).get("status") or {}


async def test_agent_registers_node_runs_bound_pod_and_reports_status(
        apiserver, runtime, host_ports, tmp_path):
    """The Node appears with capacity and heartbeats; a Pod bound to it becomes
    Running/Ready in the API with its portMappings and answers there; a Started Event
    is recorded; deleting the Pod stops and removes its containers."""
    admin = _client(apiserver, apiserver.admin_token)
    agent = Running(apiserver, runtime, host_ports, tmp_path / "agent")
    try:
        node = await wait_until(lambda: _get_or_none(admin, "nodes", runtime.node),
                                what="the Node")
        assert node["metadata"]["labels"]["zone"] == "z1"
        assert int(node["status"]["capacity"]["pods"]) == 110
        beats = agent.sync.heartbeats
        await wait_until(lambda: agent.sync.heartbeats >= beats + 2, what="heartbeats")
        node = await admin.get("nodes", runtime.node)
        ready = {c["type"]: c for c in node["status"]["conditions"]}["Ready"]
        assert ready["status"] == "True"

        web = pod("web", container("app", HTTPD, ports=[{"containerPort": 8080}]), grace=0)
        del web["metadata"]["uid"]
        web["spec"]["nodeName"] = runtime.node
        await admin.create("pods", web, namespace="default")

        async def ready_status() -> dict | None:
            st = await _pod_status(admin, "web")
            conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
            return st if st.get("phase") == "Running" and conds.get("Ready") == "True" \
                else None

        st = await wait_until(ready_status, timeout=30, what="web Running/Ready in the API")
        [mapping] = st["portMappings"]
        url = f"http://127.0.0.1:{mapping['hostPort']}/index.html"
        await wait_until(lambda: asyncio.to_thread(http_get, url), what="web serving")
        # Events are written by the recorder's sender tasks, after the status.
        async def started() -> bool:
            events = (await admin.list("events", namespace="default"))["items"]
            return any(e["reason"] == "Started" and e["involvedObject"]["name"] == "web"
                       for e in events)

        await wait_until(started, what="a Started Event for web")

        await admin.delete("pods", "web", namespace="default")
        await wait_until(lambda: _empty(runtime), what="web's containers removed")
    finally:
        await agent.close(stop_pods=True)
        await admin.close()


async def test_restarted_agent_adopts_the_pod_it_was_running(apiserver, runtime,
                                                             host_ports, tmp_path):
    """Stopping the agent leaves the Pod running; a new agent on the same node reports
    the same container (no duplicate, no restart)."""
    admin = _client(apiserver, apiserver.admin_token)
    first = Running(apiserver, runtime, host_ports, tmp_path / "agent")
    second = None
    try:
        web = pod("web", container("app", HTTPD, ports=[{"containerPort": 8080}]), grace=0)
        del web["metadata"]["uid"]
        web["spec"]["nodeName"] = runtime.node
        await admin.create("pods", web, namespace="default")

        async def container_id() -> str | None:
            cs = (await _pod_status(admin, "web")).get("containerStatuses") or []
            return cs[0]["containerID"] if cs and "running" in cs[0]["state"] else None

        cid = await wait_until(container_id, timeout=30, what="web running")
        await first.close()
        host_ports.release(next(iter({i.pod_uid for i in await runtime.list()})))
        second = Running(apiserver, runtime, host_ports, tmp_path / "agent")
        await wait_until(lambda: second.sync.heartbeats >= 2, what="second agent up")
        await asyncio.sleep(1.0)  # let it sync the Pod at least once
        assert await container_id() == cid
        infos = await runtime.list()
        assert [f"{runtime.name}://{i.id}" for i in infos] == [cid]
        st = await _pod_status(admin, "web")
        assert st["containerStatuses"][0]["restartCount"] == 0
    finally:
        if second is not None:
            await second.close(stop_pods=True)
        else:
            await first.close(stop_pods=True)
        await admin.close()


async def test_node_token_cannot_read_other_nodes_pods(apiserver, runtime):
    """The agent's credentials are scoped: listing all Pods is forbidden for it."""
    api = _client(apiserver, NODE_TOKEN)
    try:
        with pytest.raises(errors.ApiError) as err:
            await api.list("pods", namespace=None)
        assert err.value.code == 403
    finally:
        await api.close()


async def _get_or_none(api: ApiClient, res: str, name: str) -> dict | None:
    try:
        return await api.get(res, name)
    except errors.NotFound:
        return None


async def _empty(runtime) -> bool:
    return await runtime.list() == []


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_meshctl_agent_process_against_the_api_server(apiserver, runtime, spawn,
                                                            tmp_path, free_port):
    """``python -m control.agent.main --server ...`` as its own process: it registers
    the Node (advertising its agent API port) and runs a Pod bound to it until SIGTERM."""
    import signal

    from control.agent.runtime.process import ProcessRuntime
    from support.net import free_port as pick_port
    token_file = tmp_path / "node.token"
    token_file.write_text(NODE_TOKEN + "\n")
    api_port = pick_port()
    data = tmp_path / "data"
    proc = spawn.python(
        "-m", "control.agent.main", "--server", apiserver.url, "--api-token-file",
        str(token_file), "--ca-file", str(apiserver.ca_file), "--runtime", "process",
        "--node-name", runtime.node, "--data-dir", str(data), "--heartbeat", "0.5",
        "--port-range", f"{free_port}-{free_port + 50}", "--listen", f"127.0.0.1:{api_port}",
        "--stop-pods-on-exit", name="meshctl-agent")
    admin = _client(apiserver, apiserver.admin_token)
    try:
        node = await wait_until(lambda: _get_or_none(admin, "nodes", runtime.node),
                                timeout=30, what="the Node from the agent process")
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == api_port
        web = pod("web", container("app", HTTPD, ports=[{"containerPort": 8080}]), grace=0)
        del web["metadata"]["uid"]
        web["spec"]["nodeName"] = runtime.node
        await admin.create("pods", web, namespace="default")

        async def running() -> bool:
            return (await _pod_status(admin, "web")).get("phase") == "Running"

        await wait_until(running, timeout=30, what="web Running")
        agent_rt = ProcessRuntime(data / "process", node=runtime.node, cgroups=False)
        [info] = await agent_rt.list()
        assert info.state == "running"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert await agent_rt.list() == []  # --stop-pods-on-exit
    finally:
        await admin.close()
        leftover = ProcessRuntime(data / "process", node=runtime.node, cgroups=False)
        for i in await leftover.list():
            await leftover.stop(i.id, grace=0)
            await leftover.remove(i.id)


# Exits on SIGTERM after writing a mark, half a second later (an app draining); says
# when its handler is installed (a SIGTERM before that would kill the shell outright).
TERM_AWARE = ("trap 'sleep 0.5; echo drained > {mark}; exit 0' TERM; touch {mark}.armed; "
              "while true; do sleep 0.1; done")


async def _run_term_aware_web(admin, runtime, mark: Path) -> None:
    """Create Pod ``web`` bound to this node (grace 20 s), its app writing ``mark`` on
    SIGTERM; return once it runs and its SIGTERM handler is installed."""
    web = pod("web", container("app", TERM_AWARE.format(mark=mark)), grace=20)
    del web["metadata"]["uid"]
    web["spec"]["nodeName"] = runtime.node
    await admin.create("pods", web, namespace="default")
    await wait_until(lambda: _phase_is(admin, "web", "Running"), timeout=30,
                     what="web Running")
    await wait_until(lambda: Path(f"{mark}.armed").exists(), timeout=30,
                     what="the SIGTERM handler installed")


@pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)
async def test_graceful_delete_stops_the_pod_then_the_agent_finalizes_it(
        apiserver, runtime, host_ports, tmp_path):
    """DELETE marks the Pod (202, deletionGracePeriodSeconds from the spec); it stays
    readable while the agent sends SIGTERM and the app drains; once the container has
    exited the agent deletes the Pod with grace 0, so it is gone from the API and from
    the runtime, and the app ran its SIGTERM handler (not a SIGKILL)."""
    mark = tmp_path / "drained"
    admin = _client(apiserver, apiserver.admin_token)
    agent = Running(apiserver, runtime, host_ports, tmp_path / "agent")
    try:
        await _run_term_aware_web(admin, runtime, mark)
        marked = await admin.delete("pods", "web", namespace="default")
        assert marked["metadata"]["deletionGracePeriodSeconds"] == 20
        seen_terminating = (await admin.get("pods", "web", namespace="default"))
        assert seen_terminating["metadata"]["deletionTimestamp"]
        await wait_until(lambda: _gone(admin, "web"), timeout=30, what="web finalized")
        assert mark.read_text().strip() == "drained"
        assert await runtime.list() == []
    finally:
        await agent.close(stop_pods=True)
        await admin.close()


@pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)
async def test_agent_restarted_mid_termination_still_stops_and_finalizes(
        apiserver, runtime, host_ports, tmp_path):
    """A Pod marked for deletion while its agent was down: the next agent does not run
    it again, stops what is left of it and finalizes it."""
    mark = tmp_path / "drained"
    admin = _client(apiserver, apiserver.admin_token)
    first = Running(apiserver, runtime, host_ports, tmp_path / "agent")
    second = None
    try:
        await _run_term_aware_web(admin, runtime, mark)
        await first.close()  # containers keep running
        [info] = await runtime.list()
        host_ports.release(info.pod_uid)
        await admin.delete("pods", "web", namespace="default")
        second = Running(apiserver, runtime, host_ports, tmp_path / "agent")
        await wait_until(lambda: _gone(admin, "web"), timeout=30, what="web finalized")
        assert await runtime.list() == []
        assert mark.read_text().strip() == "drained"
    finally:
        await (second or first).close(stop_pods=True)
        await admin.close()


async def _phase_is(api: ApiClient, name: str, phase: str) -> bool:
    return (await _pod_status(api, name)).get("phase") == phase


async def _gone(api: ApiClient, name: str) -> bool:
    return await _get_or_none(api, "pods", name) is None
