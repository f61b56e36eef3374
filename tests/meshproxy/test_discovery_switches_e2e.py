"""A TrafficPolicy's degradation switch end to end: the real API server (in-process,
TLS, SQLite), a real meshproxy following the Service through discovery, a real
upstream. Patching ``spec.degrade`` through the API (the REST client's merge patch,
what ``meshctl patch --type merge`` sends) turns the fallback on in the proxy and off
again; the policy's auto rule trips on a failing upstream; a patch the schema refuses
is a 422 naming the field and the proxy keeps what it had. The merge rules themselves
are unit-tested in test_discovery_switches.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rawclient import RawConn
from test_discovery import ApiHandle, proxy_yaml, start_proxy, until
from upstreams import Upstream

from control.client import errors
from control.client.config import ClientConfig
from control.client.rest import ApiClient
from meshproxy.discovery import DiscoveringProxy

pytestmark = pytest.mark.timeout(90)

SWITCH = "default.catalog"
FALLBACK = '{"recommended": [], "fallback": true}'
POLICY = {
    "apiVersion": "mesh.io/v1alpha1", "kind": "TrafficPolicy",
    "metadata": {"name": "catalog-policy"},
    "spec": {"service": "catalog", "degrade": {
        "mode": "off",
        "auto": {"metric": "error_ratio", "threshold": 0.5, "minimum_requests": 5,
                 "window": 30, "cooldown": 600},
        "action": {"kind": "static", "status": 200, "body": FALLBACK,
                   "headers": {"content-type": "application/json"}}}}}


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[ApiHandle]:
    handle = ApiHandle(data_dir)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def backend() -> AsyncIterator[Upstream]:
    up = await Upstream("b0").start()
    yield up
    await up.stop()


@pytest.fixture
async def client(api: ApiHandle) -> AsyncIterator[ApiClient]:
    assert api.server is not None
    async with ApiClient(ClientConfig(server=api.server.url, token=api.server.admin_token,
                                      ca_file=str(api.server.ca_file))) as c:
        yield c


@pytest.fixture
async def proxy(api: ApiHandle, backend: Upstream, client: ApiClient,
                tmp_path: Path) -> AsyncIterator[DiscoveringProxy]:
    """The Service with the backend as its endpoint, the policy, and a proxy following
    them that has applied the policy's switch."""
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [backend.port])
    await client.create("trafficpolicies", POLICY)
    p = await start_proxy(proxy_yaml(api, tmp_path))
    try:
        await until(lambda: len(p.resilience.switches) == 1, "the policy's switch")
        await until(lambda: [e.port for e in p.clusters["catalog"].endpoints]
                    == [backend.port], "endpoints")
        yield p
    finally:
        await p.close()


async def get(proxy: DiscoveringProxy) -> tuple[int, str | None, bytes]:
    """(status, x-mesh-switch, body) of one request through the proxy."""
    conn = await RawConn.open(proxy.listeners["out"].port)
    try:
        await conn.send(b"GET /echo HTTP/1.1\r\nHost: catalog\r\n\r\n")
        reply = await conn.read_reply()
    finally:
        await conn.close()
    return reply.status, reply.headers.get("x-mesh-switch"), reply.body


async def until_answer(proxy: DiscoveringProxy, *, fallback: bool, what: str) -> None:
    """Wait until three requests in a row are (or are not) answered by the fallback."""
    streak = 0

    async def check() -> bool:
        nonlocal streak
        status, switch, body = await get(proxy)
        ok = ((status, switch, body) == (200, SWITCH, FALLBACK.encode()) if fallback
              else (status, switch) == (200, None) and b'"method"' in body)
        streak = streak + 1 if ok else 0
        return streak >= 3

    loop_end = proxy.loop.time() + 20
    while not await check():
        assert proxy.loop.time() < loop_end, f"timed out waiting for {what}"


