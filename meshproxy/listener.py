"""HTTP listeners: their listening sockets, their router, and the connections they
accepted.

Both kinds of listener accept on sockets bound with ``SO_REUSEPORT`` (so that worker
processes can share the port) in an ``epoll`` of their own
(:class:`~meshproxy.poller.Poller`, which the event loop polls as one descriptor):
an :class:`HttpListener` makes each client a
:class:`~meshproxy.http.transport.PollTransport` driving an
:class:`~meshproxy.http.server.HttpServerProtocol`, and keeps the set of live
connections (for drain), the current :class:`~meshproxy.router.Router` (swapped whole
on reload) and its bound metrics. TCP listeners live in :mod:`meshproxy.tcp`;
:mod:`meshproxy.proxy` creates, updates and retires both.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from _socket import socket as CSocket
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from meshproxy.http.deadlines import TimeoutWheel
from meshproxy.http.server import HttpServerProtocol
from meshproxy.http.transport import READ_EVENTS, PollTransport
from meshproxy.poller import ACCEPT_BATCH, Acceptor, Poller, listening_sockets, socket_of

if TYPE_CHECKING:
    from meshproxy.config.listeners import HttpListenerConfig, TcpListenerConfig
    from meshproxy.metrics import Stats
    from meshproxy.router import Router

log = logging.getLogger(__name__)



class ListenerBase(ABC):
    """What HTTP and TCP listeners share: the listening sockets in their epoll, the set
    of open connections, byte counters, the timeout tick and the drain bookkeeping (an
    event set once draining leaves no connection). Subclasses give ``kind``,
    ``snapshot``, ``tick_period``, ``check_timeouts`` and ``accepted`` (serve one new
    client)."""

    kind = ""

    def __init__(self, config: HttpListenerConfig | TcpListenerConfig, *,
                 loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        self.name = config.name
        self.config = config
        self.loop = loop
        self.stats = stats
        self.server: Acceptor | None = None
        self.poller = Poller(loop, self.accept)
        self.connections: set = set()
        self.draining = False
        self._empty: asyncio.Event | None = None  # set when draining and none is left
        self._rx = stats.bytes_received.labels(self.name)
        self._tx = stats.bytes_sent.labels(self.name)
        # Bytes of closed connections, in plain integers until the next sweep: a
        # prometheus-client update takes a lock, and two per closed connection showed
        # in connection-per-request profiles.
        self._rx_pending = 0
        self._tx_pending = 0
        # The connections' timeouts: one periodic tick for all of them, running while
        # there are connections (a timer per connection cost more than everything else
        # a short connection does in Python).
        self._ticker: asyncio.TimerHandle | None = None

    @property
    def bind_key(self) -> tuple[str, str, int]:
        return (self.kind, self.config.address, self.config.port)

    @property
    def port(self) -> int:
        """The bound port (differs from the config's when it says 0)."""
        server = self.server
        assert server is not None
        assert server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def start(self, *, share: Acceptor | None = None) -> None:
        """Listen on the configured address; with ``share`` (a listener of ours on the
        same address being replaced), on a duplicate of its socket: the two share one
        accept queue, so when the old one closes the connections waiting in it are not
        reset (closing one of several SO_REUSEPORT sockets resets those queued on it)."""
        try:
            sockets = await listening_sockets(self.loop, self.config.address,
                                               self.config.port, share)
        except BaseException:
            self.poller.close()
            raise
        self.server = Acceptor(self.poller, sockets)

    def accept(self, lsock: socket.socket) -> None:
        """Accept the clients waiting on ``lsock`` (at most ``ACCEPT_BATCH``; the rest
        at the next poll)."""
        family = lsock.family
        for _ in range(ACCEPT_BATCH):
            try:
                # The C accept: a descriptor and the client's address, no wrapper socket
                # (not in the stubs).
                fd, peer = lsock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                break
            except OSError as e:
                # EMFILE and the like: the connection stays queued; say so, try again
                # at the next poll.
                log.warning("%s listener %s: accept failed: %s", self.kind, self.name, e)
                break
            self.accepted(socket_of(family, fd), peer)

    @abstractmethod
    def accepted(self, sock: CSocket, peer: Any) -> None:
        """Serve a new client: its socket (left in blocking mode: every read and write
        passes ``MSG_DONTWAIT``) and the address accept returned."""

    def connection_closed(self, conn, rx: int = 0, tx: int = 0) -> None:
        """``conn`` has ended; ``rx``/``tx``: its bytes not counted yet, if any."""
        self._rx_pending += rx
        self._tx_pending += tx
        if conn in self.connections:
            self.connections.discard(conn)
            if self.draining:
                self.flush_counts()  # a retired listener may see no more sweeps
            if not self.connections:
                if self._empty is not None:
                    self._empty.set()
                if self.server is not None and not self.server.sockets:
                    self.poller.close()  # no longer accepting and nothing left to serve

    def count_bytes(self, rx: int, tx: int) -> None:
        """Add bytes to the counters (moved into the metrics by ``flush_counts``)."""
        self._rx_pending += rx
        self._tx_pending += tx

    def flush_counts(self) -> None:
        """Move the plain-integer counts into the metrics (each sweep, before a scrape
        and when the listener is retired)."""
        if self._rx_pending:
            self._rx.inc(self._rx_pending)
            self._rx_pending = 0
        if self._tx_pending:
            self._tx.inc(self._tx_pending)
            self._tx_pending = 0

    # --- the timeout tick --------------------------------------------------------------
    @abstractmethod
    def tick_period(self) -> float:
        """Seconds between two checks of the connections' timeouts."""

    @abstractmethod
    def check_timeouts(self, now: float) -> None:
        """Close what has timed out at loop time ``now`` (each tick)."""

    def start_ticking(self) -> None:
        """Called with each new connection: the tick runs while there are any."""
        if self._ticker is None:
            self._ticker = self.loop.call_later(self.tick_period(), self._tick)

    def stop_ticking(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self) -> None:
        self._ticker = None
        if self.connections:
            self.check_timeouts(self.loop.time())
        if self.connections:  # otherwise the next connection starts it again
            self._ticker = self.loop.call_later(self.tick_period(), self._tick)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if not self.connections:
            self.poller.close()

    def abort_connections(self) -> None:
        """Cut every open connection now, whatever is unsent."""
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()

    async def _wait_empty(self, timeout: float) -> None:
        self._empty = asyncio.Event()
        if self.connections:
            try:
                async with asyncio.timeout(timeout):
                    await self._empty.wait()
            except TimeoutError:
                pass


class HttpListener(ListenerBase):
    """An L7 listener."""

    kind = "http"
    config: HttpListenerConfig

    def __init__(self, config: HttpListenerConfig, router: Router, *,
                 loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        super().__init__(config, loop=loop, stats=stats)
        self.router = router
        self._opened = 0
        self._active = stats.downstream_connections.labels(self.name)
        self._accepted = stats.downstream_connections_total.labels(self.name)
        #: Route timeouts of requests on the fused path (one timer for all of them).
        self.timeouts = TimeoutWheel(loop)

    def accepted(self, sock: CSocket, peer: Any) -> None:
        protocol = HttpServerProtocol(self)
        transport = PollTransport(self.poller, sock, peer, protocol)
        # Registered before connection_made, which may close it (a draining listener);
        # bytes already in are reported at the next poll.
        self.poller.add(transport, READ_EVENTS)
        protocol.connection_made(transport)  # type: ignore[arg-type]

    def update(self, config: HttpListenerConfig, router: Router) -> None:
        """A reload kept this listener's address: new routes and limits, same socket.
        Requests in flight keep their route; the next request on any connection uses
        the new router."""
        self.config = config
        self.router = router
        for conn in self.connections:
            conn.limits = config.limits

    # --- called by the connections -------------------------------------------------
    def connection_opened(self, conn: HttpServerProtocol) -> None:
        # Counted in plain integers; sweep() moves them into the metrics.
        self.connections.add(conn)
        self._opened += 1
        self.start_ticking()  # header and idle timeouts
        if self.draining:
            conn.drain()

    def tick_period(self) -> float:
        limits = self.config.limits
        return max(min(limits.header_timeout, limits.idle_timeout) / 4, 0.05)

    def check_timeouts(self, now: float) -> None:
        for conn in list(self.connections):
            conn.check_timeouts(now)

    def count_local_reply(self, reason: str, status: int) -> None:
        self.stats.local_replies.labels(self.name, reason, str(status)).inc()

    def sweep(self) -> None:
        """Periodic (and before a scrape): move connection counts and the connections'
        byte counts into the metrics."""
        for conn in self.connections:
            conn.flush_bytes()
        self.flush_counts()
        self._active.set(len(self.connections))
        if self._opened:
            self._accepted.inc(self._opened)
            self._opened = 0

    # --- shutdown --------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Stop accepting, close idle connections, let the others finish their current
        response (up to ``timeout`` seconds), then cut what is left."""
        self.stop_accepting()
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        await self._wait_empty(timeout)
        self.abort_connections()
        self.sweep()
        self.timeouts.close()
        self.stop_ticking()
        self.poller.close()

    def snapshot(self) -> dict:
        return {"name": self.name, "protocol": "http", "address": self.config.address,
                "port": self.port if self.server else self.config.port,
                "connections": len(self.connections),
                "routes": [{"name": r.name, "cluster": r.cluster.name}
                           for r in self.router.routes]}
