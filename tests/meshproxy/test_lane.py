"""The plain lane (meshproxy.http.lane) with real sockets: it is taken only by bodiless
requests on routes without policies, and it keeps every behaviour of the fused path
(forwarding headers, hop-by-hop removal, metrics per route and endpoint, framing,
timeouts with x-mesh-reason, pipelining order, reload and drain).

Which path answered is observed through ``meshproxy.http.server.lane_observer`` (the
list ``HttpServerProtocol.lane_answer`` appends each status to), so a test fails if the
lane silently stops being taken as well as if it drops a behaviour.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from proxy_kit import http_config
from rawclient import RawConn, build, request
from upstreams import Scripted

from meshproxy.config import load_config
from meshproxy.http import server
from meshproxy.http.lane import LANE_MAX_BODY
from meshproxy.proxy import Proxy


@pytest.fixture
def lane_answers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Statuses answered through the lane, in order (the server's own observer list:
    the compiled build's methods cannot be patched)."""
    seen: list[int] = []
    monkeypatch.setattr(server, "lane_observer", seen)
    return seen


def samples(p: Proxy, name: str) -> dict[tuple, float]:
    """``name``'s samples by their label values, after the tallies are flushed."""
    p.flush_metrics()
    return {tuple(s.labels.values()): s.value for m in p.stats.registry.collect()
            for s in m.samples if s.name == name}


async def warm(port: int) -> None:
    """One request, so that the pool holds an idle connection the lane can take."""
    assert (await request(port)).status == 200


async def test_plain_route_takes_the_lane_with_forwarding_headers(
        upstream, proxy_factory, lane_answers) -> None:
    """On the lane a GET still gets X-Forwarded-For/-Proto and a generated X-Request-Id,
    loses its hop-by-hop headers, keeps end-to-end ones in order, and its response
    loses the upstream's hop-by-hop headers and keeps its own."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    assert p.listeners["web"].router.routes[0].lane is not None
    conn = await RawConn.open(port)
    try:
        await conn.send(build("GET", "/echo"))
        assert (await conn.read_reply()).status == 200  # opens the pooled connection
        await conn.send(build("GET", "/echo?q=1", headers={
            "X-Forwarded-For": "10.0.0.1", "Keep-Alive": "timeout=5",
            "Connection": "x-secret", "X-Secret": "s", "X-App": "a"}))
        r = await conn.read_reply()
    finally:
        await conn.close()
    assert lane_answers == [200]
    assert r.status == 200
    assert r.headers["x-upstream"] == "up1"
    assert "connection" not in {k.lower() for k, _ in r.raw_headers}
    assert int(r.headers["content-length"]) == len(r.body)
    sent = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert r.json()["target"] == "/echo?q=1"
    assert sent["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert len(sent["x-request-id"]) == 36
    assert sent["x-app"] == "a"
    for hop in ("keep-alive", "connection", "x-secret"):
        assert hop not in sent


async def test_lane_requests_are_counted_per_route_endpoint_and_bytes(
        upstream, proxy_factory, lane_answers) -> None:
    """Requests answered on the lane count in the route's status classes and duration
    histogram, in the endpoint's upstream counters, and in the listener's bytes."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    conn = await RawConn.open(port)
    sent = received = 0
    try:
        for target in ("/echo", "/echo", "/status/404", "/status/503"):
            data = build("GET", target)
            await conn.send(data)
            r = await conn.read_reply()
            sent += len(data)
            received += int(r.headers["content-length"])
    finally:
        await conn.close()
    assert lane_answers == [200, 200, 404, 503]
    codes = samples(p, "meshproxy_downstream_requests_total")
    assert codes[("web", "all", "2xx")] == 3  # the warm-up's and two on the lane
    assert codes[("web", "all", "4xx")] == 1
    assert codes[("web", "all", "5xx")] == 1
    assert samples(p, "meshproxy_downstream_request_duration_seconds_count")[
        ("web", "all")] == 5
    up = samples(p, "meshproxy_upstream_requests_total")
    assert up[("c", upstream.address, "2xx")] == 3
    assert up[("c", upstream.address, "5xx")] == 1
    assert samples(p, "meshproxy_upstream_request_duration_seconds_count")[
        ("c", upstream.address)] == 5
    for _ in range(100):
        if not p.listeners["web"].connections:
            break
        await asyncio.sleep(0.01)
    # every byte of this connection counted (the warm-up's connection adds its own)
    assert samples(p, "meshproxy_downstream_received_bytes_total")[("web",)] > sent
    assert samples(p, "meshproxy_downstream_sent_bytes_total")[("web",)] > received
    assert p.clusters["c"].endpoints[0].active_requests == 0