async def merge_patch(client: ApiClient, degrade: dict) -> None:
    await client.patch("trafficpolicies", "catalog-policy", {"spec": {"degrade": degrade}})


async def test_flipping_the_switch_through_the_api_serves_the_fallback_then_service(
        proxy: DiscoveringProxy, client: ApiClient, backend: Upstream) -> None:
    """mode off: the upstream answers. Patch mode on: the proxy answers the policy's
    static fallback (named by ``x-mesh-switch``) without calling the upstream. Patch
    mode off: the upstream answers again. The switch is a service switch on the
    followed cluster, its mode from the policy."""
    await until_answer(proxy, fallback=False, what="normal service")
    (status,) = proxy.resilience.switches.list()
    assert (status.name, status.level, status.target) == (SWITCH, "service", "catalog")

    await merge_patch(client, {"mode": "on"})
    await until_answer(proxy, fallback=True, what="the fallback after mode on")
    served = len(backend.requests)
    assert (await get(proxy))[1] == SWITCH
    assert len(backend.requests) == served  # degraded: the upstream is not called

    await merge_patch(client, {"mode": "off"})
    await until_answer(proxy, fallback=False, what="normal service after mode off")
    assert len(backend.requests) > served


async def test_policy_auto_rule_trips_on_a_failing_upstream(
        proxy: DiscoveringProxy, client: ApiClient, backend: Upstream) -> None:
    """Patched to ``auto``, the policy's error-ratio rule (5 requests, half failing)
    trips in the proxy when the upstream answers 500s, and the fallback is served."""
    await merge_patch(client, {"mode": "auto"})
    await until(lambda: proxy.resilience.switches.get(SWITCH).mode == "auto", "mode auto")
    backend.status_override = 500
    for _ in range(5):
        status, switch, _ = await get(proxy)
        assert (status, switch) == (500, None)  # judged, not yet tripped
    assert proxy.resilience.switches.get(SWITCH).state == "tripped"
    assert await get(proxy) == (200, SWITCH, FALLBACK.encode())


async def test_admin_flip_is_local_until_the_control_plane_declares_again(
        proxy: DiscoveringProxy, client: ApiClient) -> None:
    """An admin-API flip on this proxy (``POST /switches/{name}``) holds while the
    policy's switch is unchanged, including across an unrelated policy change; when
    the policy changes the switch, the declared state applies."""
    proxy.resilience.switches.flip(SWITCH, "on", source="admin")
    await until_answer(proxy, fallback=True, what="the admin flip")
    await client.patch("trafficpolicies", "catalog-policy",
                       {"spec": {"route": {"priority": "low"}}})
    await until(lambda: proxy.config.listeners[0].routes[0].priority == "low",
                "the unrelated change applied")
    assert proxy.resilience.switches.get(SWITCH).mode_source == "admin"
    assert (await get(proxy))[1] == SWITCH
    await merge_patch(client, {"auto": {"minimum_requests": 50}})
    await until_answer(proxy, fallback=False, what="the declared mode off again")
    assert proxy.resilience.switches.get(SWITCH).mode_source == "config"


async def test_invalid_degrade_patch_is_refused_naming_the_field_and_changes_nothing(
        proxy: DiscoveringProxy, client: ApiClient, api: ApiHandle) -> None:
    """The API server validates the patched policy with the proxy's schema: a 422 whose
    cause names ``spec.degrade.action.status``; the stored policy and the
    proxy's switch stay as they were."""
    before = await client.get("trafficpolicies", "catalog-policy")
    with pytest.raises(errors.Invalid) as ei:
        await merge_patch(client, {"action": {"kind": "static", "status": 99}})
    assert ei.value.code == 422
    assert [c.get("field") for c in ei.value.causes] == ["spec.degrade.action.status"]
    assert await client.get("trafficpolicies", "catalog-policy") == before
    assert json.loads(proxy.resilience.switches.get(SWITCH).config.action.body) \
        == json.loads(FALLBACK)
