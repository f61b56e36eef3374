"""Sidecar injection: a Pod annotated ``mesh.io/inject: "true"`` gets a meshproxy that
fronts its app port; traffic to the Pod's published port goes through the proxy and
shows in the proxy's metrics; the sidecar lives and dies with the Pod."""

from __future__ import annotations

import asyncio
import re

import pytest
from agent_kit import DOCKER_MARK, HTTPD, container, http_get, pod, wait_until

from control.agent import sidecar
from control.agent.agent import Agent
from control.agent.clock import SystemClock
from control.agent.spec import Hook, PodSpecError, parse_pod

pytestmark = pytest.mark.timeout(60)


def _meshed(name: str = "shop", **annotations: str) -> dict:
    p = pod(name, container("app", HTTPD, ports=[{"containerPort": 8080, "name": "http"}]),
            grace=1)
    p["metadata"]["annotations"] = {sidecar.INJECT: "true", **annotations}
    return p


def _agent(runtime, host_ports, tmp_path, statuses: dict) -> Agent:
    async def sink(obj, status):
        statuses[obj["metadata"]["name"]] = status

    return Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime, ports=host_ports,
                 clock=SystemClock(), state_dir=tmp_path / "agent", status_sink=sink)


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_meshed_pod_is_served_through_its_sidecar_and_counted(runtime, host_ports,
                                                                    tmp_path):
    """The Pod's published port for the app is the sidecar's inbound listener: a request
    there reaches the app and is counted in the sidecar's /metrics; the Pod is Ready
    only with its sidecar ready; deleting the Pod stops both containers."""
    statuses: dict[str, dict] = {}
    agent = _agent(runtime, host_ports, tmp_path, statuses)
    try:
        await agent.set_pods([_meshed()])

        def ready() -> dict | None:
            st = statuses.get("shop")
            conds = {c["type"]: c["status"] for c in (st or {}).get("conditions", [])}
            return st if conds.get("Ready") == "True" else None

        st = await wait_until(ready, timeout=40, what="the meshed Pod Ready")
        assert [c["name"] for c in st["containerStatuses"]] == ["app", sidecar.NAME]
        mapping = next(m for m in st["portMappings"] if m["containerPort"] == 8080)
        assert mapping["sidecar"] is True
        assert mapping["hostPort"] != mapping["appHostPort"]
        admin = next(m for m in st["portMappings"] if m.get("name") == sidecar.ADMIN)

        via_proxy = f"http://127.0.0.1:{mapping['hostPort']}/index.html"
        assert await asyncio.to_thread(http_get, via_proxy) == (200, b"hello\n")
        metrics = (await asyncio.to_thread(
            http_get, f"http://127.0.0.1:{admin['hostPort']}/metrics"))[1].decode()
        line = re.search(r'meshproxy_downstream_requests_total\{code_class="2xx",'
                         r'listener="inbound",route="app"\} (\S+)', metrics)
        assert line is not None
        assert float(line.group(1)) >= 1

        await agent.set_pods([])
        await wait_until(lambda: _empty(runtime), what="app and sidecar removed")
    finally:
        await agent.close(stop_pods=True)


@pytest.mark.parametrize("runtime", [pytest.param("docker", marks=DOCKER_MARK)],
                         indirect=True)
async def test_sidecar_on_docker_node_is_refused_plainly_and_app_still_runs(
        runtime, host_ports, tmp_path):
    """On the docker runtime the sidecar cannot run (no meshproxy image): its state says
    so (CreateContainerError naming the process runtime), the app container runs."""
    statuses: dict[str, dict] = {}
    agent = _agent(runtime, host_ports, tmp_path, statuses)
    try:
        await agent.set_pods([_meshed()])

        def reported() -> dict | None:
            st = statuses.get("shop")
            if not st:
                return None
            by = {c["name"]: c for c in st["containerStatuses"]}
            waiting = by[sidecar.NAME]["state"].get("waiting", {})
            return by if "running" in by["app"]["state"] and \
                waiting.get("reason") == "CreateContainerError" else None

        by = await wait_until(reported, what="app running, sidecar refused")
        assert "process runtime" in by[sidecar.NAME]["state"]["waiting"]["message"]
    finally:
        await agent.close(stop_pods=True)


