"""A TrafficPolicy's degradation switch end to end: the real API server (in-process,
TLS, SQLite), a real meshproxy following the Service through discovery, a real
upstream. Patching ``spec.degrade`` through the API (the REST client's merge patch,
what ``meshctl patch --type merge`` sends) turns the fallback on in the proxy and off
again; the policy's auto rule trips on a failing upstream; a patch the schema refuses
is a 422 naming the field and the proxy keeps what it had. The merge rules themselves
are unit-tested in test_discovery_switches.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
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


async def test_supervisor_flips_a_policy_switch_in_every_worker(
        api: ApiHandle, backend: Upstream, client: ApiClient, tmp_path: Path, spawn) -> None:
    """With ``--workers 2`` the supervisor's ``POST /switches/{name}`` knows the switch
    the workers learnt from the TrafficPolicy (not only the file's switches): the flip
    reaches both workers, so every connection gets the fallback; flipped back, none."""
    from test_process import TOKEN, _get, _start

    from support.net import free_port

    await api.create_service("catalog")
    await api.put_endpoints("catalog", [backend.port])
    await client.create("trafficpolicies", POLICY)
    port, admin = free_port(), free_port()
    text = proxy_yaml(api, tmp_path).replace(
        "admin: {enabled: false}", f"admin: {{port: {admin}, token: {TOKEN}}}").replace(
        "name: out, port: 0,", f"name: out, port: {port},")
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    await _start(spawn, path, port, admin, "--workers", "2")
    base = f"http://127.0.0.1:{admin}"

    async def both_workers_have_it() -> bool:
        status, body = await _get(f"{base}/switches")
        if status != 200:
            return False
        return any(sw["name"] == SWITCH and len(sw.get("worker_states", ())) == 2
                   for sw in json.loads(body)["switches"])

    await until_async(both_workers_have_it, "the policy's switch in both workers")

    async def answers() -> set[str | None]:
        """The switch header of one request on each of 12 fresh connections (the
        kernel spreads them over both workers)."""
        seen = set()
        for _ in range(12):
            conn = await RawConn.open(port)
            try:
                await conn.send(b"GET / HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n")
                seen.add((await conn.read_reply()).headers.get("x-mesh-switch"))
            finally:
                await conn.close()
        return seen

    assert await answers() == {None}
    status, body = await _post_mode(f"{base}/switches/{SWITCH}", "on")
    assert status == 200, body
    await until_async(lambda: _equal(answers(), {SWITCH}), "the fallback from every worker")
    status, body = await _post_mode(f"{base}/switches/{SWITCH}", "off")
    assert status == 200, body
    await until_async(lambda: _equal(answers(), {None}), "normal answers again")
    status, _ = await _post_mode(f"{base}/switches/no-such-switch", "on")
    assert status == 404


async def _equal(value: Awaitable[object], want: object) -> bool:
    return await value == want


async def _post_mode(url: str, mode: str) -> tuple[int, bytes]:
    from test_process import TOKEN

    async with aiohttp.ClientSession() as http, http.post(url, json={"mode": mode},
                         headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        return resp.status, await resp.read()


async def until_async(check: Callable[[], Awaitable[bool]], what: str,
                      timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
