"""L4 TCP listeners: bytes both ways, half-close, connect failure, idle timeout, spread
over endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from load_kit import eventually


@pytest.fixture
async def echo_server():
    """A TCP server that echoes until EOF, then sends 'bye' and closes (half-close)."""
    conns = 0
    writers: set[asyncio.StreamWriter] = set()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        writers.add(w)
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.write(b"bye")
            await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()
            writers.discard(w)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.conns = lambda: conns  # type: ignore[attr-defined]
    yield server
    server.close()
    for w in list(writers):
        w.transport.abort()
    await server.wait_closed()


async def exchange(port: int, data: bytes, *, timeout: float = 10) -> bytes:
    """Send ``data`` and EOF to the proxy on ``port``; what comes back until its EOF."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(data)
        w.write_eof()
        return await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
        await w.wait_closed()


@contextlib.asynccontextmanager
async def serving(handle) -> AsyncIterator[int]:
    """An asyncio TCP server on 127.0.0.1 running ``handle``; yields its port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def tcp_config(endpoints: list[str], idle: float = 3600) -> str:
    eps = ", ".join(f'"{e}"' for e in endpoints)
    return f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: tcp, name: raw, port: 0, cluster: c, idle_timeout: {idle}}}
clusters:
  - {{name: c, endpoints: [{eps}], connect_timeout: 2}}
"""


async def test_bytes_flow_both_ways_with_half_close(echo_server, proxy_factory) -> None:
    """A megabyte goes through and back; the client's EOF reaches the server, whose
    last words after it still reach the client."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
    payload = bytes(range(256)) * 4096
    w.write(payload)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(payload)), 20)
    assert got == payload
    w.write_eof()
    assert await asyncio.wait_for(r.read(), 10) == b"bye"
    w.close()
    await w.wait_closed()


async def test_connect_failure_closes_client(proxy_factory, free_port: int) -> None:
    """No listener behind the endpoint: the client's connection is closed, and the
    outcome is counted."""
    p = await proxy_factory(tcp_config([f"127.0.0.1:{free_port}"]))
    r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
    w.write(b"hello")
    assert await asyncio.wait_for(r.read(), 10) == b""
    w.close()
    await w.wait_closed()
    p.flush_metrics()  # outcomes are batched into the metrics (as before a scrape)
    outcomes = {s.labels["outcome"]: s.value for m in p.stats.registry.collect()
                if m.name == "meshproxy_tcp_connections" for s in m.samples
                if s.name.endswith("_total")}
    assert outcomes["connect_failure"] == 1


async def test_idle_connection_is_closed(echo_server, proxy_factory) -> None:
    """No byte either way for the idle timeout closes both sides."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"], idle=0.3))
    r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
    w.write(b"x")
    assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
    assert await asyncio.wait_for(r.read(), 10) == b""
    w.close()
    await w.wait_closed()


