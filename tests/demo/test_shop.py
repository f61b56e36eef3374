"""The demo shop's services answer as the quickstart says: the frontend composes
catalog, cart (which calls payment) and recommendations; a failing recommendations
service degrades the page instead of breaking it; core failures are a 503; the chaos
knob validates its input; the load generator counts what it got."""

from __future__ import annotations

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from control.demo.shop import build_app, loadgen


@pytest.fixture
async def shop(monkeypatch: pytest.MonkeyPatch):
    servers: dict[str, TestServer] = {}
    monkeypatch.setenv("HOSTNAME", "pod-under-test")
    for role in ("payment", "catalog", "recommendations", "cart", "frontend"):
        srv = TestServer(build_app(role), host="127.0.0.1")
        await srv.start_server()
        servers[role] = srv
        monkeypatch.setenv(f"UPSTREAM_{role.upper()}", str(srv.make_url("")).rstrip("/"))
    try:
        yield servers
    finally:
        for srv in reversed(servers.values()):
            await srv.close()


async def test_frontend_composes_every_service(shop) -> None:
    async with ClientSession() as s, s.get(shop["frontend"].make_url("/")) as r:
        body = await r.json()
    assert r.status == 200
    assert body["served_by"] == "pod-under-test"
    assert [i["sku"] for i in body["catalog"]["items"]] == ["tea-01", "mug-02", "pot-03"]
    assert body["cart"]["total"] == 13.5
    assert body["cart"]["payment"]["fee"] == round(13.5 * 0.029 + 0.3, 2)
    assert body["recommendations"]["recommended"] == ["pot-03"]


async def test_failing_recommendations_degrade_the_page(shop) -> None:
    async with ClientSession() as s:
        async with s.post(shop["recommendations"].make_url("/chaos"),
                          json={"error_rate": 1.0}) as r:
            assert r.status == 200
        async with s.get(shop["frontend"].make_url("/")) as r:
            body = await r.json()
    assert r.status == 200
    assert body["recommendations"] == {"degraded": True, "status": 500}


async def test_core_failure_is_a_503(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    await shop["payment"].close()  # cart cannot quote: the page is broken
    async with ClientSession() as s, s.get(shop["frontend"].make_url("/")) as r:
        body = await r.json()
    assert r.status == 503
    assert body["error"] == "core service unavailable"


@pytest.mark.parametrize(("payload", "status"), [
    ({"delay_ms": -1}, 422), ({"error_rate": 2}, 422), ("not json", 400)])
async def test_chaos_refuses_bad_input(shop, payload, status) -> None:
    async with ClientSession() as s:
        kw = {"data": payload} if isinstance(payload, str) else {"json": payload}
        async with s.post(shop["recommendations"].make_url("/chaos"), **kw) as r:
            assert r.status == status
        async with s.get(shop["recommendations"].make_url("/recs")) as r:
            assert r.status == 200  # the refused request changed nothing


async def test_loadgen_counts_answers(shop) -> None:
    counts = await loadgen(str(shop["frontend"].make_url("/")), 50, duration=0.5)
    assert counts.get("200", 0) >= 10
    assert set(counts) == {"200"}
