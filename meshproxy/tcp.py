"""L4 TCP proxying: each accepted connection is piped to one endpoint of a cluster.

Bytes a client sends before the upstream connection is open are buffered, its reading
paused past 256 KiB (nothing is buffered without bound); then bytes flow both ways with
backpressure: when one side cannot take more, reading from the other pauses until it
has drained. Half-close (EOF) is passed through, after every byte before it. A connect
failure closes the client's connection (at L4 there is no status to send) and is counted
by outcome. An idle timeout closes both sides after a period with no byte in either
direction.

**Why not asyncio transports.** A connection-per-request client costs an L4 proxy a
handful of system calls per connection and little else; uvloop's TCP transports added
about seven more (getsockname and getpeername on both sockets, an ``SO_ERROR`` check,
io_uring submissions, a ``Server`` and two ``Transport``/``Protocol`` pairs in Python)
and kept meshproxy at 0.6x haproxy. Here the sockets are plain non-blocking sockets in
an edge-triggered ``epoll`` of the listener's own, which uvloop polls as one more file
descriptor (``add_reader`` on the epoll descriptor): per connection accept, socket,
connect, two registrations, one read and one write each way, the shutdowns and the two
closes, about what haproxy does. Linux only, as the rest of the data plane.

Edge-triggered means a side is read until the kernel has no more (a short read says so;
``EPOLLRDHUP`` with a short read says the peer's EOF is in too), and a side whose
reading paused is read again by whoever unpauses it, since no new edge will come for
bytes already waiting.

Timeouts cost no timer per connection: the listener's one periodic tick expires the
connects older than the cluster's connect timeout and closes connections quiet for the
idle timeout (measured from the first tick after the last byte, so a connection is
closed after between ``idle_timeout`` and ``idle_timeout`` + two ticks of quiet).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
from _socket import socket as _CSocket
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshproxy.balance import PickContext
from meshproxy.listener import BACKLOG, ListenerBase

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.config.listeners import TcpListenerConfig
    from meshproxy.endpoint import Endpoint
    from meshproxy.metrics import Stats

log = logging.getLogger(__name__)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLRDHUP = select.EPOLLRDHUP
_FAILED = select.EPOLLERR | select.EPOLLHUP
_READABLE = EPOLLIN | EPOLLRDHUP | _FAILED
#: A socket is watched for writability only while that is news: a connecting upstream
#: (that is how its connect completes) and a side that has refused a write; so that a
#: short connection has no writability event to dispatch.
_READ_EVENTS = EPOLLIN | EPOLLRDHUP | select.EPOLLET
_READ_WRITE_EVENTS = _READ_EVENTS | EPOLLOUT

#: One read's buffer, shared by every connection of the process: a read is written on
#: at once, and only what the other side does not take is copied out of it.
_SIZE = 65536
_BUF = bytearray(_SIZE)
_VIEW = memoryview(_BUF)
#: Bytes held for a side that cannot take them before reading from its peer pauses.
_HOLD_LIMIT = 256 * 1024
#: ``read`` argument: read until the kernel says "would block" (a short read proves
#: nothing when the edge that said more might come was seen while paused).
_DRAIN = -1
#: Accepts per poll of one listening socket (the rest wait for the next poll).
_ACCEPT_BATCH = 64
_SOCK_STREAM_NB = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
# Connection sockets are the C type that ``socket.socket`` wraps: the wrapper's
# Python-level ``__init__``, ``accept`` and ``close`` (reference counting for
# ``makefile``, unused here) were a tenth of the Python time of a short connection.


_families: dict[str, int] = {}


def _numeric_family(host: str) -> int:
    """``AF_INET``/``AF_INET6`` for an address literal, 0 for a name to resolve."""
    family = _families.get(host)
    if family is None:
        family = 0
        for fam in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(fam, host)
            except OSError:
                continue
            family = fam
            break
        if len(_families) < 4096:
            _families[host] = family
    return family


class _Side:
    """One socket of a connection: the client's (downstream) or the endpoint's."""

    __slots__ = ("conn", "connected", "eof", "fd", "nread", "out", "paused", "peer",
                 "shut", "sock", "watch_out")

    def __init__(self, sock: _CSocket | None, conn: TcpConnection,
                 connected: bool) -> None:
        self.sock: _CSocket = sock  # type: ignore[assignment]  # upstream: set on open
        self.fd = sock.fileno() if sock is not None else -1
        self.peer: _Side = self  # set by the connection
        self.conn = conn
        self.out: bytes | None = None  # bytes read from the peer, not yet taken by this side
        self.eof = False        # this side's EOF has been read
        self.shut = False       # our FIN has been sent to this side
        self.connected = connected
        self.paused = False     # reading paused: the peer holds too much unsent
        self.nread = 0          # bytes read from this side, not yet in the metrics
        self.watch_out = not connected  # registered for EPOLLOUT (see _READ_EVENTS)

    def on_event(self, ev: int) -> None:
        if not self.connected:
            if ev & _FAILED and self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.conn.connect_failed("connect_failure")
                return
            if not ev & EPOLLOUT:
                return
            self.conn.upstream_connected()
            if self.conn.closed:
                return
        elif ev & EPOLLOUT and self.out is not None:
            self.flush()
        if ev & _READABLE and not self.eof:
            if not self.paused:
                self.read(ev)
            elif ev & select.EPOLLERR:
                # Reset while its reading is paused: nothing more will come from it, and
                # this edge will not come again; the peer is cut now, not when it drains.
                self.conn.abort()

    def read(self, ev: int) -> None:
        sock = self.sock
        peer = self.peer
        conn = self.conn
        conn.active = True
        while True:
            try:
                n = sock.recv_into(_BUF)
            except BlockingIOError:
                return
            except OSError:
                conn.abort()
                return
            if n == 0:
                self.got_eof()
                return
            self.nread += n
            out = peer.out
            if out is None and peer.connected:
                try:
                    m = peer.sock.send(_VIEW[:n])
                except BlockingIOError:
                    m = 0
                except OSError:
                    conn.abort()
                    return
                if m != n:
                    peer.out = out = _VIEW[m:n].tobytes()
                    if not peer.watch_out:
                        peer.watch_out = True
                        # Modify re-arms the edge: if the socket is already writable
                        # again, the event comes at the next poll (no wake-up lost).
                        self.conn.poller.ep.modify(peer.fd, _READ_WRITE_EVENTS)
            else:
                peer.out = out = _VIEW[:n].tobytes() if out is None else out + _VIEW[:n]
            if out is not None and len(out) >= _HOLD_LIMIT:
                self.paused = True  # the peer's flush resumes reading
                return
            if n < _SIZE and ev != _DRAIN:
                if ev & EPOLLRDHUP:
                    self.got_eof()
                return

    def got_eof(self) -> None:
        self.eof = True
        peer = self.peer
        if peer.out is None and peer.connected:
            if peer.eof and self.out is None:
                # Both directions have ended and every byte is delivered: the close
                # sends the FIN itself (a shutdown first would be one more system call).
                self.conn.abort()
            else:
                peer.shutdown()

    def shutdown(self) -> None:
        """Pass the peer's EOF on (its bytes before it are all sent)."""
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.conn.abort()
            return
        if self.peer.shut:
            self.conn.abort()  # both directions ended, every byte delivered: close

    def flush(self) -> None:
        out = self.out
        assert out is not None
        try:
            m = self.sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self.conn.abort()
            return
        if m < len(out):
            self.out = out[m:]
            return
        self.out = None
        peer = self.peer
        if peer.eof:
            if self.eof and peer.out is None:
                self.conn.abort()  # both ended, all delivered (see got_eof)
            elif not self.shut:
                self.shutdown()
        elif peer.paused:
            peer.paused = False
            peer.read(_DRAIN)