def test_injection_adds_the_sidecar_only_when_annotated():
    """Not annotated: unchanged. Annotated: one more container with the inbound and
    admin ports and a readiness probe on the admin /ready."""
    plain = parse_pod(pod("p", container("app", "true", ports=[{"containerPort": 80}])))
    assert sidecar.inject(plain) is plain
    meshed = sidecar.inject(parse_pod(_meshed()))
    side = meshed.container(sidecar.NAME)
    assert {p.name for p in side.ports} == {sidecar.INBOUND, sidecar.ADMIN}
    assert side.readiness is not None
    assert side.readiness.http_get == ("/ready", sidecar.ADMIN)
    assert sidecar.target_port(meshed) == ("app", 8080)
    named = sidecar.inject(parse_pod(_meshed(**{sidecar.INBOUND_PORT: "http"})))
    assert sidecar.target_port(named) == ("app", 8080)


def test_meshed_app_containers_get_the_default_drain_before_sigterm():
    """Injection gives every app container without a preStop hook a preStop sleep of
    DEFAULT_DRAIN (5 s) with the default 30 s grace; the sidecar gets none (it must
    serve through the drain)."""
    raw = _meshed()
    raw["spec"]["terminationGracePeriodSeconds"] = 30
    meshed = sidecar.inject(parse_pod(raw))
    assert sidecar.DEFAULT_DRAIN == 5.0
    assert meshed.container("app").pre_stop == Hook(sleep_seconds=5.0)
    assert meshed.container(sidecar.NAME).pre_stop is None


@pytest.mark.parametrize(("grace", "annotation", "expected"), [
    (4, None, 2.0),  # capped at half the grace: the app needs time to shut down too
    (30, "12", 12.0),  # the annotation says how long
    (30, "0", None),  # 0 turns the drain off
])
def test_drain_follows_the_grace_and_the_annotation(grace, annotation, expected):
    raw = _meshed(**({sidecar.DRAIN: annotation} if annotation is not None else {}))
    raw["spec"]["terminationGracePeriodSeconds"] = grace
    hook = sidecar.inject(parse_pod(raw)).container("app").pre_stop
    assert (hook.sleep_seconds if hook else None) == expected


def test_own_prestop_hook_replaces_the_drain_and_bad_drain_is_refused():
    """An app's own preStop is kept as it is; a drain annotation that is not a
    non-negative number is refused naming the annotation."""
    raw = _meshed()
    raw["spec"]["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": 1}}}
    assert sidecar.inject(parse_pod(raw)).container("app").pre_stop == \
        Hook(sleep_seconds=1.0)
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(PodSpecError, match=r"mesh\.io/drain-seconds"):
            sidecar.inject(parse_pod(_meshed(**{sidecar.DRAIN: bad})))


@pytest.mark.parametrize(("annotations", "ports", "match"), [
    ({}, [], "needs a declared container port"),
    ({sidecar.INBOUND_PORT: "9999"}, [{"containerPort": 80}], "not a declared"),
])
def test_injection_refuses_pods_it_cannot_front(annotations, ports, match):
    p = pod("p", container("app", "true", ports=ports))
    p["metadata"]["annotations"] = {sidecar.INJECT: "true", **annotations}
    with pytest.raises(PodSpecError, match=match):
        sidecar.inject(parse_pod(p))


def test_proxy_config_is_valid_for_meshproxy():
    """The generated config passes meshproxy's own validation."""
    import yaml

    from meshproxy.config.load import parse_config
    loaded = parse_config(yaml.safe_dump(sidecar.proxy_config(inbound=15006, admin=15000,
                                                              app=8080)))
    [listener] = loaded.config.listeners
    assert listener.port == 15006


async def _empty(runtime) -> bool:
    return await runtime.list() == []
