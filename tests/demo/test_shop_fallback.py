"""The demo frontend shows when a degradation switch answered for recommendations: a real
meshproxy sits between the frontend and the recommendations service, with the service
switch the demo's TrafficPolicy declares (its static fallback taken from
``config/demo/policy.yaml``). Switch on: the page carries the fallback, marked with the
switch's name; switch off: the service's own answer, unmarked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from control.demo.shop import build_app
from meshproxy.config import parse_config
from meshproxy.proxy import Proxy
from meshproxy.resilience.degrade import StaticResponse, SwitchBehaviour
from meshproxy.schema import parse

ROOT = Path(__file__).resolve().parents[2]


def demo_degrade() -> dict:
    """The recommendations TrafficPolicy's ``degrade`` section, as the demo ships it."""
    docs = yaml.safe_load_all((ROOT / "config" / "demo" / "policy.yaml").read_text())
    (spec,) = [d["spec"] for d in docs if d["spec"]["service"] == "recommendations"]
    return spec["degrade"]


@pytest.fixture
async def shop(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TestServer, Proxy]]:
    """The shop's services, the frontend calling recommendations through a meshproxy
    whose switch ``default.recommendations`` is the demo's, set to ``off``."""
    servers: list[TestServer] = []
    monkeypatch.setenv("HOSTNAME", "pod-under-test")
    for role in ("payment", "catalog", "recommendations", "cart"):
        srv = TestServer(build_app(role), host="127.0.0.1")
        await srv.start_server()
        servers.append(srv)
        monkeypatch.setenv(f"UPSTREAM_{role.upper()}", str(srv.make_url("")).rstrip("/"))
    recs = servers[2]
    switch = {**demo_degrade(), "name": "default.recommendations", "level": "service",
              "target": "recommendations", "mode": "off"}
    config = {"admin": {"enabled": False},
              "listeners": [{"protocol": "http", "name": "out", "port": 0,
                             "routes": [{"name": "recs", "cluster": "recommendations"}]}],
              "clusters": [{"name": "recommendations",
                            "endpoints": [f"127.0.0.1:{recs.port}"]}],
              "resilience": {"switches": [switch]}}
    proxy = Proxy(parse_config(yaml.safe_dump(config)))
    await proxy.start()
    monkeypatch.setenv("UPSTREAM_RECOMMENDATIONS",
                       f"http://127.0.0.1:{proxy.listeners['out'].port}")
    frontend = TestServer(build_app("frontend"), host="127.0.0.1")
    await frontend.start_server()
    try:
        yield frontend, proxy
    finally:
        await frontend.close()
        await proxy.close()
        for srv in reversed(servers):
            await srv.close()


async def page(frontend: TestServer) -> dict:
    async with ClientSession() as s, s.get(frontend.make_url("/")) as r:
        assert r.status == 200
        return await r.json()


async def test_page_marks_the_switch_fallback_and_not_the_real_answer(shop) -> None:
    frontend, proxy = shop
    assert (await page(frontend))["recommendations"]["recommended"] == ["pot-03"]
    assert "fallback" not in (await page(frontend))["recommendations"]

    proxy.resilience.switches.flip("default.recommendations", "on")
    body = await page(frontend)
    assert body["recommendations"] == {"recommended": [],
                                       "fallback": "default.recommendations"}
    assert body["catalog"]["items"]  # the core of the page is unaffected

    proxy.resilience.switches.flip("default.recommendations", "off")
    assert "fallback" not in (await page(frontend))["recommendations"]


async def test_demo_switch_trips_by_itself_when_recommendations_get_slow(shop) -> None:
    """In ``auto`` the demo's rule (half of at least 10 calls slower than 500 ms) trips
    once recommendations answer in 600 ms: the next page gets the fallback at once."""
    frontend, proxy = shop
    proxy.resilience.switches.flip("default.recommendations", "auto")
    recs_url = str(proxy.config.clusters[0].endpoints[0].address)
    async with ClientSession() as s, s.post(f"http://{recs_url}/chaos",
                                             json={"delay_ms": 600}) as r:
        assert r.status == 200
    await asyncio.gather(*(page(frontend) for _ in range(10)))
    assert proxy.resilience.switches.get("default.recommendations").state == "tripped"
    body = await page(frontend)
    assert body["recommendations"] == {"recommended": [],
                                       "fallback": "default.recommendations"}


def test_demo_policy_degrade_section_validates_as_a_slow_call_switch() -> None:
    """The demo's switch validates with the proxy's schema, trips automatically on the
    slow-call ratio and answers a static, JSON fallback."""
    b = parse(demo_degrade(), SwitchBehaviour)
    assert b.mode == "auto"
    assert b.auto is not None
    assert b.auto.metric == "slow_ratio"
    assert isinstance(b.action, StaticResponse)
    assert b.action.headers.get("content-type") == "application/json"