class TcpConnection:
    """One client connection of a TCP listener and its upstream connection."""

    __slots__ = ("active", "closed", "cluster", "down", "endpoint", "listener", "poller",
                 "quiet_since", "resolving", "started", "up")

    def __init__(self, listener: TcpListener, sock: _CSocket) -> None:
        self.listener = listener
        self.poller = listener.poller
        self.cluster = listener.cluster
        self.down = down = _Side(sock, self, True)
        #: The upstream side exists from the start (bytes for it are held in its
        #: ``out``); its socket is opened once the endpoint is picked (and resolved).
        self.up = up = _Side(None, self, False)
        down.peer = up
        up.peer = down
        self.endpoint: Endpoint | None = None
        self.started = 0.0
        self.active = False
        self.quiet_since = 0.0
        self.closed = False
        self.resolving: asyncio.Task[None] | None = None

    # --- the connect -------------------------------------------------------------------
    def connect(self) -> None:
        listener = self.listener
        cluster = self.cluster
        self.started = now = listener.loop.time()
        self.quiet_since = now
        ep = cluster.balancer.pick(PickContext(now), ())
        if ep is None:
            listener.count("no_healthy_upstream")
            self.abort()
            return
        self.endpoint = ep
        ep.active_requests += 1
        listener.connecting[self] = None
        family = _families.get(ep.host)
        if family is None:
            family = _numeric_family(ep.host)
        if family:
            self._open(family, (ep.host, ep.port), first=True)
        else:
            self.poller.add(self.down, _READ_EVENTS)
            self.resolving = listener.loop.create_task(self._resolve(ep))

    async def _resolve(self, ep: Endpoint) -> None:
        try:
            infos = await self.listener.loop.getaddrinfo(ep.host, ep.port,
                                                         type=socket.SOCK_STREAM)
        except OSError:
            self.resolving = None
            self.connect_failed("connect_failure")
            return
        self.resolving = None
        if not self.closed:
            family, _, _, _, sockaddr = infos[0]
            self._open(family, sockaddr, first=False)

    def _open(self, family: int, sockaddr: tuple, *, first: bool) -> None:
        """Connect to the endpoint. ``first``: the client's socket is not registered
        yet, and what it already sent is read and sent on at once."""
        sock = _CSocket(family, _SOCK_STREAM_NB)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
        except OSError as e:
            err = e.errno or errno.EIO
        if err and err != errno.EINPROGRESS:
            sock.close()
            self.connect_failed("connect_failure")
            return
        up = self.up
        up.sock = sock
        up.fd = sock.fileno()
        if first:
            # A client that speaks first has usually sent its bytes by the time it is
            # accepted, and a connect to a near endpoint (loopback, a fast LAN) has
            # usually completed inside connect(): read and write now, and when the write
            # is taken the connection is up with no writability event to wait for (the
            # upstream is then registered for reading only). Otherwise, as below.
            down = self.down
            try:
                n = down.sock.recv_into(_BUF)
            except BlockingIOError:
                n = -1
            except OSError:
                self.abort()  # the client is gone already (a reset)
                return
            if n > 0:
                down.nread += n
                self.active = True
                try:
                    m = sock.send(_VIEW[:n])
                except BlockingIOError:
                    m = 0  # still connecting
                except OSError:
                    self.connect_failed("connect_failure")  # refused at once
                    return
                if m:
                    up.connected = True
                    up.watch_out = m < n
                    if m < n:
                        up.out = _VIEW[m:n].tobytes()
                    # (Poller.add, inline: this runs once per connection.)
                    poller = self.poller
                    poller.sides[down.fd] = down
                    poller.ep.register(down.fd, _READ_EVENTS)
                    poller.sides[up.fd] = up
                    poller.ep.register(up.fd, _READ_WRITE_EVENTS if m < n else _READ_EVENTS)
                    self.upstream_connected()
                    return
                up.out = _VIEW[:n].tobytes()
            elif n == 0:
                down.eof = True  # connected and closed (or half-closed) at once
            # Registered after the read: an edge for bytes already read would be a
            # wasted wake-up; bytes arriving since are reported by the registration.
            self.poller.add(down, _READ_EVENTS)
        self.poller.add(up, _READ_WRITE_EVENTS)

    def upstream_connected(self) -> None:
        up = self.up
        assert self.endpoint is not None
        up.connected = True
        listener = self.listener
        listener.connecting.pop(self, None)
        cluster = self.cluster
        if cluster.learns:
            cluster.balancer.observe(self.endpoint, listener.loop.time() - self.started,
                                     True)
        listener.count("connected")
        if up.out is not None:
            up.flush()  # what the client sent meanwhile (and, once flushed, its EOF)
        elif self.down.eof:
            up.shutdown()  # the client's EOF came early

    def connect_failed(self, reason: str) -> None:
        if self.closed:
            return
        ep, self.endpoint = self.endpoint, None
        if ep is not None:
            self.cluster.attempt_done(ep, self.started, False, 0, reason)
        self.listener.count(reason)
        self.abort()

    # --- the end -----------------------------------------------------------------------
    def abort(self) -> None:
        """Close both sockets now, whatever is unsent, and account for the connection."""
        if self.closed:
            return
        self.closed = True
        if self.resolving is not None:
            self.resolving.cancel()
            self.resolving = None
        # Closing a socket takes it out of the epoll (it is never duplicated).
        sides = self.poller.sides
        down, up = self.down, self.up
        sides.pop(down.fd, None)
        down.sock.close()
        if up.sock is not None:
            sides.pop(up.fd, None)
            up.sock.close()
        ep, self.endpoint = self.endpoint, None
        if ep is not None:
            ep.active_requests -= 1
        rx, tx = down.nread, up.nread
        down.nread = up.nread = 0
        self.listener.connection_closed(self, rx, tx)

    def drain(self) -> None:
        """TCP has no message boundary to wait for: a draining listener leaves open
        connections alone until the drain timeout."""