async def test_lane_frames_204_304_http10_and_connection_close(
        upstream, proxy_factory, lane_answers) -> None:
    """The lane frames as _send_response does: 204 without Content-Length or body, 304
    without body, an HTTP/1.0 keep-alive client gets Connection: keep-alive, a client
    that says Connection: close gets it back and the connection closes."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    conn = await RawConn.open(port)
    try:
        await conn.send(build("GET", "/status/204"))
        r = await conn.read_reply()
        assert (r.status, r.body) == (204, b"")
        assert "content-length" not in r.headers
        await conn.send(build("GET", "/status/304"))
        r = await conn.read_reply()
        assert (r.status, r.body) == (304, b"")
        await conn.send(b"GET /echo HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        r = await conn.read_reply()
        assert r.status == 200
        assert r.headers["connection"] == "keep-alive"
        await conn.send(build("GET", "/echo", headers={"Connection": "close"}))
        r = await conn.read_reply()
        assert r.headers["connection"] == "close"
        assert await conn.closed_by_peer()
    finally:
        await conn.close()
    assert lane_answers == [204, 304, 200, 200]


async def test_lane_route_timeout_answers_504_with_reason_and_keeps_serving(
        upstream, proxy_factory, lane_answers) -> None:
    """A lane request past the route timeout gets 504 route_timeout (x-mesh-reason,
    counted in local replies and as an upstream error); its timeout leaves the wheel;
    the next request on the same connection takes the lane again."""
    p = await proxy_factory(http_config([upstream.address],
                                        routes="[{name: all, cluster: c, timeout: 0.3}]"))
    lst = p.listeners["web"]
    await warm(lst.port)
    conn = await RawConn.open(lst.port)
    try:
        await conn.send(build("GET", "/hang"))
        r = await conn.read_reply()
        assert (r.status, r.reason) == (504, "route_timeout")
        # the timed-out upstream connection was dropped: the first request after it
        # opens a new one through the stack, the second takes the lane again
        for _ in range(2):
            await conn.send(build("GET", "/echo"))
            assert (await conn.read_reply()).status == 200
    finally:
        await conn.close()
    assert lane_answers == [200]  # the 504 is a local reply
    assert len(lst.timeouts) == 0
    assert samples(p, "meshproxy_local_replies_total")[("web", "route_timeout", "504")] == 1
    errors = samples(p, "meshproxy_upstream_errors_total")
    assert errors[("c", upstream.address, "route_timeout")] == 1
    assert samples(p, "meshproxy_downstream_requests_total")[("web", "all", "5xx")] == 1
    assert samples(p, "meshproxy_downstream_requests_total")[("web", "all", "2xx")] == 3


async def test_responses_the_lane_does_not_buffer_stream_intact(
        upstream, proxy_factory, lane_answers) -> None:
    """A body over LANE_MAX_BODY and a chunked body leave the lane and stream through
    the fused path intact; both are still counted for the route."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    size = LANE_MAX_BODY * 8
    r = await request(port, "GET", f"/big/{size}")
    assert (r.status, len(r.body)) == (200, size)
    r = await request(port, "GET", "/chunked/3")
    assert r.body == b"chunk-0\nchunk-1\nchunk-2\n"
    assert lane_answers == []
    assert samples(p, "meshproxy_downstream_requests_total")[("web", "all", "2xx")] == 3


async def test_reset_after_response_head_is_not_retried(upstream, proxy_factory,
                                                        lane_answers) -> None:
    """An upstream reset after the head (and part of the body) arrived fails the lane
    request with 502 upstream_reset; it is not retried (a response had begun), unlike
    a reset before any response byte on a reused connection."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    r = await request(port, "GET", "/reset-mid-body")
    assert (r.status, r.reason) == (502, "upstream_reset")
    assert [q["path"] for q in upstream.requests].count("/reset-mid-body") == 1
    assert lane_answers == []
    assert (await request(port)).status == 200  # a fresh connection serves the next


async def test_pipelined_requests_keep_their_order_around_the_lane(
        upstream, proxy_factory, lane_answers) -> None:
    """Requests pipelined in one write: the first takes the lane, the others wait in
    the queue (the fused path) and are answered in order."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    conn = await RawConn.open(port)
    try:
        await conn.send(build("GET", "/slow/0.1") + build("GET", "/status/201")
                        + build("GET", "/status/202"))
        statuses = [(await conn.read_reply()).status for _ in range(3)]
    finally:
        await conn.close()
    assert statuses == [200, 201, 202]
    assert lane_answers[:1] == [200]


