"""The L7 listener's client transport (meshproxy/http/transport.py: accepted sockets in
the listener's own epoll, not uvloop's transports), end to end with real sockets:
reading paused and resumed with bytes waiting, a reset while paused, the write buffer
bounded for a client that stops reading, the client's address.

Other behaviours of the same code are pinned where they belong: backpressure in
test_http_proxy.py (test_slow_reader_pauses_upstream), drain in test_process.py and
test_http_proxy.py, bad input in test_bad_input.py.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct

import pytest
from proxy_kit import http_config
from rawclient import RawConn, build, request

from meshproxy.http.server import HttpServerProtocol
from meshproxy.http.transport import PollTransport


async def _eventually(check, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def _only_connection(p):
    listener = p.listeners["web"]
    await _eventually(lambda: len(listener.connections) == 1, "expected one client connection")
    return next(iter(listener.connections))


async def test_bytes_that_arrive_while_reading_is_paused_are_read_on_resume(
        upstream, proxy_factory) -> None:
    """With one pipelined request allowed behind the one in progress, the third
    request's bytes arrive while the client's reading is paused; they are read when it
    resumes (no new edge comes for them), and all three are answered in order."""
    p = await proxy_factory(http_config([upstream.address],
                                        limits=", limits: {max_pipelined: 1}"))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build("GET", "/slow/0.5") + build("GET", "/echo?2"))
    client = await _only_connection(p)
    assert isinstance(client.transport, PollTransport)
    await _eventually(lambda: client.transport.paused,
                      "reading did not pause behind the pipelined request")
    await conn.send(build("GET", "/echo?3"))
    await asyncio.sleep(0.1)
    assert client.transport.paused
    assert client.transport.pending
    targets = [(await conn.read_reply()).json()["target"] for _ in range(3)]
    assert targets == ["/slow/0.5", "/echo?2", "/echo?3"]
    await conn.close()


async def test_a_reset_while_reading_is_paused_ends_the_connection_at_once(
        upstream, proxy_factory) -> None:
    """A client that resets its connection while the proxy has paused reading it is
    gone as soon as the reset arrives (its edge comes once), not when the slow response
    in progress would have been written."""
    p = await proxy_factory(http_config([upstream.address],
                                        limits=", limits: {max_pipelined: 1}"))
    listener = p.listeners["web"]
    conn = await RawConn.open(listener.port)
    await conn.send(build("GET", "/slow/30") + build("GET", "/echo?2"))
    client = await _only_connection(p)
    await _eventually(lambda: client.transport.paused,
                      "reading did not pause behind the pipelined request")
    conn.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                    struct.pack("ii", 1, 0))
    conn.writer.transport.abort()
    await _eventually(lambda: not listener.connections, "the reset connection is still open")
    assert client.transport.closed


async def test_a_client_that_stops_reading_gets_a_bounded_write_buffer(
        upstream, proxy_factory) -> None:
    """A client that reads nothing of a 32 MiB response: past the transport's high-water
    mark the protocol is told to pause writing, so the bytes buffered for the client
    stay within a few reads of it; reading again delivers every byte."""
    p = await proxy_factory(http_config([upstream.address]))
    size = 32 * 1024 * 1024
    conn = await RawConn.open(p.listeners["web"].port)
    conn.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                    65536)
    await conn.send(build("GET", f"/big/{size}"))
    client = await _only_connection(p)
    await _eventually(lambda: client.transport.writing_paused, "writing was never paused")
    await asyncio.sleep(0.3)  # what the upstream still sends would pile up here
    assert client.transport.get_write_buffer_size() < 1024 * 1024
    await conn.reader.readuntil(b"\r\n\r\n")
    assert await conn.read_count(size) == size
    assert not client.transport.writing_paused
    await conn.close()


async def test_the_client_address_comes_from_accept(upstream, proxy_factory) -> None:
    """``peername`` is the address accept returned: the client's own, and what
    X-Forwarded-For names."""
    p = await proxy_factory(http_config([upstream.address]))
    conn = await RawConn.open(p.listeners["web"].port)
    await conn.send(build())
    r = await conn.read_reply()
    client = await _only_connection(p)
    assert client.transport.get_extra_info("peername")[:2] == \
        conn.writer.get_extra_info("sockname")[:2]
    sent = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert sent["x-forwarded-for"] == "127.0.0.1"
    await conn.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_an_ipv6_listener_names_its_clients(upstream, proxy_factory) -> None:
    """An IPv6 listener accepts and proxies; the client's address (from accept, a
    4-tuple for IPv6) is what X-Forwarded-For names."""
    p = await proxy_factory(http_config([upstream.address]).replace(
        "port: 0", 'address: "::1", port: 0'))
    conn = await RawConn.open(p.listeners["web"].port, host="::1")
    await conn.send(build())
    r = await conn.read_reply()
    assert r.status == 200
    sent = dict((k.lower(), v) for k, v in r.json()["headers"])
    assert sent["x-forwarded-for"] == "::1"
    await conn.close()


async def test_a_closed_client_connection_is_freed_without_the_cycle_collector(
        upstream, proxy_factory) -> None:
    """A client connection that has closed leaves no reference cycle behind (protocol
    and transport refer to each other while it is open): with the cycle collector off,
    fifty connection-per-request clients leave no protocol object alive. Left to the
    collector, a connection-per-request load grew a proxy's heap to 184 MB."""
    p = await proxy_factory(http_config([upstream.address]))
    listener = p.listeners["web"]
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            r = await request(listener.port, headers={"Connection": "close"})
            assert r.status == 200
        await _eventually(lambda: not listener.connections, "connections still open")
        await asyncio.sleep(0.05)  # connection_lost runs on a later loop turn
        alive = sum(isinstance(o, HttpServerProtocol) for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0


async def test_a_client_that_takes_nothing_for_the_idle_timeout_is_cut(
        upstream, proxy_factory) -> None:
    """A client that stops reading a large response is cut once it has taken none of
    the bytes waiting for it for the idle timeout (nginx's send_timeout, and like it
    measured between writes the socket takes); while it reads slowly but steadily, it
    is not."""
    p = await proxy_factory(http_config([upstream.address],
                                        limits=", limits: {idle_timeout: 1.0}"))
    listener = p.listeners["web"]
    size = 32 * 1024 * 1024
    slow = await RawConn.open(listener.port)
    slow.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                    65536)
    steady = await _only_connection(p)
    # The proxy sees a client's progress only as room in its own send buffer: kept
    # small (no autotuning to megabytes), what the client reads frees room at once.
    steady.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET,
                                                         socket.SO_SNDBUF, 65536)
    await slow.send(build("GET", f"/big/{size}"))
    await slow.reader.readuntil(b"\r\n\r\n")
    for _ in range(16):  # 3.2 s, over three idle timeouts, taking 64 KiB each 0.2 s
        assert await asyncio.wait_for(slow.reader.read(65536), 5)
        await asyncio.sleep(0.2)
    assert not steady.transport.closed
    assert steady.transport.out is not None  # it was waiting on the client all along
    await _eventually(lambda: steady.transport.closed, "a stalled client was not cut",
                      timeout=10)
    await _eventually(lambda: not listener.connections, "the connection is still counted")
    await slow.close()
