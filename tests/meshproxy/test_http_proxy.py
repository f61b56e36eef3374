"""End-to-end L7 proxying with real sockets: forwarding, framing, keep-alive, errors.

Each test starts misbehaving upstreams (tests/meshproxy/upstreams.py) and an in-process
proxy, and talks to it with the raw client (tests/meshproxy/client.py).
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from proxy_kit import http_config
from rawclient import RawConn, build, request
from upstreams import Scripted

from meshproxy.http.message import BODY_HIGH_WATER


async def test_get_is_forwarded_with_forwarding_headers(upstream, proxy_factory) -> None:
    """A GET reaches the upstream with X-Forwarded-For/-Proto and a generated X-Request-Id;
    hop-by-hop headers are not forwarded; end-to-end ones are, in order."""
    p = await proxy_factory(http_config([upstream.address]))
    r = await request(p.listeners["web"].port, "GET", "/echo?q=1", headers={
        "X-Forwarded-For": "10.0.0.1", "Keep-Alive": "timeout=5", "Connection": "x-secret",
        "X-Secret": "s", "X-App": "a", "Proxy-Authorization": "Basic abc"})
    assert r.status == 200
    sent = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert r.json()["target"] == "/echo?q=1"
    assert sent["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert len(sent["x-request-id"]) == 36
    assert sent["x-app"] == "a"
    for hop in ("keep-alive", "connection", "x-secret", "proxy-authorization"):
        assert hop not in sent


async def test_existing_request_id_is_kept(upstream, proxy_factory) -> None:
    """A client's X-Request-Id travels unchanged (no second one is added)."""
    p = await proxy_factory(http_config([upstream.address]))
    r = await request(p.listeners["web"].port, headers={"X-Request-Id": "abc-123"})
    ids = [v for k, v in r.json()["headers"] if k.lower() == "x-request-id"]
    assert ids == ["abc-123"]


async def test_request_bodies_stream_with_length_and_chunked(upstream, proxy_factory) -> None:
    """Content-Length and chunked request bodies arrive intact (chunked is re-framed)."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    payload = bytes(range(256)) * 4000  # 1 MB, larger than every buffer on the way
    r = await request(port, "POST", "/echo", body=payload)
    assert r.json()["body_len"] == len(payload)
    assert r.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    r = await request(port, "POST", "/echo", headers={"Transfer-Encoding": "chunked"},
                      body=chunked)
    assert r.json()["body_len"] == 11
    assert r.json()["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


async def test_chunked_request_trailers_are_dropped(upstream, proxy_factory) -> None:
    """Trailer fields after a chunked request body are accepted and not forwarded (the
    body is re-framed); the body arrives intact."""
    p = await proxy_factory(http_config([upstream.address]))
    r = await request(p.listeners["web"].port, "POST", "/echo",
                      headers={"Transfer-Encoding": "chunked"},
                      body=b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\n")
    assert r.status == 200
    assert r.json()["body_len"] == 3
    assert "x-checksum" not in {k.lower() for k, _ in r.json()["headers"]}


async def test_response_trailers_are_not_turned_into_headers(upstream, proxy_factory) -> None:
    """A chunked response's trailer is not relayed, and in particular never leaks into
    the response head; the body is intact and the connection stays usable."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    for _ in range(2):
        await conn.send(build("GET", "/trailers"))
        r = await conn.read_reply()
        assert r.status == 200
        assert r.body == b"abc"
        assert "x-checksum" not in r.headers
    await conn.close()


