"""The admin port's own HTTP/1.1 server (meshproxy.admin_http), over raw sockets.

Pins what replaced aiohttp there: routing with ``{name}`` segments, 404/405 with
``Allow``, HEAD for GET routes, keep-alive and pipelined requests answered in order,
request bodies (Content-Length and chunked), a handler that raises answering 500, and
each refusal of hostile input answered and closed (400 malformed, 431 head, 413 body,
408 slow request), plus ``stop`` letting an answer in progress finish and leaving no
task or connection behind. The endpoints themselves are tested through the real
command in ``test_process.py`` and ``test_workers.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from rawclient import RawConn, build

from meshproxy.admin_http import (
    MAX_BODY_BYTES,
    AdminHttpServer,
    AdminRequest,
    AdminResponse,
    Routes,
    json_response,
    text_response,
)


async def _echo(request: AdminRequest) -> AdminResponse:
    return json_response({"method": request.method, "path": request.path,
                          "query": request.query, "match": request.match_info,
                          "body": request.body.decode(),
                          "auth": request.headers.get("authorization")})


async def _boom(request: AdminRequest) -> AdminResponse:
    raise RuntimeError("handler bug")


class _Gate:
    """A handler that answers only once the test opens the gate."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, request: AdminRequest) -> AdminResponse:
        self.entered.set()
        await self.open.wait()
        return text_response("slow\n")


@pytest.fixture
async def gate() -> _Gate:
    return _Gate()


@pytest.fixture
async def server(gate: _Gate) -> AsyncIterator[AdminHttpServer]:
    routes = Routes()
    routes.add("GET", "/things/{name}", _echo)
    routes.add("POST", "/things/{name}", _echo)
    routes.add("GET", "/echo", _echo)
    routes.add("GET", "/boom", _boom)
    routes.add("GET", "/slow", gate)
    srv = AdminHttpServer(routes, request_timeout=0.5, idle_timeout=30)
    await srv.start("127.0.0.1", 0)
    yield srv
    gate.open.set()
    await srv.stop()


async def _one(port: int, data: bytes, *, head_only: bool = False):
    conn = await RawConn.open(port)
    try:
        await conn.send(data)
        return await conn.read_reply(head_only=head_only), await conn.closed_by_peer(1.0)
    except TimeoutError:
        return None, False
    finally:
        await conn.close()


async def test_routes_match_segments_and_decode_query(server: AdminHttpServer) -> None:
    """``{name}`` takes one percent-decoded segment; the query string is decoded."""
    conn = await RawConn.open(server.port)
    try:
        await conn.send(build("GET", "/things/a%20b?kind=breaker.&since=3",
                              headers={"Authorization": "Bearer t"}))
        r = await conn.read_reply()
    finally:
        await conn.close()
    assert r.status == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"method": "GET", "path": "/things/a b",
                        "query": {"kind": "breaker.", "since": "3"},
                        "match": {"name": "a b"}, "body": "", "auth": "Bearer t"}


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(
        server: AdminHttpServer) -> None:
    """An unknown path answers 404; a known path with another method 405 naming the
    methods it has (HEAD with GET); an empty ``{name}`` segment does not match."""
    conn = await RawConn.open(server.port)
    try:
        await conn.send(build("GET", "/nothing"))
        assert (await conn.read_reply()).status == 404
        await conn.send(build("DELETE", "/things/x"))
        r = await conn.read_reply()
        assert r.status == 405
        assert r.headers["allow"] == "GET, HEAD, POST"
        await conn.send(build("GET", "/things/"))
        assert (await conn.read_reply()).status == 404
    finally:
        await conn.close()


async def test_head_answers_a_get_route_without_body(server: AdminHttpServer) -> None:
    """HEAD on a GET route sends the GET's head (its Content-Length) and no body; the
    connection stays usable."""
    conn = await RawConn.open(server.port)
    try:
        await conn.send(build("HEAD", "/echo"))
        r = await conn.read_reply(head_only=True)
        assert r.status == 200
        assert int(r.headers["content-length"]) > 0
        await conn.send(build("GET", "/echo"))
        assert (await conn.read_reply()).json()["method"] == "GET"
    finally:
        await conn.close()


async def test_pipelined_requests_answered_in_order_with_bodies(
        server: AdminHttpServer) -> None:
    """Three requests in one write (one with a chunked body) come back in order on the
    same connection."""
    data = (build("POST", "/things/one", body=b'{"mode": "on"}')
            + build("POST", "/things/two", headers={"Transfer-Encoding": "chunked"},
                    body=b"3\r\nabc\r\n0\r\n\r\n")
            + build("GET", "/things/three"))
    conn = await RawConn.open(server.port)
    try:
        await conn.send(data)
        replies = [await conn.read_reply() for _ in range(3)]
    finally:
        await conn.close()
    assert [r.json()["match"]["name"] for r in replies] == ["one", "two", "three"]
    assert replies[0].json()["body"] == '{"mode": "on"}'
    assert replies[1].json()["body"] == "abc"
    assert all(r.keep_alive for r in replies)


