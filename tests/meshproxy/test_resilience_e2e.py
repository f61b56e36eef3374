"""Resilience end to end: real backends, the proxy in between (issue 5).

Breakers open and recover, bad endpoints are ejected and readmitted, limits hold under
concurrent load, switches trip on slow calls and serve their fallback or flip through
the admin API and the file, and state that did not change survives a reload.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from load_kit import by_upstream, eventually, fire, listener_port
from proxy_kit import http_config
from rawclient import request

from meshproxy.admin import AdminServer, ProxySource
from meshproxy.config import AdminConfig, load_config
from meshproxy.proxy import Proxy

TOKEN = "resilience-token-0123456789"


def _cfg(ups, *, cluster: str = "", route: str = "", extra: str = "") -> str:
    routes = f"[{{name: all, cluster: c {route}}}]"
    return http_config([u.address for u in ups], routes=routes, cluster_extra=cluster) + extra


async def test_breaker_opens_stops_calling_and_recovers_half_open(upstreams,
                                                                   proxy_factory) -> None:
    """5 failures in a row open the cluster breaker: the next requests are answered
    503 circuit_open without reaching the backend. After the reset timeout one trial
    goes through; it succeeds and the breaker closes. The events tell the story."""
    ups = await upstreams(1)
    ups[0].status_override = 503
    p = await proxy_factory(_cfg(ups, cluster=", breaker: {consecutive_failures: 5, "
                                              "reset_timeout: 1.0}"))
    port = listener_port(p)
    first = [await request(port) for _ in range(5)]
    assert [r.status for r in first] == [503] * 5
    assert len(ups[0].requests) == 5
    refused = [await request(port) for _ in range(20)]
    assert {(r.status, r.reason) for r in refused} == {(503, "circuit_open")}
    assert len(ups[0].requests) == 5  # the proxy stopped calling the upstream
    ups[0].status_override = None
    await asyncio.sleep(1.05)
    assert (await request(port)).status == 200
    assert p.resilience.clusters["c"].breaker.state == "closed"
    kinds = [e.kind for e in p.resilience.events.recent(kind="breaker.")]
    assert kinds == ["breaker.open", "breaker.half_open", "breaker.closed"]
    p.flush_metrics()
    assert p.stats.registry.get_sample_value(
        "meshproxy_circuit_breaker_rejected_total", {"cluster": "c", "breaker": "cluster"}) == 20


async def test_failed_trial_reopens_the_breaker(upstreams, proxy_factory) -> None:
    """Half-open, the trial request fails: the breaker opens again (and refuses). The
    reset timeout is a second so that the refusal is checked well within it even on a
    loaded machine (at 0.2 s the check once came after the breaker had gone half-open
    again)."""
    ups = await upstreams(1)
    ups[0].status_override = 502
    p = await proxy_factory(_cfg(ups, cluster=", breaker: {consecutive_failures: 2, "
                                              "reset_timeout: 1.0}"))
    port = listener_port(p)
    for _ in range(2):
        await request(port)
    await asyncio.sleep(1.05)
    assert (await request(port)).status == 502      # the trial, still failing
    r = await request(port)
    assert (r.status, r.reason) == (503, "circuit_open")
    assert len(ups[0].requests) == 3


async def test_5xx_endpoint_is_ejected_and_readmitted(upstreams, proxy_factory) -> None:
    """One of three endpoints answers 500: after 3 in a row it is ejected and gets no
    traffic; once its ejection time is over (and it answers 200 again) it is back."""
    ups = await upstreams(3)
    ups[2].status_override = 500
    outlier = ("outlier: {consecutive_5xx: 3, base_ejection_time: 3, interval: 0.1, "
               "max_ejection_percent: 50}")
    p = await proxy_factory(_cfg(ups, cluster=", " + outlier))
    port = listener_port(p)
    await fire(port, 9, conns=1)
    ep3 = p.clusters["c"].endpoints[2]
    assert len(ups[2].requests) == 3
    assert [e.kind for e in p.resilience.events.recent(kind="outlier.")] == ["outlier.eject"]
    counts = by_upstream(await fire(port, 20, conns=1))
    assert "up3" not in counts
    ups[2].status_override = None
    await eventually(lambda: ep3.ejected_until <= p.loop.time())
    counts = by_upstream(await fire(port, 30, conns=1))
    assert counts["up3"] == 10
    events = p.resilience.events.recent(kind="outlier.")
    assert events[0].kind == "outlier.eject"
    assert events[0].subject == ups[2].address


async def test_endpoint_breaker_sends_attempts_elsewhere(upstreams, proxy_factory) -> None:
    """Per-endpoint breakers: a failing endpoint's breaker opens after 2 failures and
    later requests are picked elsewhere without touching it."""
    ups = await upstreams(2)
    ups[0].status_override = 503
    p = await proxy_factory(_cfg(ups, cluster=", endpoint_breaker: {consecutive_failures: 2, "
                                              "reset_timeout: 30}"))
    port = listener_port(p)
    replies = await fire(port, 40, conns=1)
    assert sum(r.status == 503 for r in replies) == 2
    assert len(ups[0].requests) == 2


async def test_cluster_request_limit_refuses_excess_at_once(upstreams, proxy_factory) -> None:
    """max_requests 3 and a backend taking 0.3 s: of 9 concurrent requests 3 are
    served and 6 are refused at once with 503 max_requests (not queued)."""
    ups = await upstreams(1)
    ups[0].delay = 0.3
    p = await proxy_factory(_cfg(ups, cluster=", limits: {max_requests: 3}"))
    port = listener_port(p)
    replies = await asyncio.gather(*(request(port) for _ in range(9)))
    assert sorted(r.status for r in replies) == [200] * 3 + [503] * 6
    assert {r.reason for r in replies if r.status == 503} == {"max_requests"}


async def test_cluster_connection_limit_spans_its_endpoints(upstreams, proxy_factory) -> None:
    """limits.max_connections 2 over two endpoints (no pending line): with 4 slow
    requests at once only 2 upstream connections open in the whole cluster and the
    other 2 requests are refused at once with 503 max_connections; afterwards the
    slots are free again (connections closed by the limit's owner count down)."""
    ups = await upstreams(2)
    for u in ups:
        u.delay = 0.3
    p = await proxy_factory(_cfg(ups, cluster=", limits: {max_connections: 2, "
                                              "max_pending_requests: 0}"))
    port = listener_port(p)
    replies = await asyncio.gather(*(request(port) for _ in range(4)))
    assert sorted(r.status for r in replies) == [200, 200, 503, 503]
    assert {r.reason for r in replies if r.status == 503} == {"max_connections"}
    assert ups[0].connections + ups[1].connections == 2
    limiter = p.resilience.clusters["c"].limits.connections
    assert limiter.in_use == 2  # the two pooled keep-alive connections hold the slots
    p.clusters["c"].close()     # closing them gives the slots back
    await eventually(lambda: limiter.in_use == 0)


async def test_low_priority_is_shed_first(upstreams, proxy_factory) -> None:
    """Shedding with capacity 10: best_effort may fill half of it, critical all of it.
    With 8 slow requests in flight a best_effort request is refused and a critical one
    still goes through."""
    ups = await upstreams(1)
    ups[0].delay = 0.4
    routes = ("[{name: crit, match: {prefix: /crit}, cluster: c, priority: critical}, "
              "{name: extra, cluster: c, priority: best_effort}]")
    text = http_config([ups[0].address], routes=routes) + """
resilience:
  shedding: {max_requests: 10, lag_threshold_ms: null}
"""
    p = await proxy_factory(text)
    port = listener_port(p)
    busy = [asyncio.ensure_future(request(port, "GET", "/crit/slow")) for _ in range(8)]
    await eventually(lambda: p.resilience.shedder.in_flight == 8)
    shed = await request(port, "GET", "/extra")
    assert (shed.status, shed.reason) == (503, "overload_concurrency")
    ok = await request(port, "GET", "/crit/x")
    assert ok.status == 200
    assert all(r.status == 200 for r in await asyncio.gather(*busy))


def _bucket_admits(sends: list[float], *, rate: float, burst: float) -> int:
    """How many of the requests sent at ``sends`` an exact token bucket (``rate`` per
    second, ``burst`` deep, full at the first send) admits: the reference the proxy's
    limiter is held to. Computed from the arrivals the clients actually made, so a
    stall of the machine (the bucket then sits full and tokens are lost, as they must
    be) is in the reference too instead of failing the test."""
    tokens, last, admitted = burst, None, 0
    for t in sorted(sends):
        if last is not None:
            tokens = min(burst, tokens + (t - last) * rate)
        last = t
        if tokens >= 1:
            tokens -= 1
            admitted += 1
    return admitted


async def _admitted_over(port: int, seconds: float, *,
                         conns: int = 8) -> tuple[int, int, list[float]]:
    """Hammer ``port`` for ``seconds`` from ``conns`` keep-alive clients; (admitted,
    refused, the time each request was sent)."""
    stop_at = time.monotonic() + seconds
    counts = {200: 0, 429: 0}
    sends: list[float] = []

    async def client() -> None:
        from rawclient import RawConn, build
        conn = await RawConn.open(port)
        try:
            while time.monotonic() < stop_at:
                sends.append(time.monotonic())
                await conn.send(build())
                r = await conn.read_reply(timeout=30)
                counts[r.status] = counts.get(r.status, 0) + 1
                if r.status == 429:
                    assert r.headers["retry-after"].isdigit()
                    assert "ratelimit-remaining" in r.headers
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(conns)))
    return counts[200], counts[429], sends