async def test_response_bodies_large_and_chunked(upstream, proxy_factory) -> None:
    """A large Content-Length body and a chunked body reach the client intact."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    size = 4 * BODY_HIGH_WATER + 17
    r = await request(port, "GET", f"/big/{size}")
    assert r.status == 200
    assert len(r.body) == size
    r = await request(port, "GET", "/chunked/50")
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.body == b"".join(f"chunk-{i}\n".encode() for i in range(50))


async def test_close_delimited_upstream_body_is_complete(upstream, proxy_factory) -> None:
    """An upstream body that ends with the connection's close (no length) reaches an
    HTTP/1.1 client complete, re-framed as chunked."""
    p = await proxy_factory(http_config([upstream.address]))
    r = await request(p.listeners["web"].port, "GET", "/close-delimited")
    assert r.status == 200
    assert r.body == b"until the end"
    assert r.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize(("target", "host", "path_sent", "host_sent"), [
    ("http://a.example:8080?q=1", "other", "/?q=1", "a.example:8080"),
    ("http://b.example", None, "/", "b.example"),
    ("http://c.example/p/q", "c.example", "/p/q", "c.example"),
])
async def test_absolute_form_target_is_sent_in_origin_form(
        upstream, proxy_factory, target: str, host: str | None, path_sent: str,
        host_sent: str) -> None:
    """An absolute-form request target (as a forward-proxy client sends) reaches the
    upstream in origin form, its authority in ``Host`` in place of the client's (RFC
    9112 §3.2.2), including one with no path, a port or no Host header at all."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    head = f"GET {target} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host else "")
    await conn.send(head.encode() + b"\r\n")
    r = await conn.read_reply()
    await conn.close()
    assert r.status == 200
    (req,) = upstream.requests
    assert req["target"] == path_sent
    assert [v for k, v in req["raw_headers"] if k.lower() == "host"] == [host_sent]


async def test_http10_client_gets_close_delimited_body(upstream, proxy_factory) -> None:
    """An HTTP/1.0 client cannot take chunked: an unknown-length body is close-delimited."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(b"GET /chunked/3 HTTP/1.0\r\nHost: t\r\n\r\n")
    raw = await conn.read_all()
    await conn.close()
    assert b"transfer-encoding" not in raw.lower()
    assert b"connection: close" in raw.lower()
    assert raw.endswith(b"chunk-0\nchunk-1\nchunk-2\n")


async def test_head_204_304_have_no_body(upstream, proxy_factory) -> None:
    """HEAD keeps Content-Length but sends no body; 204 and 304 have none either, and the
    connection stays usable for the next request."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build("HEAD", "/echo"))
    r = await conn.read_reply(head_only=True)
    assert r.status == 200
    assert int(r.headers["content-length"]) > 0
    for code in (204, 304):
        await conn.send(build("GET", f"/status/{code}"))
        r = await conn.read_reply()
        assert r.status == code
        assert r.body == b""
        assert "content-length" not in r.headers or code == 304
    await conn.send(build("GET", "/echo"))
    assert (await conn.read_reply()).status == 200
    await conn.close()


async def test_keep_alive_reuses_upstream_connection(upstream, proxy_factory) -> None:
    """Sequential requests on one client connection reuse one upstream connection."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    seen = set()
    for _ in range(5):
        await conn.send(build("GET", "/echo"))
        seen.add((await conn.read_reply()).json()["conn"])
    await conn.close()
    assert len(seen) == 1
    assert upstream.connections == 1


async def test_pipelined_requests_are_answered_in_order(upstream, proxy_factory) -> None:
    """Pipelined requests, a slow one first, come back in the order they were sent."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build("GET", "/slow/0.3") + build("GET", "/echo?2")
                    + build("POST", "/echo?3", body=b"abc"))
    targets = [(await conn.read_reply()).json()["target"] for _ in range(3)]
    await conn.close()
    assert targets == ["/slow/0.3", "/echo?2", "/echo?3"]


