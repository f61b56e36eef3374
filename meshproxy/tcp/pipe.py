"""One proxied TCP connection: the client's socket, the endpoint's, and the bytes
between them (see :mod:`meshproxy.tcp` for the design).

A :class:`TcpConnection` has two :class:`Side` objects, each a non-blocking socket and
the bytes read from the other side that it has not taken yet. Reads go through one
buffer shared by the process and are written on at once; only what a side refuses is
copied out, and past a hold limit reading from its peer pauses. Events come from the
listener's :class:`~meshproxy.poller.Poller`; the listener
(:mod:`meshproxy.tcp.listener`) accepts, ticks the timeouts and counts.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
from _socket import socket as CSocket
from typing import TYPE_CHECKING, Final

from meshproxy.poller import Watched

if TYPE_CHECKING:
    from meshproxy.endpoint import Endpoint
    from meshproxy.tcp.listener import TcpListener

EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
EPOLLRDHUP: Final = select.EPOLLRDHUP
_FAILED: Final = select.EPOLLERR | select.EPOLLHUP
_READABLE: Final = EPOLLIN | EPOLLRDHUP | _FAILED
#: A socket is watched for writability only while that is news: a connecting upstream
#: (that is how its connect completes) and a side that has refused a write; so that a
#: short connection has no writability event to dispatch.
_READ_EVENTS: Final = EPOLLIN | EPOLLRDHUP | select.EPOLLET
_READ_WRITE_EVENTS: Final = _READ_EVENTS | EPOLLOUT

#: One read's buffer, shared by every connection of the process: a read is written on
#: at once, and only what the other side does not take is copied out of it.
_SIZE: Final = 65536
_BUF: Final = bytearray(_SIZE)
_VIEW: Final = memoryview(_BUF)
#: Bytes held for a side that cannot take them before reading from its peer pauses.
_HOLD_LIMIT: Final = 256 * 1024
#: ``read`` argument: read until the kernel says "would block" (a short read proves
#: nothing when the edge that said more might come was seen while paused).
_DRAIN: Final = -1
_SOCK_STREAM_NB: Final = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
#: Every read and write is non-blocking by its flag: the accepted socket is left in
#: blocking mode (Python's ``accept`` cannot ask ``accept4`` for a non-blocking one, and
#: making it so is one ``ioctl`` more per connection). Nothing in the process sets a
#: default socket timeout, so these sockets never wait inside a call.
_DONTWAIT: Final = socket.MSG_DONTWAIT
# Connection sockets are the C type that ``socket.socket`` wraps (``CSocket``): the
# wrapper's Python-level ``__init__``, ``accept`` and ``close`` (reference counting for
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


class Side(Watched):
    """One socket of a connection: the client's (downstream) or the endpoint's."""

    __slots__ = ("conn", "connected", "eof", "fd", "nread", "out", "paused", "peer",
                 "shut", "sock", "watch_out")

    def __init__(self, sock: CSocket | None, conn: TcpConnection,
                 connected: bool) -> None:
        self.sock: CSocket = sock  # type: ignore[assignment]  # upstream: set on open
        self.fd = sock.fileno() if sock is not None else -1
        self.peer: Side = self  # set by the connection
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

    def fail(self) -> None:
        self.conn.abort()

    def read(self, ev: int) -> None:
        sock = self.sock
        peer = self.peer
        conn = self.conn
        conn.active = True
        while True:
            try:
                n = sock.recv_into(_BUF, 0, _DONTWAIT)
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
                    m = peer.sock.send(_VIEW[:n], _DONTWAIT)
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
            m = self.sock.send(out, _DONTWAIT)
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

    def __init__(self, listener: TcpListener, sock: CSocket) -> None:
        self.listener = listener
        self.poller = listener.poller
        self.cluster = listener.cluster
        self.down = down = Side(sock, self, True)
        #: The upstream side exists from the start (bytes for it are held in its
        #: ``out``); its socket is opened once the endpoint is picked (and resolved).
        self.up = up = Side(None, self, False)
        down.peer = up
        up.peer = down
        self.endpoint: Endpoint | None = None
        self.started = 0.0
        self.active = False
        self.quiet_since = 0.0
        self.closed = False
        self.resolving: asyncio.Task[None] | None = None

    def connect(self) -> None:
        listener = self.listener
        cluster = self.cluster
        self.started = now = listener.loop.time()
        self.quiet_since = now
        ctx = listener.pick_context  # reused: balancers keep no reference to it
        ctx.now = now
        ep = cluster.balancer.pick(ctx, ())
        if ep is None:
            listener.count("no_healthy_upstream")
            self.abort()
            return
        self.endpoint = ep
        ep.active_requests += 1
        family = _families.get(ep.host)
        if family is None:
            family = _numeric_family(ep.host)
        if family:
            self._open(family, (ep.host, ep.port), first=True)
        else:
            listener.connecting[self] = None  # the connect timeout counts resolving too
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
        sock = CSocket(family, _SOCK_STREAM_NB)
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
            # When the client's first bytes are in by the time it is accepted (and a
            # connect to a near endpoint, loopback or a fast LAN, has usually completed
            # inside connect()), reading and writing now saves the events: when the
            # write is taken the connection is up with no writability event to wait for
            # (the upstream is then registered for reading only). Whether they usually
            # are in is the listener's guess (TcpListener.read_at_accept): a read that
            # finds nothing costs a system call and an exception. Otherwise, as below.
            down = self.down
            listener = self.listener
            if listener.read_at_accept():
                try:
                    n = down.sock.recv_into(_BUF, 0, _DONTWAIT)
                except BlockingIOError:
                    n = -1
                except OSError:
                    self.abort()  # the client is gone already (a reset)
                    return
                listener.early_read(n >= 0)
            else:
                n = -1
            if n > 0:
                down.nread += n
                self.active = True
                try:
                    m = sock.send(_VIEW[:n], _DONTWAIT)
                except BlockingIOError:
                    m = 0  # still connecting
                except OSError:
                    self.connect_failed("connect_failure")  # refused at once
                    return
                if m:
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
        self.listener.connecting[self] = None  # for the connect timeout
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