async def test_rate_limit_admits_the_configured_rate(upstreams, proxy_factory) -> None:
    """A 40 requests/s limit hammered for 2.5 s by 8 clients (far faster than 40/s even
    on a loaded CI machine): the admitted count is within 5% of what an exact token
    bucket admits from the same arrivals (about burst + rate x elapsed when nothing
    stalls); the rest are 429 with Retry-After."""
    ups = await upstreams(1)
    p = await proxy_factory(_cfg(ups, route=", rate_limit: {rate: 40, burst: 40}"))
    admitted, refused, sends = await _admitted_over(listener_port(p), 2.5)
    expected = _bucket_admits(sends, rate=40, burst=40)
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)
    # The clients did press on the limit (on a starved machine they manage only ~1.6x the
    # rate, so "refused > admitted" would test the machine, not the limiter).
    assert refused >= 20, (admitted, refused)


@pytest.mark.system(commands=["promtool"])
async def test_rate_limit_holds_across_two_workers(tmp_path: Path, spawn, upstream) -> None:
    """With --workers 2 and the shared backend, the limit holds for the process group
    (two per-worker buckets would admit twice the rate); /metrics still passes promtool
    with the policy metrics in it."""
    from test_process import _get, _start, _wait_exit

    from support.net import free_port

    port, admin = free_port(), free_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(f"""
admin: {{port: {admin}, token: {TOKEN}}}
listeners:
  - {{protocol: http, name: web, port: {port}, routes: [{{name: all, cluster: c,
      rate_limit: {{rate: 40, burst: 40}}}}]}}
clusters:
  - {{name: c, endpoints: ["{upstream.address}"], breaker: {{consecutive_failures: 5}}}}
resilience:
  switches: [{{name: c-off, level: service, target: c, mode: "off"}}]
""")
    proc = await _start(spawn, path, port, admin, "--workers", "2")
    for _ in range(100):
        if (await _get(f"http://127.0.0.1:{admin}/ready"))[0] == 200:
            break
        await asyncio.sleep(0.1)
    admitted, refused, sends = await _admitted_over(port, 2.5, conns=12)
    expected = _bucket_admits(sends, rate=40, burst=40)  # one bucket for both workers
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)
    assert refused >= 20, (admitted, refused)  # the clients pressed on the limit
    await asyncio.sleep(1.2)  # snapshots and metric flushes
    _, metrics = await _get(f"http://127.0.0.1:{admin}/metrics")
    assert b"meshproxy_rate_limit_admitted_total" in metrics
    check = await asyncio.to_thread(
        subprocess.run, [shutil.which("promtool"), "check", "metrics"], input=metrics,
        capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    _, body = await _get(f"http://127.0.0.1:{admin}/switches")
    assert json.loads(body)["switches"][0]["name"] == "c-off"
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0


async def test_slow_call_ratio_trips_switch_and_fallback_is_served(upstreams,
                                                                   proxy_factory) -> None:
    """An automatic interface switch on the slow-call ratio: the backend takes 80 ms,
    over the 30 ms slow threshold; after the minimum 6 calls the switch trips and the
    static fallback is answered without calling the backend."""
    ups = await upstreams(1)
    ups[0].delay = 0.08
    extra = """
resilience:
  switches:
    - name: all-slow
      level: interface
      target: all
      auto: {metric: slow_ratio, slow_call_ms: 30, threshold: 0.5, minimum_requests: 6,
             window: 30, cooldown: 30}
      action: {kind: static, status: 200, body: "fallback", headers: {x-fallback: "1"}}
"""
    p = await proxy_factory(_cfg(ups, extra=extra))
    port = listener_port(p)
    for _ in range(6):
        assert (await request(port)).headers.get("x-upstream") == "up1"
    r = await request(port)
    assert (r.status, r.body, r.headers["x-fallback"]) == (200, b"fallback", "1")
    assert len(ups[0].requests) == 6
    assert p.resilience.switches.get("all-slow").state == "tripped"
    assert [e.kind for e in p.resilience.events.recent(kind="switch.")] == ["switch.tripped"]


async def test_cluster_fallback_serves_from_another_cluster(upstreams, proxy_factory) -> None:
    """A service switch turned on in the file with a cluster fallback: requests to the
    cluster are answered by the fallback cluster's backend."""
    ups = await upstreams(2)
    text = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [{{name: all, cluster: main}}]}}