@pytest.mark.parametrize("policy", [
    "retry: {attempts: 2}",
    "rate_limit: {rate: 1000, key: client_address}",
    "deadline: {}",
], ids=["retry", "keyed-rate-limit", "deadline"])
async def test_routes_with_a_policy_do_not_take_the_lane(upstream, proxy_factory,
                                                         lane_answers, policy: str) -> None:
    """A route with a policy the lane cannot run (retries, a rate limit keyed by the
    client, deadline propagation) has no lane, and its requests never go through it."""
    p = await proxy_factory(http_config(
        [upstream.address], routes=f"[{{name: all, cluster: c, {policy}}}]"))
    port = p.listeners["web"].port
    assert p.listeners["web"].router.routes[0].lane is None
    for _ in range(3):
        assert (await request(port)).status == 200
    assert lane_answers == []


@pytest.mark.parametrize("cluster_extra", [
    ", load_balancer: {policy: ring_hash, hash_on: {source: header, name: x-user}}",
    ", outlier: {}",
], ids=["hash-balancer", "outlier"])
async def test_clusters_with_a_policy_keep_their_routes_off_the_lane(
        upstream, proxy_factory, lane_answers, cluster_extra: str) -> None:
    """A hash-based balancer (it reads the request) or outlier detection on the
    cluster: the route has no lane."""
    p = await proxy_factory(http_config([upstream.address], cluster_extra=cluster_extra))
    port = p.listeners["web"].port
    assert p.listeners["web"].router.routes[0].lane is None
    for _ in range(3):
        assert (await request(port, headers={"x-user": "u"})).status == 200
    assert lane_answers == []


async def test_a_breaker_guarded_route_takes_the_lane_and_its_breaker_sees_outcomes(
        upstream, proxy_factory, lane_answers) -> None:
    """A cluster breaker is run by the lane (admission before the idle connection is
    taken, outcome when the answer is complete): two 500s answered on the lane open it
    (consecutive_failures 2), and the next request is refused with 503 circuit_open
    without reaching the upstream."""
    p = await proxy_factory(http_config(
        [upstream.address],
        cluster_extra=", breaker: {consecutive_failures: 2, reset_timeout: 60}"))
    port = p.listeners["web"].port
    [route] = p.listeners["web"].router.routes
    assert route.lane is not None
    assert route.lane.guard is not None
    await warm(port)
    for _ in range(2):
        assert (await request(port, "GET", "/status/500")).status == 500
    assert lane_answers == [500, 500]  # the warm-up found no idle connection: the stack
    r = await request(port, "GET", "/status/200")
    assert (r.status, r.reason) == (503, "circuit_open")
    assert lane_answers == [500, 500]  # refused before any upstream exchange


async def test_a_keyless_rate_limit_is_applied_on_the_lane(
        upstream, proxy_factory, lane_answers) -> None:
    """A route rate limit without a key is run by the lane: within the burst requests
    are answered on the lane, beyond it they get 429 rate_limited."""
    p = await proxy_factory(http_config(
        [upstream.address],
        routes="[{name: all, cluster: c, rate_limit: {rate: 0.001, burst: 3}}]"))
    port = p.listeners["web"].port
    assert p.listeners["web"].router.routes[0].lane is not None
    statuses = [(await request(port)).status for _ in range(5)]
    # the first request finds no idle connection (the stack admits it), then two on
    # the lane use up the burst; the rest are refused
    assert statuses == [200, 200, 200, 429, 429]
    assert lane_answers == [200, 200]