async def test_expect_100_continue(upstream, proxy_factory) -> None:
    """With Expect: 100-continue the proxy says 100 Continue before reading the body, and
    does not forward Expect (it answered it)."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                    b"Expect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    await conn.send(b"hello")
    r = await conn.read_reply()
    await conn.close()
    assert r.json()["body_len"] == 5
    assert "expect" not in {k.lower() for k, _ in r.json()["headers"]}


async def test_websocket_upgrade_is_tunnelled(upstream, proxy_factory) -> None:
    """Upgrade: websocket gets the upstream's 101 and then a byte tunnel both ways."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(b"GET /websocket HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    for msg in (b"ping-1", b"ping-2" * 1000):
        await conn.send(msg)
        got = await asyncio.wait_for(conn.reader.readexactly(len(msg)), 10)
        assert got == msg
    await conn.close()


async def test_h2c_upgrade_is_never_forwarded(upstream, proxy_factory) -> None:
    """Upgrade: h2c is stripped: the upstream sees a plain HTTP/1.1 request."""
    p = await proxy_factory(http_config([upstream.address]))
    r = await request(p.listeners["web"].port, "GET", "/echo", headers={
        "Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABk"})
    assert r.status == 200
    sent = {k.lower() for k, _ in r.json()["headers"]}
    assert not sent & {"upgrade", "http2-settings", "connection"}


async def test_routing_by_host_path_and_header(upstreams, proxy_factory) -> None:
    """Routes match on host (exact, wildcard), path prefix/exact/regex and headers, in
    order; no match is a 404 local reply."""
    a, b, c, d = await upstreams(4)
    cfg = f"""
admin: {{enabled: false}}
listeners:
  - protocol: http
    name: web
    port: 0
    routes:
      - {{name: canary, match: {{prefix: /api, headers: [{{name: x-canary, value: "1"}}]}},
         cluster: d}}
      - {{name: api, match: {{host: api.example.com, prefix: /api}}, cluster: a}}
      - {{name: wild, match: {{host: "*.example.com"}}, cluster: b}}
      - {{name: exact, match: {{path: /exact}}, cluster: c}}
      - {{name: rx, match: {{regex: "/v[0-9]+/items"}}, cluster: c}}
clusters:
  - {{name: a, endpoints: ["{a.address}"]}}
  - {{name: b, endpoints: ["{b.address}"]}}
  - {{name: c, endpoints: ["{c.address}"]}}
  - {{name: d, endpoints: ["{d.address}"]}}
"""
    p = await proxy_factory(cfg)
    port = p.listeners["web"].port

    async def who(target: str, host: str = "x", **hdrs: str) -> str:
        r = await request(port, "GET", target, host=host, headers=hdrs)
        return r.headers.get("x-upstream") or r.reason or str(r.status)

    assert await who("/api/x", host="API.example.com:8080") == "up1"
    assert await who("/api/x", host="api.example.com", **{"x-canary": "1"}) == "up4"
    assert await who("/other", host="www.example.com") == "up2"
    assert await who("/exact") == "up3"
    assert await who("/exact/no") == "no_route"
    assert await who("/v2/items") == "up3"
    assert await who("/v2/items/1") == "no_route"


@pytest.mark.parametrize("path", ["lane", "fused", "stack"],
                         ids=["plain-lane", "fused-path", "layer-stack"])
