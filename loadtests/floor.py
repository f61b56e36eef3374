"""``python -m loadtests.floor``: the least work an HTTP-aware proxy in Python can do.

A reference target of the proxy benchmark (``python-floor``), not a proxy anyone should
run: it answers "how fast can *any* L7 proxy on uvloop and httptools be on this
machine", so that meshproxy's distance to nginx splits into what the platform costs
(this floor's distance) and what meshproxy's own features cost (the rest).

It does only what every HTTP/1.1 proxy must: accept a client, give it one upstream
connection of its own (no pool, no balancer), feed both directions through httptools
(request and response parsers, message boundaries only: no header is looked at,
rewritten, added or removed) and forward the bytes as they arrive, one write per read.
No routing, timeouts, metrics, limits, hop-by-hop handling or ``X-Forwarded-For``: all
of which meshproxy does and a real proxy must. A parse error closes the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import httptools
import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, down: _Client) -> None:
        self.down = down
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.down.close()
            return
        if self.down.transport is not None:
            self.down.transport.write(data)

    def on_message_complete(self) -> None:
        """Boundaries are all a proxy needs from the parser here."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int], clients: set[_Client]) -> None:
        self.upstream_addr = upstream
        self.clients = clients  # the open ones, closed on shutdown
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.up: _Upstream | None = None
        self.pending: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.clients.add(self)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: _Upstream(self), *self.upstream_addr)
        except OSError:
            self.close()
            return
        self.up = up
        if self.transport is None:
            up.transport.close()  # type: ignore[union-attr]
        elif self.pending:
            up.transport.write(b"".join(self.pending))  # type: ignore[union-attr]
            self.pending = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.write(data)
        else:
            self.pending.append(data)

    def on_message_complete(self) -> None:
        """Boundaries are all a proxy needs from the parser here."""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.clients.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.close()


async def serve(host: str, port: int, upstream: tuple[str, int]) -> None:
    """Relay until SIGTERM or SIGINT (or cancelled); every connection is closed on the
    way out."""
    loop = asyncio.get_running_loop()
    clients: set[_Client] = set()
    server = await loop.create_server(lambda: _Client(upstream, clients), host, port,
                                      backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with server:
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        for c in list(clients):
            c.close()
            if c.task is not None:
                c.task.cancel()
        await asyncio.sleep(0)  # let the transports deliver connection_lost


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    ap.add_argument("--upstream", required=True, help="HOST:PORT to relay to")
    args = ap.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    uvloop.run(serve("127.0.0.1", args.port, (host, int(port))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