class _Poller:
    """A listener's edge-triggered epoll, polled by the event loop as one descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_accept: Callable[[socket.socket], None]) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.sides: dict[int, _Side] = {}
        self.acceptors: dict[int, socket.socket] = {}
        self.on_accept = on_accept  # called with a listening socket that has a client
        loop.add_reader(self.ep.fileno(), self._poll)

    def add(self, side: _Side, events: int) -> None:
        self.sides[side.fd] = side
        self.ep.register(side.fd, events)

    def listen(self, sock: socket.socket) -> None:
        self.acceptors[sock.fileno()] = sock
        self.ep.register(sock.fileno(), EPOLLIN)

    def unlisten(self, sock: socket.socket) -> None:
        # A listening socket may be a duplicate (shared on a rebind): closing it would
        # not take it out of the epoll, so unregister it first.
        if self.acceptors.pop(sock.fileno(), None) is not None:
            self.ep.unregister(sock.fileno())

    def _poll(self) -> None:
        sides = self.sides
        ready = None
        for fd, ev in self.ep.poll(0, 512):
            side = sides.get(fd)
            if side is None:
                if fd in self.acceptors:
                    # After this batch: a descriptor closed in it may be reused by an
                    # accept, and a later event of the batch is still about the old one.
                    if ready is None:
                        ready = [fd]
                    else:
                        ready.append(fd)
                continue
            try:
                side.on_event(ev)
            except Exception:  # never lose the rest of the batch (its edges come once)
                log.exception("tcp connection failed")
                side.conn.abort()
        if ready is not None:
            for fd in ready:
                sock = self.acceptors.get(fd)
                if sock is not None:
                    self.on_accept(sock)

    def close(self) -> None:
        if self.ep.closed:
            return
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


class _Acceptor:
    """The listening sockets, in the shape of ``asyncio.Server`` that
    :class:`~meshproxy.listener.ListenerBase` and the proxy's rebinding use."""

    def __init__(self, poller: _Poller, sockets: list[socket.socket]) -> None:
        self.poller = poller
        self._sockets = sockets
        for sock in sockets:
            poller.listen(sock)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def close(self) -> None:
        for sock in self._sockets:
            self.poller.unlisten(sock)
            sock.close()
        self._sockets = []

    async def wait_closed(self) -> None:
        """Closing is immediate (kept for the ``asyncio.Server`` shape)."""