async def test_upstream_errors_map_to_reasons(upstream, proxy_factory, free_port,
                                              path: str) -> None:
    """Reset → 502 upstream_reset; refused connect → 502 connect_failure; garbage →
    502 upstream_protocol_error; hang past the route timeout → 504 route_timeout; an
    empty cluster → 503 no_healthy_upstream. Each carries x-mesh-reason, the same
    through the plain lane, the fused default path and the task-run layer stack."""
    cfg = f"""
admin: {{enabled: false}}
listeners:
  - protocol: http
    name: web
    port: 0
    routes:
      - {{name: dead, match: {{prefix: /dead}}, cluster: dead}}
      - {{name: empty, match: {{prefix: /empty}}, cluster: empty}}
      - {{name: all, cluster: c, timeout: 0.5}}
clusters:
  - {{name: c, endpoints: ["{upstream.address}"]}}
  - {{name: dead, endpoints: ["127.0.0.1:{free_port}"]}}
  - {{name: empty}}
"""
    p = await proxy_factory(cfg)
    port = p.listeners["web"].port
    assert (await request(port)).status == 200  # leaves an idle pooled connection
    for route in p.listeners["web"].router.routes:
        assert route.direct is not None  # default stack: the fused path is available
        assert route.lane is not None    # and the plain lane
        if path != "lane":
            route.lane = None
        if path == "stack":
            route.direct = None
    cases = {"/reset": (502, "upstream_reset"), "/dead": (502, "connect_failure"),
             "/garbage": (502, "upstream_protocol_error"), "/hang": (504, "route_timeout"),
             "/empty": (503, "no_healthy_upstream")}
    for target, (status, reason) in cases.items():
        r = await request(port, "GET", target)
        assert (r.status, r.reason) == (status, reason), target
    samples = {(s.labels["reason"], s.labels["code"]): s.value
               for m in p.stats.registry.collect() if m.name == "meshproxy_local_replies"
               for s in m.samples if s.name.endswith("_total")}
    for status, reason in cases.values():
        assert samples[(reason, str(status))] == 1


@pytest.mark.parametrize("path", ["lane", "fused", "stack"],
                         ids=["plain-lane", "fused-path", "layer-stack"])
async def test_a_response_nobody_asked_for_is_never_handed_to_the_next_request(
        proxy_factory, path: str) -> None:
    """An upstream answers one request with two responses in one write (out of step,
    or smuggling an answer to whoever is next on the connection). The client gets the
    first; the connection is not reused, so the next request gets its own answer over
    a new connection, never the injected one. The same on all three paths."""
    def answer(target: bytes, connection: int) -> bytes:
        if target == b"/two":
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        body = b"fresh-%d" % connection
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async with Scripted(answer) as up:
        p = await proxy_factory(http_config([up.address]))
        port = p.listeners["web"].port
        [route] = p.listeners["web"].router.routes
        assert route.lane is not None
        if path != "lane":
            route.lane = None
        if path == "stack":
            route.direct = None
        warm = await request(port, "GET", "/warm")
        assert (warm.status, warm.body) == (200, b"fresh-1")  # now idle in the pool
        two = await request(port, "GET", "/two")
        assert (two.status, two.body) == (200, b"first")
        after = await request(port, "GET", "/after")
        assert (after.status, after.body) == (200, b"fresh-2")
        assert up.connections == 2


async def test_answer_before_request_body_closes_client_connection(upstream,
                                                                   proxy_factory) -> None:
    """An upstream that answers before the request body is fully sent: the client gets
    the answer with Connection: close and the connection closes, instead of stalling on
    a body nobody will read."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
                    + b"x" * 1000)
    r = await conn.read_reply()
    assert r.status == 200
    assert r.body == b"early\n"
    assert r.headers["connection"] == "close"
    assert await conn.closed_by_peer()
    await conn.close()


async def test_connect_timeout_is_503(proxy_factory) -> None:
    """An endpoint that never completes the TCP handshake (its accept queue is full, so
    the kernel drops our SYN) fails after the cluster's connect timeout: 503
    connect_timeout."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue; nobody ever accepts
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    try:
        p = await proxy_factory(http_config([f"127.0.0.1:{port}"],
                                            cluster_extra=", connect_timeout: 0.3"))
        r = await request(p.listeners["web"].port, "GET", "/echo")
        assert (r.status, r.reason) == (503, "connect_timeout")
    finally:
        for c in fillers:
            c.close()
        listener.close()