clusters:
  - {{name: main, endpoints: ["{ups[0].address}"]}}
  - {{name: spare, endpoints: ["{ups[1].address}"]}}
resilience:
  switches: [{{name: main-down, level: service, target: main, mode: "on",
               action: {{kind: cluster, cluster: spare}}}}]
"""
    p = await proxy_factory(text)
    r = await request(listener_port(p))
    assert r.headers["x-upstream"] == "up2"


async def test_manual_switch_flips_through_admin_api_and_file(tmp_path: Path, upstreams,
                                                              proxy_factory) -> None:
    """A manual function-level switch: POST /switches/{name} with the token turns it on
    (fail fast 503 degraded) and off again; without the token it is refused. Then the
    file sets mode: on and a reload applies it; the breaker's state survives that
    reload (its config did not change)."""
    ups = await upstreams(1)
    base = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [{{name: all, cluster: c,
      function: shop}}]}}
clusters:
  - {{name: c, endpoints: ["{ups[0].address}"], breaker: {{consecutive_failures: 50}}}}
resilience:
  switches: [{{name: shop-off, level: function, target: shop, mode: MODE}}]
"""
    path = tmp_path / "proxy.yaml"
    path.write_text(base.replace("MODE", "auto"))
    proxy = Proxy(load_config(path))
    await proxy.start()
    admin = AdminServer(ProxySource(proxy, path), AdminConfig(port=0, token=TOKEN))
    await admin.start()
    try:
        port = listener_port(proxy)
        url = f"http://127.0.0.1:{admin.port}/switches/shop-off"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"mode": "on"}) as resp:
                assert resp.status == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(url, json={"mode": "sideways"}, headers=auth) as resp:
                assert resp.status == 400
            async with http.post(url, json={"mode": "on"}, headers=auth) as resp:
                assert resp.status == 200
                assert (await resp.json())["degrading"] is True
            r = await request(port)
            assert (r.status, r.reason) == (503, "degraded")
            async with http.post(url, json={"mode": "off"}, headers=auth) as resp:
                assert resp.status == 200
            assert (await request(port)).status == 200
            async with http.get(f"http://127.0.0.1:{admin.port}/events") as resp:
                kinds = [e["kind"] for e in (await resp.json())["events"]]
            assert kinds.count("switch.mode") == 2
            async with http.get(f"http://127.0.0.1:{admin.port}/resilience") as resp:
                assert (await resp.json())["clusters"]["c"]["breaker"]["state"] == "closed"
        breaker = proxy.resilience.clusters["c"].breaker
        breaker.force_open("test")
        path.write_text(base.replace("MODE", '"on"'))
        assert await proxy.reload(path)
        assert (await request(port)).reason == "degraded"
        assert proxy.resilience.clusters["c"].breaker is breaker
        assert breaker.state == "open"
    finally:
        await admin.stop()
        await proxy.close()