async def test_expect_continue_gets_100_before_the_body(server: AdminHttpServer) -> None:
    """A POST with ``Expect: 100-continue`` gets the interim 100 before it sends its
    body, then the answer (as curl expects for bodies over 1 KiB)."""
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        w.write(b"POST /things/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                b"Expect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"ok")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        w.close()
        await w.wait_closed()


async def test_connection_close_is_honoured(server: AdminHttpServer) -> None:
    """A request with ``Connection: close`` is answered with it, then the server closes."""
    r, closed = await _one(server.port, build("GET", "/echo", headers={"Connection": "close"}))
    assert r is not None
    assert r.status == 200
    assert r.headers["connection"] == "close"
    assert closed


async def test_handler_failure_answers_500_and_keeps_serving(
        server: AdminHttpServer) -> None:
    """A handler that raises answers 500 (logged); the connection serves the next one."""
    conn = await RawConn.open(server.port)
    try:
        await conn.send(build("GET", "/boom"))
        assert (await conn.read_reply()).status == 500
        await conn.send(build("GET", "/echo"))
        assert (await conn.read_reply()).status == 200
    finally:
        await conn.close()


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /echo HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\n", 431),
    (b"POST /things/x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
    (b"POST /things/x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
    (b"POST /things/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
], ids=["request-line", "header", "head-too-large", "body-too-large", "bad-length",
        "bad-chunk"])
async def test_hostile_input_is_refused_and_closed(server: AdminHttpServer, data: bytes,
                                                   status: int) -> None:
    """Each malformed or oversized request is answered with its status and closed."""
    r, closed = await _one(server.port, data)
    assert r is not None
    assert r.status == status
    assert r.headers["connection"] == "close"
    assert closed


async def test_chunked_body_over_the_limit_is_413(server: AdminHttpServer) -> None:
    """A chunked body is counted as it arrives: past the limit it is refused."""
    size = MAX_BODY_BYTES + 10
    data = (b"POST /things/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % size + b"a" * size + b"\r\n0\r\n\r\n")
    r, closed = await _one(server.port, data)
    assert r is not None
    assert r.status == 413
    assert closed


async def test_slow_request_gets_408(server: AdminHttpServer) -> None:
    """A request still incomplete after the request timeout (0.5 s here) is answered
    408 and closed (slowloris)."""
    conn = await RawConn.open(server.port)
    try:
        await conn.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        r = await conn.read_reply(timeout=10)
        assert r.status == 408
        assert await conn.closed_by_peer()
    finally:
        await conn.close()


async def test_refusal_waits_for_the_answer_in_progress(server: AdminHttpServer,
                                                        gate: _Gate) -> None:
    """A bad request pipelined behind one still being answered is refused after that
    answer, in order."""
    conn = await RawConn.open(server.port)
    try:
        await conn.send(build("GET", "/slow") + b"BAD REQUEST LINE\r\n\r\n")
        await asyncio.wait_for(gate.entered.wait(), 10)
        gate.open.set()
        assert (await conn.read_reply()).status == 200
        assert (await conn.read_reply()).status == 400
        assert await conn.closed_by_peer()
    finally:
        await conn.close()


async def test_stop_lets_the_answer_in_progress_finish(gate: _Gate) -> None:
    """``stop`` closes the port at once, lets a request being answered complete (with
    ``Connection: close``), then returns with no connection or task left."""
    routes = Routes()
    routes.add("GET", "/slow", gate)
    srv = AdminHttpServer(routes)
    await srv.start("127.0.0.1", 0)
    conn = await RawConn.open(srv.port)
    try:
        await conn.send(build("GET", "/slow"))
        await asyncio.wait_for(gate.entered.wait(), 10)
        stopping = asyncio.create_task(srv.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", srv.port)
        gate.open.set()
        r = await conn.read_reply()
        assert r.status == 200
        assert r.headers["connection"] == "close"
        await asyncio.wait_for(stopping, 10)
    finally:
        await conn.close()
    assert not srv.connections
    assert not srv.tasks


def test_route_pattern_must_be_absolute() -> None:
    """A pattern without a leading slash is refused when added, naming it."""
    with pytest.raises(ValueError, match="'things' must start with '/'"):
        Routes().add("GET", "things", _echo)
