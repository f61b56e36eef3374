"""The benchmark's ``python-floor`` reference relays HTTP/1.1 faithfully (or the ceiling
it stands for would be a lie): requests and responses pass byte for byte, pipelined ones
in order, several clients each on their own upstream connection, and a malformed request
closes the client's connection without reaching the upstream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from loadtests.floor import serve
from support.net import free_port


class _Backend:
    """A keep-alive HTTP/1.1 server answering each request with its own target; it
    records every byte it received."""

    def __init__(self) -> None:
        self.received = b""
        self.served: list[list[bytes]] = []  # per connection, the targets it answered
        self.open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served: list[bytes] = []
        self.served.append(served)
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += head
                target = head.split(b" ", 2)[1]
                served.append(target)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(target), target))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.open -= 1


@pytest.fixture
async def floor() -> AsyncIterator[tuple[int, _Backend]]:
    backend = _Backend()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    up_port = server.sockets[0].getsockname()[1]
    port = free_port()
    task = asyncio.create_task(serve("127.0.0.1", port, ("127.0.0.1", up_port)))
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            break
        await asyncio.sleep(0.02)
    try:
        yield port, backend
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(200):  # the floor closed its upstream connections: let them end
            if not backend.open:
                break
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()


async def _responses(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        out.append(await reader.readexactly(length))
    return out


async def test_pipelined_requests_pass_byte_for_byte_and_in_order(floor) -> None:
    port, backend = floor
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reqs = [b"GET /%d HTTP/1.1\r\nHost: x\r\nX-Custom: %d\r\n\r\n" % (i, i) for i in range(5)]
    writer.write(b"".join(reqs))
    assert await _responses(reader, 5) == [b"/%d" % i for i in range(5)]
    assert backend.received == b"".join(reqs)  # nothing rewritten, added or dropped
    writer.close()
    await writer.wait_closed()


async def test_each_client_gets_its_own_upstream_connection(floor) -> None:
    port, backend = floor
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for i, (reader, writer) in enumerate(clients):
        writer.write(b"GET /c%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert await _responses(reader, 1) == [b"/c%d" % i]
    # (the fixture's readiness probe opened one more, which served nothing)
    assert sorted(t for t in backend.served if t) == [[b"/c0"], [b"/c1"], [b"/c2"]]
    for _, writer in clients:
        writer.close()
        await writer.wait_closed()


async def test_malformed_request_closes_the_client_and_reaches_nobody(floor) -> None:
    port, backend = floor
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"NOT A REQUEST\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
    assert backend.received == b""
    writer.close()
    await writer.wait_closed()


async def test_closed_clients_are_forgotten() -> None:
    """The floor keeps only open clients (for closing them on shutdown): a
    connection-per-request run must not grow its memory with every client."""
    from loadtests.floor import _Client

    class _Transport:
        def close(self) -> None:
            pass

    clients: set = set()
    c = _Client(("127.0.0.1", free_port()), clients)
    c.connection_made(_Transport())  # type: ignore[arg-type]
    assert clients == {c}
    c.connection_lost(None)
    assert clients == set()
    with contextlib.suppress(asyncio.CancelledError):
        await c.task  # type: ignore[misc]