async def test_upstream_reset_mid_body_cuts_client_connection(upstream, proxy_factory) -> None:
    """When the upstream dies after the head was forwarded, the client's connection is cut
    (it must not mistake a truncated body for a complete one)."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build("GET", "/reset-mid-body"))
    raw = await conn.read_all()
    await conn.close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b"0123456789")  # 10 of the promised 1000 bytes, then EOF


async def test_stream_idle_timeout(upstream, proxy_factory) -> None:
    """An upstream that stops sending mid-exchange is abandoned after the cluster's
    stream idle timeout: 504 upstream_idle before the head."""
    p = await proxy_factory(http_config(
        [upstream.address], cluster_extra=", stream_idle_timeout: 0.3",
        routes="[{name: all, cluster: c, timeout: 30}]"))
    r = await request(p.listeners["web"].port, "GET", "/hang")
    assert (r.status, r.reason) == (504, "upstream_idle")


async def test_round_robin_across_endpoints_and_active_requests(upstreams, proxy_factory) -> None:
    """Requests spread over the cluster's endpoints; active_requests returns to zero."""
    ups = await upstreams(3)
    p = await proxy_factory(http_config([u.address for u in ups]))
    port = p.listeners["web"].port
    seen = [(await request(port)).headers["x-upstream"] for _ in range(6)]
    assert sorted(seen) == ["up1", "up1", "up2", "up2", "up3", "up3"]
    assert all(ep.active_requests == 0 for ep in p.clusters["c"].endpoints)


async def test_stale_pooled_connection_is_retried_once(upstream, proxy_factory) -> None:
    """An upstream that closes an idle keep-alive connection is not a client-visible
    error: the idempotent request is sent again on a fresh connection."""
    p = await proxy_factory(http_config([upstream.address]))
    port = p.listeners["web"].port
    assert (await request(port, "GET", "/echo")).status == 200
    for w in list(upstream._writers):  # the upstream closes its idle connection
        w.close()
    await asyncio.sleep(0.1)
    r = await request(port, "GET", "/echo")
    assert r.status == 200
    assert upstream.connections == 2


@pytest.mark.parametrize(("path", "key"), [("lane", "none"), ("fused", "none"),
                                           ("fused", "client_address"), ("stack", "none")])
async def test_keep_alive_race_retried_spends_one_rate_limit_token(
        proxy_factory, path: str, key: str) -> None:
    """A request sent on a pooled connection that the upstream closes unanswered (the
    keep-alive race) is retried on a fresh connection, and passes the route's rate
    limit once: a bucket of two tokens admits exactly two requests, the raced one
    included, on the plain lane, the fused path (its admission given back before the
    stack admits the retry) and the layer stack alike."""
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        first_connection = served == 1
        answered = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if first_connection and answered == 1:
                    break  # the second request on the first connection: closed unanswered
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        up = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        routes = ("[{name: all, cluster: c, rate_limit: {rate: 0.001, burst: 2, "
                  f"key: {key}, backend: local}}}}]")
        p = await proxy_factory(http_config([up], routes=routes))
        [route] = p.listeners["web"].router.routes
        if path != "lane":
            route.lane = None
        if path == "stack":
            route.direct = None
        assert (route.lane is not None) == (path == "lane")
        assert (route.direct is not None) == (path != "stack")
        port = p.listeners["web"].port
        first = await request(port, "GET", "/a")
        assert (first.status, first.body) == (200, b"ok")
        raced = await request(port, "GET", "/b")  # on the pooled connection, then again
        assert (raced.status, raced.body) == (200, b"ok")
        assert served == 2
        third = await request(port, "GET", "/c")
        assert third.status == 429  # two tokens, two requests: the bucket is empty
    finally:
        server.close()
        await server.wait_closed()


