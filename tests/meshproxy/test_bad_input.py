"""Hostile and malformed client input, each over a raw socket: a local reply and a close.

Pins the status and ``x-mesh-reason`` of each refusal (400 malformed / smuggling,
408 slow head, 413 body, 414 request line, 431 header block) and that nothing of a
refused request reaches the upstream.
"""

from __future__ import annotations

import asyncio

import pytest
from proxy_kit import http_config
from rawclient import RawConn

LIMITS = (", limits: {max_header_bytes: 4096, max_request_line_bytes: 256, "
          "max_body_bytes: 1000, header_timeout: 0.4, max_headers: 20}")


@pytest.fixture
async def port(upstream, proxy_factory) -> int:
    p = await proxy_factory(http_config([upstream.address], limits=LIMITS))
    return p.listeners["web"].port


async def _refused(port: int, data: bytes) -> tuple[int, str | None, bool]:
    conn = await RawConn.open(port)
    try:
        await conn.send(data)
        r = await conn.read_reply()
        return r.status, r.reason, await conn.closed_by_peer()
    finally:
        await conn.close()


CASES = {
    "malformed request line": (b"GET /x HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
    "malformed header": (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "conflicting content-length": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400),
    "non-numeric content-length": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello", 400),
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
        b"0\r\n\r\n", 400),
    "transfer-encoding not ending in chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    "missing host on HTTP/1.1": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two host headers": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "request line over its limit": (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
                                    414),
    "header block over its limit": (
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431),
    "too many headers": (
        b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(30))
        + b"\r\n", 431),
    "declared body over its limit": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", 413),
    "chunked body over its limit": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3e8\r\n" + b"x" * 1000 + b"\r\n" + b"10\r\n" + b"y" * 16 + b"\r\n0\r\n\r\n", 413),
    "asterisk-form on GET": (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "absolute-form not a URL": (b"GET http:///x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "CONNECT": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    "binary garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_request_is_refused_and_closed(case: str, port: int, upstream) -> None:
    """Each malformed or over-limit request gets its 4xx with a reason, the connection is
    closed, and the upstream never sees it."""
    data, status = CASES[case]
    got, reason, closed = await _refused(port, data)
    assert got == status
    assert reason
    assert closed
    assert upstream.requests == []


async def test_slow_headers_get_408(port: int, upstream) -> None:
    """A client that starts a request head and never finishes it (slowloris) gets 408
    header_timeout once the header timeout passes."""
    conn = await RawConn.open(port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n")
    for _ in range(3):  # dribbling more bytes does not reset the clock
        await asyncio.sleep(0.1)
        await conn.send(b"X-More: 1\r\n")
    r = await conn.read_reply(timeout=10)
    await conn.close()
    assert (r.status, r.reason) == (408, "header_timeout")
    assert upstream.requests == []


async def test_bad_request_after_good_pipelined_one_is_answered_in_order(port: int) -> None:
    """A valid request followed by a malformed one: the first is answered normally, then
    400, then the connection closes."""
    conn = await RawConn.open(port)
    await conn.send(b"GET /slow/0.2 HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n")
    first = await conn.read_reply()
    second = await conn.read_reply()
    closed = await conn.closed_by_peer()
    await conn.close()
    assert first.status == 200
    assert first.json()["target"] == "/slow/0.2"
    assert second.status == 400
    assert closed


async def test_idle_keepalive_connection_is_closed(upstream, proxy_factory) -> None:
    """A keep-alive connection idle past idle_timeout is closed by the proxy."""
    p = await proxy_factory(http_config([upstream.address],
                                        limits=", limits: {idle_timeout: 0.3}"))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await conn.read_reply()).status == 200
    assert await conn.closed_by_peer(timeout=10)
    await conn.close()
