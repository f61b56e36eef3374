"""The agent's pod manager (agent.py) fed with desired Pod sets, on both runtimes:
statuses are published, removed Pods are terminated, orphans are swept, invalid Pods
are reported without stopping the others, and a new agent adopts running Pods."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from agent_kit import HTTPD, RUNTIMES, container, http_get, pod, wait_until

from control.agent.agent import Agent
from control.agent.clock import SystemClock
from control.agent.pod_worker import PodWorker
from control.agent.restart import BackOff
from control.agent.spec import parse_pod

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """Collects what the agent publishes (the API-server writer's stand-in)."""

    def __init__(self) -> None:
        self.statuses: dict[str, dict] = {}
        self.events: list[tuple[str, str, str, str]] = []

    async def status(self, obj: dict, status: dict) -> None:
        self.statuses[obj["metadata"]["name"]] = status

    async def event(self, obj: dict, kind: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], kind, reason, message))


def _agent(runtime, host_ports, tmp_path: Path, rec: Recorder) -> Agent:
    return Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime, ports=host_ports,
                 clock=SystemClock(), state_dir=tmp_path / "agent", status_sink=rec.status,
                 event_sink=rec.event)


def _web(name: str, uid: str | None = None) -> dict:
    return pod(name, container("app", HTTPD, ports=[{"containerPort": 8080}]), uid=uid,
               grace=0)


async def test_desired_pods_run_and_removed_pods_are_terminated(runtime, host_ports,
                                                                tmp_path):
    """A Pod in the set runs and its Running/Ready status is published; taking it out of
    the set stops and removes its containers and frees its port."""
    rec = Recorder()
    agent = _agent(runtime, host_ports, tmp_path, rec)
    try:
        web = _web("web")
        await agent.set_pods([web])
        st = await wait_until(lambda: _ready(rec, "web"), what="web Ready")
        url = f"http://127.0.0.1:{st['portMappings'][0]['hostPort']}/index.html"
        await wait_until(lambda: asyncio.to_thread(http_get, url), what="web serving")
        assert any(e[2] == "Started" for e in rec.events)
        await agent.set_pods([])
        await wait_until(lambda: _empty(runtime), what="web's containers removed")
        await wait_until(lambda: host_ports.held(web["metadata"]["uid"]) == [],
                         what="web's host port released")
        assert rec.statuses["web"]["containerStatuses"][0]["ready"] is False
    finally:
        await agent.close(stop_pods=True)


async def test_orphans_are_removed_and_running_pods_adopted_after_restart(
        runtime, host_ports, clock, tmp_path):
    """A new agent (restart) keeps the container of a Pod still desired (same id) and
    removes the container of a Pod that is not (an orphan)."""
    keep, gone = _web("keep", uid=str(uuid.uuid4())), _web("gone")
    for p in (keep, gone):  # what a previous agent left running
        w = PodWorker(parse_pod(p), runtime=runtime, ports=host_ports, node=runtime.node,
                      node_ip="127.0.0.1", clock=clock, backoff=BackOff(clock),
                      state_dir=tmp_path / "agent")
        await w.sync()
    before = {i.pod_uid: i.id for i in await runtime.list()}
    assert len(before) == 2
    rec = Recorder()
    agent = _agent(runtime, host_ports, tmp_path, rec)
    try:
        await agent.set_pods([keep])
        st = await wait_until(lambda: _ready(rec, "keep"), what="keep Ready")
        after = await runtime.list()
        assert [i.id for i in after] == [before[keep["metadata"]["uid"]]]
        assert st["containerStatuses"][0]["restartCount"] == 0
    finally:
        await agent.close(stop_pods=True)
    assert await runtime.list() == []