async def test_connections_spread_over_endpoints(proxy_factory) -> None:
    """Round robin at connection level: four connections, two endpoints, two each."""
    counts = [0, 0]

    def make(i: int):
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            counts[i] += 1
            w.write(b"%d" % i)
            await w.drain()
            w.close()
        return handle

    servers = [await asyncio.start_server(make(i), "127.0.0.1", 0) for i in range(2)]
    try:
        eps = [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
        p = await proxy_factory(tcp_config(eps))
        for _ in range(4):
            r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
            await asyncio.wait_for(r.read(), 10)
            w.close()
            await w.wait_closed()
        assert counts == [2, 2]
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


async def test_client_leaving_during_connect_frees_endpoint(proxy_factory) -> None:
    """A client that resets its connection while the proxy is still connecting upstream
    (here: an endpoint that never completes the handshake) leaves the endpoint's active
    count at zero at once; a connect that outlives connect_timeout is counted as
    connect_timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    try:
        p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]).replace(
            "connect_timeout: 2", "connect_timeout: 0.5"))
        ep = p.clusters["c"].endpoints[0]
        r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
        for _ in range(100):
            if ep.active_requests == 1:
                break
            await asyncio.sleep(0.01)
        assert ep.active_requests == 1
        # Gone for good: a reset (a FIN would be a half-close, which is kept open).
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.transport.abort()
        for _ in range(100):
            if ep.active_requests == 0:
                break
            await asyncio.sleep(0.01)
        assert ep.active_requests == 0
        r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
        assert await asyncio.wait_for(r.read(), 10) == b""  # closed after the timeout
        w.close()
        await w.wait_closed()
        p.flush_metrics()  # outcomes are batched into the metrics (as before a scrape)
        outcomes = {s.labels["outcome"]: s.value for m in p.stats.registry.collect()
                    if m.name == "meshproxy_tcp_connections" for s in m.samples
                    if s.name.endswith("_total")}
        assert outcomes["connect_timeout"] == 1
        assert ep.active_requests == 0
    finally:
        for c in fillers:
            c.close()
        listener.close()


async def test_early_eof_reaches_upstream_after_connect(echo_server, proxy_factory) -> None:
    """A client that sends its bytes and EOF before the upstream connection is open still
    gets the whole exchange: the bytes and then the EOF are delivered once connected."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    assert await exchange(p.listeners["raw"].port, b"early") == b"earlybye"


def _counter(p, name: str, **labels: str) -> float:
    for m in p.stats.registry.collect():
        for s in m.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_closed_connections_bytes_and_outcome_reach_the_metrics(
        echo_server, proxy_factory) -> None:
    """A closed connection's bytes and its ``connected`` outcome are counted in plain
    integers and reach the metrics with the next flush (a sweep, or before a scrape),
    exactly once; a listener that drains away flushes them itself."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    lst = p.listeners["raw"]
    for _ in range(3):
        assert await exchange(lst.port, b"x" * 100) == b"x" * 100 + b"bye"
    # the proxy sees both closes a moment later
    await eventually(lambda: not lst.connections, timeout=1)
    p.flush_metrics()
    p.flush_metrics()  # a second flush adds nothing
    assert _counter(p, "meshproxy_tcp_connections_total", listener="raw",
                    outcome="connected") == 3
    assert _counter(p, "meshproxy_downstream_received_bytes_total", listener="raw") == 300
    assert _counter(p, "meshproxy_downstream_sent_bytes_total", listener="raw") == 309
    # A connection still open when the listener drains away: its bytes are counted by
    # the drain itself, with no sweep after it.
    r, w = await asyncio.open_connection("127.0.0.1", lst.port)
    w.write(b"y" * 10)
    assert await asyncio.wait_for(r.readexactly(10), 10) == b"y" * 10
    await lst.drain(0.2)
    assert _counter(p, "meshproxy_downstream_received_bytes_total", listener="raw") == 310
    assert _counter(p, "meshproxy_tcp_connections_total", listener="raw",
                    outcome="connected") == 4
    w.close()


def _held(p) -> int:
    """Bytes the proxy holds for its TCP connections' sides (read, not yet written)."""
    return max((len(side.out or b"") for conn in p.listeners["raw"].connections
                for side in (conn.down, conn.up)), default=0)


async def test_slow_client_backpressures_the_upstream(proxy_factory) -> None:
    """An upstream that sends far more than a client reads: the proxy stops reading the
    upstream (its writes block) instead of buffering, holds at most its limit, and once
    the client reads, every byte arrives in order."""
    total = 64 * 1024 * 1024
    chunk = bytes(range(256)) * 256  # 64 KiB
    written = 0
    finished = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal written
        for _ in range(total // len(chunk)):
            w.write(chunk)
            await w.drain()
            written += len(chunk)
        finished.set()
        w.close()

    async with serving(handle) as port:
        p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
        r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port,
                                             limit=64 * 1024)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        got = await r.readexactly(len(chunk))  # flowing, then the client stops reading
        assert got == chunk
        await asyncio.sleep(1.0)
        assert not finished.is_set()
        # Socket buffers on the way take a few MB; the proxy itself at most its limit.
        assert written < total // 2
        assert _held(p) <= 256 * 1024 + 65536
        received = len(got)
        pattern = bytes(range(256)) * 4097  # any read of up to 1 MiB, at any offset
        while True:
            data = await asyncio.wait_for(r.read(1 << 20), 20)
            if not data:
                break
            offset = received % 256
            assert data == pattern[offset:offset + len(data)]  # every byte, in order
            received += len(data)
            assert _held(p) <= 256 * 1024 + 65536
        assert received == total
        assert finished.is_set()
        w.close()
        await w.wait_closed()


async def test_slow_upstream_backpressures_the_client(proxy_factory) -> None:
    """A client that sends far more than its upstream reads: the client's writes block
    instead of the proxy buffering, and the upstream, once it reads, gets every byte."""
    total = 64 * 1024 * 1024
    reading = asyncio.Event()
    got = bytearray()
    done = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await reading.wait()
        while data := await r.read(1 << 20):
            got.extend(data)
        w.write(b"%d" % len(got))
        await w.drain()
        w.close()
        done.set()

    async with serving(handle) as port:
        p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
        r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
        payload = bytes(range(256)) * 4096  # 1 MiB
        sent = 0

        async def send_all() -> None:
            nonlocal sent
            for _ in range(total // len(payload)):
                w.write(payload)
                await w.drain()
                sent += len(payload)
            w.write_eof()

        sender = asyncio.create_task(send_all())
        await asyncio.sleep(1.0)
        assert sent < total // 2  # the client is held back, not the proxy's memory
        assert _held(p) <= 256 * 1024 + 65536
        reading.set()
        await asyncio.wait_for(sender, 30)
        assert await asyncio.wait_for(r.read(), 30) == b"%d" % total
        await done.wait()
        assert len(got) == total
        assert bytes(got[:len(payload)]) == payload
        w.close()
        await w.wait_closed()


async def test_upstream_reset_cuts_the_client_and_frees_the_endpoint(proxy_factory) -> None:
    """An upstream that resets its connection mid-stream: the client's connection ends
    (no hang), the endpoint's active count returns to zero, the listener forgets it."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"partial")
        await w.drain()
        await r.readexactly(3)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.transport.abort()

    async with serving(handle) as port:
        p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
        ep = p.clusters["c"].endpoints[0]
        r, w = await asyncio.open_connection("127.0.0.1", p.listeners["raw"].port)
        assert await asyncio.wait_for(r.readexactly(7), 10) == b"partial"
        w.write(b"go!")
        try:
            assert await asyncio.wait_for(r.read(), 10) == b""
        except ConnectionResetError:
            pass  # a reset passed on as a reset is as good as an EOF here
        await eventually(lambda: not p.listeners["raw"].connections, timeout=1)
        assert ep.active_requests == 0
        w.close()


async def test_endpoint_by_name_is_resolved(echo_server, proxy_factory) -> None:
    """An endpoint given by host name (not an address) is resolved, then connected."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"localhost:{port}"]))
    assert await exchange(p.listeners["raw"].port, b"named") == b"namedbye"


async def test_a_burst_of_connections_is_served(echo_server, proxy_factory) -> None:
    """Three hundred clients connecting at once (more than one poll accepts) are all
    served, and all closed connections leave the listener."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    lport = p.listeners["raw"].port
    results = await asyncio.gather(*(exchange(lport, b"%d" % i, timeout=20)
                                     for i in range(300)))
    assert results == [b"%dbye" % i for i in range(300)]
    await eventually(lambda: not p.listeners["raw"].connections, timeout=2)


async def _client(port: int, data: bytes, *, late: bool) -> bytes:
    """Connect to the proxy and send ``data``, then EOF; what comes back until EOF.
    ``late``: the proxy (on this event loop) has run before the bytes are sent;
    otherwise they are in before it can accept (a blocking connect and send, no await
    between them)."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        if late:
            await asyncio.sleep(0.02)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        r, w = await asyncio.open_connection(sock=sock)
        try:
            return await asyncio.wait_for(r.read(), 10)
        finally:
            w.close()
    finally:
        sock.close()


@pytest.mark.parametrize("read_at_accept", [True, False])
async def test_first_bytes_go_through_read_at_accept_or_not(echo_server, proxy_factory,
                                                             read_at_accept: bool) -> None:
    """Bytes that are in when the client is accepted reach the endpoint (and the reply
    comes back) whether the listener reads them at once or waits for their event."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    listener = p.listeners["raw"]
    listener.early_score = 7 if read_at_accept else 0
    assert await _client(listener.port, b"early", late=False) == b"earlybye"
    # The read at accept happened and found the bytes, or did not happen (it would
    # have found them too).
    assert listener.early_score == (8 if read_at_accept else 0)
    assert listener.read_at_accept() is read_at_accept


async def test_reading_at_accept_is_guessed_from_recent_reads(proxy_factory) -> None:
    """The listener reads new clients at accept while that has lately found bytes more
    often than not; after eight misses in a row only one connection in sixteen tries,
    and one hit resumes reading every time. The score remembers at most eight hits."""
    p = await proxy_factory(tcp_config(["127.0.0.1:9"]))
    lst = p.listeners["raw"]  # no client: the guess alone is exercised
    for _ in range(20):
        lst.early_read(True)
    assert [lst.read_at_accept() for _ in range(3)] == [True] * 3
    for _ in range(7):
        lst.early_read(False)
    assert lst.read_at_accept()  # one hit of the eight still remembered
    lst.early_read(False)
    tries = [lst.read_at_accept() for _ in range(64)]
    assert tries == ([False] * 15 + [True]) * 4
    lst.early_read(True)
    assert all(lst.read_at_accept() for _ in range(10))


async def test_listener_learns_when_clients_speak_late_and_early(echo_server,
                                                                 proxy_factory) -> None:
    """Clients that write only after being accepted stop the reads at accept; clients
    whose bytes are in at accept bring them back; every exchange succeeds throughout."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    listener = p.listeners["raw"]
    for i in range(12):
        assert await _client(listener.port, b"%d" % i, late=True) == b"%dbye" % i
    assert listener.early_score == 0
    assert not listener.read_at_accept()
    for i in range(40):
        assert await _client(listener.port, b"%d" % i, late=False) == b"%dbye" % i
    assert listener.early_score == 8  # the probe hit, then every read found bytes


async def test_ipv6_listener_and_endpoint(proxy_factory) -> None:
    """A listener on ``::1`` proxying to an endpoint at ``[::1]:port``."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        server = await asyncio.start_server(
            lambda r, w: (w.write(b"six"), w.close()), "::1", 0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        port = server.sockets[0].getsockname()[1]
        p = await proxy_factory(tcp_config([f"[::1]:{port}"]).replace(
            "port: 0,", 'address: "::1", port: 0,'))
        r, w = await asyncio.open_connection("::1", p.listeners["raw"].port)
        assert await asyncio.wait_for(r.read(), 10) == b"six"
        w.close()
        await w.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_drain_keeps_open_connections_until_the_timeout(echo_server,
                                                              proxy_factory) -> None:
    """A draining TCP listener refuses new connections at once, lets an open one keep
    flowing both ways, and cuts it when the drain timeout ends."""
    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    lst = p.listeners["raw"]
    lport = lst.port
    r, w = await asyncio.open_connection("127.0.0.1", lport)
    w.write(b"before")
    assert await asyncio.wait_for(r.readexactly(6), 10) == b"before"
    drain = asyncio.create_task(lst.drain(1.0))
    await asyncio.sleep(0.1)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", lport)
    w.write(b"during")
    assert await asyncio.wait_for(r.readexactly(6), 10) == b"during"
    assert not drain.done()
    await asyncio.wait_for(drain, 10)
    try:
        assert await asyncio.wait_for(r.read(), 10) == b""
    except ConnectionResetError:
        pass  # cut: a reset is as good as an EOF here
    assert not lst.connections
    w.close()


async def test_many_connections_with_random_chunks_and_slow_readers(
        echo_server, proxy_factory) -> None:
    """Sixty concurrent connections, each writing a random amount (up to 3 MiB) in
    random chunk sizes, some reading slowly: every echo comes back whole and in order,
    then the server's last word after the client's EOF, and every connection leaves
    the listener. (The pause-and-resume paths are pinned by the two backpressure tests
    above; this one mixes many connections, chunkings and EOFs in one poller.)"""
    import random

    port = echo_server.sockets[0].getsockname()[1]
    p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
    lport = p.listeners["raw"].port
    rng = random.Random(20261127)
    plans = [(rng.randbytes(rng.randint(1, 3 << 20)), rng.randint(1, 200_000),
              rng.random() < 0.3) for _ in range(60)]

    async def one(payload: bytes, chunk: int, slow: bool) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", lport)

        async def send() -> None:
            for i in range(0, len(payload), chunk):
                w.write(payload[i:i + chunk])
                await w.drain()
            w.write_eof()

        sender = asyncio.create_task(send())
        got = bytearray()
        while len(got) < len(payload) + 3:
            data = await r.read(4096 if slow else 1 << 20)
            if not data:
                break
            got += data
            if slow:
                await asyncio.sleep(0)
        await sender
        assert bytes(got) == payload + b"bye"
        assert await r.read() == b""
        w.close()
        await w.wait_closed()

    await asyncio.wait_for(asyncio.gather(*(one(*plan) for plan in plans)), 120)
    await eventually(lambda: not p.listeners["raw"].connections, timeout=2)


async def test_upstream_reset_while_the_client_is_backed_up_cuts_it_at_once(
        proxy_factory) -> None:
    """An upstream that sends more than a client reads, then resets: the proxy has
    stopped reading it (the client is backed up), yet the reset ends the connection at
    once instead of when the client next reads."""
    blocked, go = asyncio.Event(), asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        chunk = b"x" * 65536
        try:
            while True:  # until the socket buffers on the way are full
                w.write(chunk)
                await asyncio.wait_for(w.drain(), 0.5)
        except TimeoutError:
            pass
        blocked.set()
        await go.wait()
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.transport.abort()

    async with serving(handle) as port:
        p = await proxy_factory(tcp_config([f"127.0.0.1:{port}"]))
        lst = p.listeners["raw"]
        _, w = await asyncio.open_connection("127.0.0.1", lst.port, limit=65536)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        w.transport.pause_reading()  # the client reads nothing from here on
        await asyncio.wait_for(blocked.wait(), 30)
        # The proxy holds its limit for the client and has stopped reading the upstream.
        assert [conn.up.paused for conn in lst.connections] == [True]
        go.set()  # the upstream resets
        await eventually(lambda: not lst.connections, timeout=10)
        w.close()