async def test_bad_policy_config_is_refused_with_field_path(tmp_path: Path) -> None:
    """A switch whose fallback names no cluster, and a retry with 0 attempts: both are
    refused with the field path; nothing is applied."""
    from meshproxy.config import ConfigError, parse_config

    text = http_config(["127.0.0.1:9"], routes="[{name: all, cluster: c, "
                                                "retry: {attempts: 0}}]")
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    assert ei.value.problems[0][0].startswith("listeners[0].routes[0].retry.attempts")
    text = http_config(["127.0.0.1:9"]) + """
resilience:
  switches: [{name: s, level: service, target: c, action: {kind: cluster, cluster: nope}}]
"""
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    assert ei.value.problems == [("resilience.switches[0].action.cluster",
                                  "no cluster named 'nope'")]


async def test_supervisor_flip_applies_only_to_the_switch_config_it_was_made_for(
        tmp_path: Path, upstreams) -> None:
    """How a worker takes the supervisor's flips (``switches.json``): a flip recorded
    for the switch's current config is applied; once a reload changed that switch's
    config, the same recorded flip is ignored (as a config change ends an admin flip in
    one process), so a worker started later, or any later flip of another switch,
    does not bring the stale flip back. Malformed entries change nothing."""
    ups = await upstreams(1)
    base = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [{{name: all, cluster: c}}]}}