async def _listening_sockets(loop: asyncio.AbstractEventLoop, host: str, port: int,
                             share: object | None) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port`` with SO_REUSEPORT (or a
    duplicate of ``share``'s, as :func:`meshproxy.listener.bind` does)."""
    shared = getattr(share, "sockets", None)
    if shared:
        sock = socket.socket(fileno=os.dup(shared[0].fileno()))
        sock.setblocking(False)
        return [sock]
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    out: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if sockaddr in seen:
                continue
            seen.add(sockaddr)
            sock = socket.socket(family, type_, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Accepted sockets inherit TCP_NODELAY: no setsockopt per connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                raise OSError(e.errno, f"error while attempting to bind on address "
                                       f"{sockaddr!r}: {e.strerror}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


class TcpListener(ListenerBase):
    """An L4 listener."""

    kind = "tcp"

    def __init__(self, config: TcpListenerConfig, cluster: Cluster, *,
                 loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        super().__init__(config, loop=loop, stats=stats)
        self.cluster = cluster
        self.poller = _Poller(loop, self._accept)
        #: Connections still connecting upstream (insertion-ordered), for the tick.
        self.connecting: dict[TcpConnection, None] = {}
        self._outcomes: dict[str, object] = {}  # outcome -> Counter child
        self._outcome_counts: dict[str, int] = {}  # outcome -> not yet in the metric
        self._next_idle_check = 0.0

    async def start(self, *, share: object | None = None) -> None:
        try:
            sockets = await _listening_sockets(self.loop, self.config.address,
                                               self.config.port, share)
        except BaseException:
            self.poller.close()
            raise
        self.server = _Acceptor(self.poller, sockets)  # type: ignore[assignment]

    def stop_accepting(self) -> None:
        super().stop_accepting()
        if not self.connections:
            self.poller.close()

    def update(self, config: TcpListenerConfig, cluster: Cluster) -> None:
        """New connections go to ``cluster``; open ones keep their upstream."""
        self.config = config
        self.cluster = cluster

    # --- connections -------------------------------------------------------------------
    def _accept(self, lsock: socket.socket) -> None:
        family = lsock.family
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, _ = lsock._accept()  # the C accept, without the wrapper's socket
            except BlockingIOError:
                return
            except OSError as e:
                # EMFILE and the like: the connection stays queued; say so, try again
                # at the next poll.
                log.warning("tcp listener %s: accept failed: %s", self.name, e)
                return
            sock = _CSocket(family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            conn = TcpConnection(self, sock)
            self.connections.add(conn)
            self.start_ticking()  # connect and idle timeouts
            conn.connect()

    def connection_closed(self, conn: TcpConnection, rx: int = 0,  # type: ignore[override]
                          tx: int = 0) -> None:
        """A connection has ended, with its bytes not yet counted (what
        ``ListenerBase.connection_closed`` and ``count_bytes`` do, in one call)."""
        self._rx_pending += rx
        self._tx_pending += tx
        self.connecting.pop(conn, None)
        connections = self.connections
        connections.discard(conn)
        if self.draining:
            self.flush_counts()  # a retired listener may see no more sweeps
        if not connections:
            if self._empty is not None:
                self._empty.set()
            if self.server is not None and not self.server.sockets:
                self.poller.close()  # no longer accepting and nothing left to serve

    def abort_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    # --- timeouts ----------------------------------------------------------------------
    def tick_period(self) -> float:
        return max(min(self.cluster.config.connect_timeout, self.config.idle_timeout) / 4,
                   0.01)

    def check_timeouts(self, now: float) -> None:
        for conn in list(self.connecting):
            if now - conn.started >= conn.cluster.config.connect_timeout:
                conn.connect_failed("connect_timeout")
        if now >= self._next_idle_check:
            idle = self.config.idle_timeout
            self._next_idle_check = now + min(idle / 8, 5.0)
            for conn in list(self.connections):
                if conn.active:
                    conn.active = False
                    conn.quiet_since = now
                elif now - conn.quiet_since >= idle and conn.up.connected:
                    self.count("idle_timeout")
                    conn.abort()

    # --- metrics -----------------------------------------------------------------------
    def count(self, outcome: str) -> None:
        """Count a connection's outcome (in a plain integer until the next sweep)."""
        counts = self._outcome_counts
        counts[outcome] = counts.get(outcome, 0) + 1

    def sweep(self) -> None:
        """Periodic (and before a scrape): move the open connections' bytes and the
        counted outcomes into the metrics."""
        for conn in self.connections:
            down, up = conn.down, conn.up
            self.count_bytes(down.nread, up.nread)
            down.nread = up.nread = 0
        self.flush_counts()

    def flush_counts(self) -> None:
        super().flush_counts()
        if self._outcome_counts:
            counts, self._outcome_counts = self._outcome_counts, {}
            for outcome, n in counts.items():
                child = self._outcomes.get(outcome)
                if child is None:
                    child = self._outcomes[outcome] = self.stats.tcp_connections.labels(
                        self.name, outcome)
                child.inc(n)  # type: ignore[attr-defined]

    # --- shutdown ----------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Stop accepting; open connections may run until ``timeout``, then are cut."""
        self.stop_accepting()
        self.draining = True
        await self._wait_empty(timeout)
        self.abort_connections()
        self.sweep()  # a retired listener is swept no more
        self.stop_ticking()
        self.poller.close()

    def snapshot(self) -> dict:
        return {"name": self.name, "protocol": "tcp", "address": self.config.address,
                "port": self.port if self.server else self.config.port,
                "connections": len(self.connections), "cluster": self.cluster.name}