async def test_invalid_pod_is_reported_and_others_still_run(runtime, host_ports, tmp_path):
    """A Pod the agent cannot parse gets a Failed status naming the field and a Warning
    event, once; the valid Pod beside it runs."""
    rec = Recorder()
    agent = _agent(runtime, host_ports, tmp_path, rec)
    bad = pod("bad", {"name": "app", "image": "x", "ports": [{"containerPort": 0}]})
    good = _web("good")
    try:
        await agent.set_pods([bad, good])
        await agent.set_pods([bad, good])  # reported once, not per pass
        await wait_until(lambda: _ready(rec, "good"), what="good Ready")
        assert rec.statuses["bad"]["phase"] == "Failed"
        assert "spec.containers[0].ports[0].containerPort" in rec.statuses["bad"]["message"]
        assert [e[2] for e in rec.events if e[0] == "bad"] == ["FailedCreate"]
    finally:
        await agent.close(stop_pods=True)


async def test_closing_without_stop_pods_leaves_containers_for_the_next_agent(
        runtime, host_ports, tmp_path):
    """close() without stop_pods keeps the containers running (a kubelet restart)."""
    rec = Recorder()
    agent = _agent(runtime, host_ports, tmp_path, rec)
    web = _web("web")
    await agent.set_pods([web])
    await wait_until(lambda: _ready(rec, "web"), what="web Ready")
    await agent.close()
    [info] = await runtime.list()
    assert info.state == "running"
    agent2 = _agent(runtime, host_ports, tmp_path, Recorder())
    await agent2.set_pods([web])
    await agent2.close(stop_pods=True)
    assert await runtime.list() == []


def _ready(rec: Recorder, name: str) -> dict | None:
    st = rec.statuses.get(name)
    if st and {c["type"]: c["status"] for c in st["conditions"]}.get("Ready") == "True":
        return st
    return None


async def _empty(runtime) -> bool:
    return await runtime.list() == []


async def test_changed_spec_recreates_the_pods_containers(runtime, host_ports, tmp_path):
    """Containers cannot change in place: the same Pod (uid) with a new spec has its old
    container stopped and, once it is gone, a new one started from the new spec, with
    its own host port still held (the old incarnation's release does not take it)."""
    rec = Recorder()
    agent = _agent(runtime, host_ports, tmp_path, rec)
    uid = str(uuid.uuid4())
    ports = [{"containerPort": 8080}]
    v1 = pod("web", container("app", "echo v1; while true; do busybox sleep 0.2; done",
                              ports=ports), uid=uid, grace=1)
    v2 = pod("web", container("app", "echo v2; while true; do busybox sleep 0.2; done",
                              ports=ports), uid=uid, grace=1)
    try:
        await agent.set_pods([v1])
        [first] = await wait_until(lambda: _running(runtime), what="v1 running")
        await agent.set_pods([v2])

        async def replaced():
            infos = await _running(runtime)
            return infos if infos and infos[0].id != first.id else None

        [second] = await wait_until(replaced, what="v2 replacing v1")
        await wait_until(lambda: _logged(runtime, second.id, b"v2"), what="v2's output")
        assert len(host_ports.held(uid)) == 1  # the new incarnation keeps a host port
        assert second.ports[0].host_port in host_ports.held(uid)
    finally:
        await agent.close(stop_pods=True)
    assert await runtime.list() == []


async def _running(runtime) -> list:
    infos = await runtime.list()
    return [i for i in infos if i.state == "running"] if len(infos) == 1 else []


async def _logged(runtime, cid: str, needle: bytes) -> bool:
    return needle in await runtime.logs(cid)


@pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)
async def test_marked_pod_is_stopped_then_finalized_once_and_a_failure_retried(
        runtime, host_ports, tmp_path):
    """A Pod listed with a deletionTimestamp is stopped (containers removed) and then
    handed to the finalize sink exactly once, however often the same set is given
    again; when the sink says it failed, the next desired set tries again."""
    rec = Recorder()
    finals: list[str] = []
    answers = [False, True]

    async def finalize(obj: dict) -> bool:
        finals.append(obj["metadata"]["name"])
        return answers.pop(0) if answers else True

    agent = Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime, ports=host_ports,
                  clock=SystemClock(), state_dir=tmp_path / "agent", status_sink=rec.status,
                  event_sink=rec.event, finalize_sink=finalize)
    try:
        web = _web("web")
        await agent.set_pods([web])
        await wait_until(lambda: _ready(rec, "web"), what="web Ready")
        marked = {**web, "metadata": {**web["metadata"],
                                      "deletionTimestamp": "2026-01-01T00:00:30Z",
                                      "deletionGracePeriodSeconds": 30}}
        await agent.set_pods([marked])
        await wait_until(lambda: finals == ["web"], what="the first (failing) finalize")
        assert await runtime.list() == []
        await agent.set_pods([marked])  # the failure is retried with the next set
        await wait_until(lambda: finals == ["web", "web"], what="the retried finalize")
        for _ in range(3):
            await agent.set_pods([marked])  # still listed until the delete's event
        await asyncio.sleep(0.5)
        assert finals == ["web", "web"]
        assert agent.workers() == []
    finally:
        await agent.close(stop_pods=True)


@pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)
async def test_deleting_again_with_a_shorter_grace_shortens_the_termination(
        runtime, host_ports, tmp_path):
    """A Pod marked for deletion with 600 s of grace and held by a 600 s preStop sleep
    is listed again with deletionGracePeriodSeconds 1 (a later ``delete --now``): the
    agent's termination takes the shorter grace, so the Pod is stopped and finalized
    within seconds instead of ten minutes."""
    finals: list[str] = []

    async def finalize(obj: dict) -> bool:
        finals.append(obj["metadata"]["name"])
        return True

    rec = Recorder()
    agent = Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime, ports=host_ports,
                  clock=SystemClock(), state_dir=tmp_path / "agent", status_sink=rec.status,
                  event_sink=rec.event, finalize_sink=finalize)
    try:
        web = pod("web", container("app", HTTPD, ports=[{"containerPort": 8080}],
                                   lifecycle={"preStop": {"sleep": {"seconds": 600}}}),
                  grace=600)
        await agent.set_pods([web])
        await wait_until(lambda: _ready(rec, "web"), what="web Ready")
        await _delete_then_shorten(agent, web, runtime, finals)
    finally:
        await agent.close(stop_pods=True)


async def _delete_then_shorten(agent: Agent, web: dict, runtime, finals: list[str]) -> None:
    """Mark ``web`` deleted with 600 s of grace (its 600 s preStop sleep holds the
    termination), then again with 1 s: it must be stopped and finalized within seconds."""

    def marked(seconds: int) -> dict:
        return {**web, "metadata": {**web["metadata"],
                                    "deletionTimestamp": "2026-01-01T00:10:00Z",
                                    "deletionGracePeriodSeconds": seconds}}

    await agent.set_pods([marked(600)])
    await asyncio.sleep(1.0)  # inside the preStop sleep
    assert finals == []
    assert await runtime.list() != []
    await agent.set_pods([marked(1)])
    await wait_until(lambda: finals == ["web"], timeout=30, what="the finalize")
    assert await runtime.list() == []


@pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)
async def test_a_shorter_grace_also_shortens_a_termination_resumed_after_a_restart(
        runtime, host_ports, tmp_path):
    """The agent stops while a Pod with 600 s of grace and a 600 s preStop sleep is
    running; the Pod is marked for deletion (600 s) before a new agent starts, which
    stops what is left of it. A later delete with 1 s of grace shortens that
    termination too: the Pod is stopped and finalized within seconds."""
    finals: list[str] = []

    async def finalize(obj: dict) -> bool:
        finals.append(obj["metadata"]["name"])
        return True

    def make_agent() -> Agent:
        rec = Recorder()
        return Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime,
                     ports=host_ports, clock=SystemClock(), state_dir=tmp_path / "agent",
                     status_sink=rec.status, event_sink=rec.event, finalize_sink=finalize)

    web = pod("web", container("app", HTTPD, ports=[{"containerPort": 8080}],
                               lifecycle={"preStop": {"sleep": {"seconds": 600}}}),
              grace=600)
    first = make_agent()
    second = None
    try:
        await first.set_pods([web])
        await wait_until(lambda: _running(runtime), what="web running")
        await first.close()  # the containers keep running
        host_ports.release(web["metadata"]["uid"])  # a new agent process starts with none
        second = make_agent()
        await _delete_then_shorten(second, web, runtime, finals)
    finally:
        await (second or first).close(stop_pods=True)