clusters:
  - {{name: c, endpoints: ["{ups[0].address}"]}}
resilience:
  switches: [{{name: c-off, level: service, target: c,
              action: {{kind: fail_fast, status: STATUS}}}}]
"""
    path = tmp_path / "proxy.yaml"
    path.write_text(base.replace("STATUS", "503"))
    proxy = Proxy(load_config(path))
    await proxy.start()
    try:
        sw = proxy.resilience.switches.get("c-off")
        flip = {"c-off": {"mode": "on", "config_id": sw.config_id}}
        proxy.apply_switch_modes({"c-off": "on", "other": {"mode": "on"}})  # malformed
        assert (sw.mode, sw.mode_source) == ("auto", "config")
        proxy.apply_switch_modes(flip)
        assert (sw.mode, sw.mode_source) == ("on", "admin")
        assert (await request(listener_port(proxy))).status == 503

        path.write_text(base.replace("STATUS", "502"))  # the switch's config changes
        assert await proxy.reload(path)
        changed = proxy.resilience.switches.get("c-off")
        assert changed.config_id != sw.config_id
        assert changed.mode == "auto"
        proxy.apply_switch_modes(flip)  # the recorded flip, read again
        assert (changed.mode, changed.mode_source) == ("auto", "config")
        assert (await request(listener_port(proxy))).status == 200
    finally:
        await proxy.close()


async def test_fused_path_runs_an_automatic_switch_through_its_whole_cycle(
        upstreams, proxy_factory) -> None:
    """On the fused fast path (GuardedDirect: the switch is checked inline while it is
    passive, asked while it is not): errors trip the switch, the fallback is served
    without calling the backend, after the cooldown a share of requests probe the
    recovered backend and the switch goes back to normal, where requests pass again."""
    from meshproxy.layers.guard import GuardedDirect

    ups = await upstreams(1)
    extra = """
resilience:
  switches:
    - name: all-errors
      level: interface
      target: all
      auto: {metric: error_ratio, threshold: 0.5, minimum_requests: 4, window: 30,
             cooldown: 0.3, probe_ratio: 0.5, probe_requests: 4}
      action: {kind: static, status: 200, body: "fallback"}
"""
    p = await proxy_factory(_cfg(ups, extra=extra))
    assert isinstance(p.listeners["web"].router.routes[0].direct, GuardedDirect)
    sw = p.resilience.switches.get("all-errors")
    port = listener_port(p)
    ups[0].status_override = 500
    for _ in range(4):
        assert (await request(port)).status == 500
    assert (sw.state, sw.passive) == ("tripped", False)
    calls = len(ups[0].requests)
    assert (await request(port)).body == b"fallback"
    assert len(ups[0].requests) == calls  # the fallback did not call the backend
    ups[0].status_override = None
    await asyncio.sleep(0.35)  # the cooldown
    bodies = [(await request(port)).body for _ in range(8)]
    assert b"fallback" in bodies  # probing: only a share goes through
    assert sum(b != b"fallback" for b in bodies) == 4
    assert (sw.state, sw.passive) == ("normal", True)
    assert (await request(port)).status == 200
    kinds = [e.kind for e in p.resilience.events.recent(kind="switch.")]
    assert kinds == ["switch.tripped", "switch.probing", "switch.normal"]