async def test_request_bodies_and_head_requests_leave_the_lane(
        upstream, proxy_factory, lane_answers) -> None:
    """A request with a body and a HEAD request are served by the fused path (the lane
    only takes bodiless requests that expect a body back)."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    r = await request(port, "POST", "/echo", body=b"hello")
    assert r.json()["body_len"] == 5
    r = await request(port, "HEAD", "/echo")
    assert (r.status, r.body) == (200, b"")
    assert lane_answers == []


def _write(path: Path, text: str) -> None:
    path.write_text(text)


async def test_reload_lets_a_lane_request_finish_on_its_route(
        tmp_path: Path, upstreams, free_port: int, lane_answers) -> None:
    """A lane request in flight during a reload that renames its route is answered and
    counted under the route it started on; the next request uses the new route."""
    u1, = await upstreams(1)

    def cfg(route: str) -> str:
        return http_config([u1.address], routes=f"[{{name: {route}, cluster: c}}]").replace(
            "port: 0", f"port: {free_port}")

    path = tmp_path / "proxy.yaml"
    _write(path, cfg("old"))
    p = Proxy(load_config(path))
    await p.start()
    try:
        await warm(free_port)
        conn = await RawConn.open(free_port)
        try:
            await conn.send(build("GET", "/slow/0.3"))
            await asyncio.sleep(0.1)
            _write(path, cfg("new"))
            assert await p.reload(path)
            assert (await conn.read_reply()).status == 200
            await conn.send(build("GET", "/echo"))
            assert (await conn.read_reply()).status == 200
        finally:
            await conn.close()
        assert lane_answers == [200, 200]
        codes = samples(p, "meshproxy_downstream_requests_total")
        assert codes[("web", "old", "2xx")] == 2  # the warm-up and the one in flight
        assert codes[("web", "new", "2xx")] == 1
    finally:
        await p.close()


async def test_drain_lets_a_lane_request_finish_then_closes(upstream, proxy_factory,
                                                            lane_answers) -> None:
    """A drain during a lane request: the request is answered (with Connection: close)
    and the connection closes after it."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    await warm(port)
    conn = await RawConn.open(port)
    try:
        await conn.send(build("GET", "/slow/0.3"))
        await asyncio.sleep(0.1)
        drain = asyncio.ensure_future(p.listeners["web"].drain(5.0))
        r = await conn.read_reply()
        assert r.status == 200
        assert r.headers["connection"] == "close"
        assert await conn.closed_by_peer()
        await drain
    finally:
        await conn.close()
    assert lane_answers == [200]


async def test_informational_head_fields_do_not_reach_the_final_response(
        proxy_factory, lane_answers) -> None:
    """An upstream that sends 103 Early Hints (with a Link field) before its 200: the
    client gets the 200 with only the final head's fields (the upstream connection
    keeps no per-message callback, so the 1xx head's fields must be dropped)."""
    def answer(_target: bytes, _connection: int) -> bytes:
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nx-final: yes\r\nContent-Length: 3\r\n\r\nok\n")

    async with Scripted(answer) as up:
        p = await proxy_factory(http_config([up.address]))
        conn = await RawConn.open(p.listeners["web"].port)
        try:
            for _ in range(2):  # the first opens the pooled connection, the second is lane
                await conn.send(build("GET", "/"))
                r = await conn.read_reply()
                assert (r.status, r.body) == (200, b"ok\n")
                assert r.headers["x-final"] == "yes"
                assert "link" not in r.headers
        finally:
            await conn.close()
        assert lane_answers == [200]


async def test_latency_aware_balancer_still_observes_lane_attempts(
        upstream, proxy_factory, lane_answers) -> None:
    """A peak-EWMA cluster learns from every attempt, the lane's included (balancers
    that ignore outcomes are not called: ``learns`` is False for them)."""
    p = await proxy_factory(http_config(
        [upstream.address], cluster_extra=", load_balancer: {policy: peak_ewma}"))
    cluster = p.clusters["c"]
    assert cluster.balancer.learns
    ep = cluster.endpoints[0]
    default = cluster.balancer.estimate(ep)
    port = p.listeners["web"].port
    conn = await RawConn.open(port)
    try:
        for _ in range(3):
            await conn.send(build("GET", "/echo"))
            assert (await conn.read_reply()).status == 200
    finally:
        await conn.close()
    assert lane_answers == [200, 200]
    assert cluster.balancer.estimate(ep) != default  # loopback answers in far under 30 ms


async def test_a_leading_prefix_route_is_matched_inline_in_route_order(
        upstreams, proxy_factory) -> None:
    """The router checks a first route whose only condition is a prefix inline (the
    usual sidecar route); a path it does not match still goes to the next routes in
    order, and ``OPTIONS *`` matches no prefix route."""
    up1, up2 = await upstreams(2)
    text = f"""
admin: {{enabled: false}}
listeners:
  - protocol: http
    name: web
    port: 0
    routes:
      - {{name: a, match: {{prefix: /a}}, cluster: one}}
      - {{name: rest, match: {{prefix: /}}, cluster: two}}
clusters:
  - {{name: one, endpoints: ["{up1.address}"]}}
  - {{name: two, endpoints: ["{up2.address}"]}}
"""
    p = await proxy_factory(text)
    port = p.listeners["web"].port
    assert (await request(port, "GET", "/a/x")).headers["x-upstream"] == "up1"
    assert (await request(port, "GET", "/b")).headers["x-upstream"] == "up2"
    r = await request(port, "OPTIONS", "*")
    assert (r.status, r.reason) == (404, "no_route")