async def test_client_disconnect_cancels_upstream_exchange(upstream, proxy_factory) -> None:
    """A client that leaves mid-request frees the endpoint (active_requests back to 0)."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build("GET", "/hang"))
    ep = p.clusters["c"].endpoints[0]
    for _ in range(200):
        if ep.active_requests == 1:
            break
        await asyncio.sleep(0.01)
    assert ep.active_requests == 1
    await conn.close()
    for _ in range(200):
        if ep.active_requests == 0:
            break
        await asyncio.sleep(0.01)
    assert ep.active_requests == 0


async def test_full_pool_refuses_instead_of_queueing(upstream, proxy_factory) -> None:
    """With one connection per endpoint and no room to wait, a second concurrent request
    is refused at once with 503 pool_overflow."""
    p = await proxy_factory(http_config(
        [upstream.address], cluster_extra=", pool: {max_connections: 1, max_pending: 0}"))
    port = p.listeners["web"].port
    slow = asyncio.create_task(request(port, "GET", "/slow/0.5"))
    ep = p.clusters["c"].endpoints[0]
    for _ in range(200):
        if ep.active_requests == 1:
            break
        await asyncio.sleep(0.01)
    r = await request(port, "GET", "/echo")
    assert (r.status, r.reason) == (503, "pool_overflow")
    assert (await slow).status == 200


async def test_slow_reader_pauses_upstream(upstream, proxy_factory) -> None:
    """A client that stops reading a large response makes the proxy stop reading the
    upstream (backpressure), so memory stays bounded; reading again finishes the body."""
    p = await proxy_factory(http_config([upstream.address]))
    size = 64 * 1024 * 1024
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build("GET", f"/big/{size}"))
    await conn.reader.readuntil(b"\r\n\r\n")
    pool = p.clusters["c"].pools[p.clusters["c"].endpoints[0].key]
    busy = next(iter(pool.owned))
    for _ in range(500):
        if busy.flow.paused:
            break
        await asyncio.sleep(0.01)
    assert busy.flow.paused
    # What the client's transport holds stays near its high-water mark (64 KiB).
    client = next(iter(p.listeners["web"].connections))
    assert client.transport.get_write_buffer_size() < 1024 * 1024
    assert await conn.read_count(size) == size
    await conn.close()


async def test_connection_bytes_reach_the_metrics_once(upstream, proxy_factory) -> None:
    """The bytes of closed client connections (counted in plain integers, flushed into
    prometheus-client by the sweep and before a scrape) equal the bytes on the wire,
    counted once however often the metrics are flushed."""
    p = await proxy_factory(http_config([upstream.address]))
    lst = p.listeners["web"]
    sent = received = 0
    for _ in range(3):
        data = build("GET", "/echo", headers={"Connection": "close"})
        conn = await RawConn.open(lst.port)
        try:
            await conn.send(data)
            received += len(await conn.read_all())
        finally:
            await conn.close()
        sent += len(data)
    for _ in range(100):
        if not lst.connections:
            break
        await asyncio.sleep(0.01)
    p.flush_metrics()
    p.flush_metrics()
    values = {s.name: s.value for m in p.stats.registry.collect() for s in m.samples
              if s.labels.get("listener") == "web"}
    assert values["meshproxy_downstream_received_bytes_total"] == sent
    assert values["meshproxy_downstream_sent_bytes_total"] == received
    assert values["meshproxy_downstream_connections_total"] == 3


async def test_a_client_accepted_before_a_drain_still_gets_its_answer(
        upstream, proxy_factory) -> None:
    """A drain closes an idle connection that has served a request at once, but one on
    which no request has begun yet (its client connected just before the drain, to send
    one) is answered first, with Connection: close, and then closed."""
    p = await proxy_factory(http_config([upstream.address]))
    listener = p.listeners["web"]
    used = await RawConn.open(listener.port)
    await used.send(build())
    assert (await used.read_reply()).status == 200
    fresh = await RawConn.open(listener.port)
    for _ in range(500):
        if len(listener.connections) == 2:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the proxy did not accept the second connection")
    drain = asyncio.create_task(p.drain(10.0))
    assert await used.closed_by_peer()
    await fresh.send(build())
    r = await fresh.read_reply()
    assert r.status == 200
    assert r.headers.get("connection") == "close"
    assert await fresh.closed_by_peer()
    await drain
    await used.close()
    await fresh.close()
