"""The L7 listener's client connections without uvloop's transports: each accepted
socket is a :class:`PollTransport` in the listener's own ``epoll``
(:class:`~meshproxy.poller.Poller`, the one the L4 listener uses), driving an
:class:`~meshproxy.http.server.HttpServerProtocol` through the part of the
``asyncio.Transport`` interface it uses.

**Why.** A connection-per-request client costs the proxy a handful of system calls and
little else; uvloop's server transport added four per connection that nothing needs
(``getsockname`` and ``getpeername``, a ``TCP_NODELAY`` the listening socket already
passes on, an ``io_uring`` submission for the registration) plus its ``Server``,
handle and transport objects in Python. Here a new client costs ``accept4`` (the
client's address comes with it), one registration, its reads and writes, and the
close (see ``docs/ARCHITECTURE.md``, "Departures").

Semantics are asyncio's, where the protocol can tell: writes are tried at once and
only what the socket refuses is buffered; past ``_HIGH`` buffered bytes the protocol's
``pause_writing`` is called, ``resume_writing`` once it is back under ``_LOW``;
``pause_reading``/``resume_reading`` stop and restart ``data_received`` (bytes that
arrived meanwhile are read on the next loop turn, never inside ``resume_reading``);
the client's EOF calls ``eof_received`` and, unless it returns true, closes;
``close`` stops reading and closes once what is buffered is sent; ``abort`` closes now;
``connection_lost`` comes on a later loop turn, with the error if one ended the
connection.

The accepted socket is left in blocking mode: every read and write passes
``MSG_DONTWAIT``, as on the L4 path (:mod:`meshproxy.tcp.pipe`).
"""

from __future__ import annotations

import select
import socket
from _socket import socket as CSocket
from typing import TYPE_CHECKING, Any, Final

from meshproxy.poller import Watched

if TYPE_CHECKING:
    from meshproxy.http.server import HttpServerProtocol
    from meshproxy.poller import Poller

EPOLLIN: Final = select.EPOLLIN
EPOLLOUT: Final = select.EPOLLOUT
EPOLLRDHUP: Final = select.EPOLLRDHUP
EPOLLERR: Final = select.EPOLLERR
_READABLE: Final = EPOLLIN | EPOLLRDHUP | EPOLLERR | select.EPOLLHUP
READ_EVENTS: Final = EPOLLIN | EPOLLRDHUP | select.EPOLLET
_READ_WRITE_EVENTS: Final = READ_EVENTS | EPOLLOUT
_DONTWAIT: Final = socket.MSG_DONTWAIT
#: One read's most bytes (``recv`` allocates this much and shrinks it to what came).
_SIZE: Final = 65536
#: The write buffer's limits for ``pause_writing``/``resume_writing`` (asyncio's).
_HIGH: Final = 65536
_LOW: Final = 16384


class PollTransport(Watched):
    """One client connection of an L7 listener, in the listener's epoll."""

    def __init__(self, poller: Poller, sock: CSocket, peer: Any,
                 protocol: HttpServerProtocol) -> None:
        self.poller = poller
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        #: None once ``connection_lost`` has run: the protocol refers to the transport,
        #: and without the cycle a closed connection is freed by reference counting
        #: (left to the cycle collector, a connection-per-request load grew the heap
        #: to 184 MB and made collections of it the p99).
        self.protocol: HttpServerProtocol | None = protocol
        self.out: bytearray | None = None  # what the socket has not taken yet
        self.closing = False    # close() or abort() called, or the connection failed
        self.closed = False     # the socket is closed
        self.paused = False     # pause_reading() in force
        self.pending = False    # bytes (or the EOF) may be waiting unread
        self.rdhup = False      # the client's EOF is in the socket's queue
        self.writing_paused = False  # the protocol was told pause_writing()
        self.watch_out = False  # registered for EPOLLOUT
        #: Loop time of the last write the client took while bytes wait for it (see
        #: HttpServerProtocol.check_timeouts: no progress for the idle timeout cuts it).
        self.blocked_since = 0.0

    # --- events ------------------------------------------------------------------------
    def on_event(self, ev: int) -> None:
        if self.closed:
            return
        if ev & EPOLLOUT and self.out is not None:
            self._flush()
            if self.closed:
                return
        if ev & _READABLE and not self.closing:
            if ev & EPOLLRDHUP:
                self.rdhup = True
            if not self.paused:
                self._read()
            elif ev & EPOLLERR:
                # Reset while its reading is paused: this edge will not come again.
                self._fail(ConnectionResetError("connection reset by peer"))
            else:
                self.pending = True

    def fail(self) -> None:
        self._fail(None)

    def _read(self) -> None:
        sock = self.sock
        protocol = self.protocol
        assert protocol is not None  # set until connection_lost, after the socket closed
        while True:
            try:
                data = sock.recv(_SIZE, _DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(e)
                return
            if not data:
                self._eof()
                return
            protocol.data_received(data)
            if self.closing:
                return
            if self.paused:
                self.pending = True  # the rest is read when reading resumes
                return
            if len(data) < _SIZE:
                # A short read drained the socket (edge-triggered: no edge comes for
                # bytes already there); with the client's EOF seen, that is next.
                if self.rdhup:
                    self._eof()
                return

    def _resume_read(self) -> None:
        if self.pending and not self.paused and not self.closing:
            self.pending = False
            self._read()

    def _eof(self) -> None:
        protocol = self.protocol
        assert protocol is not None
        if protocol.eof_received():
            self.pending = False  # half-open: the protocol still writes; nothing to read
            self.paused = True
        else:
            self.close()

    def _flush(self) -> None:
        out = self.out
        assert out is not None
        try:
            m = self.sock.send(out, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(e)
            return
        if m < len(out):
            if m:
                del out[:m]
                self.blocked_since = self.poller.loop.time()
        else:
            self.out = out = None
            if self.closing:
                self._close_now(None)
                return
        if self.writing_paused and (out is None or len(out) <= _LOW):
            self.writing_paused = False
            protocol = self.protocol
            assert protocol is not None
            protocol.resume_writing()

    # --- the asyncio.Transport interface the protocol uses ------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or not data:
            return
        out = self.out
        if out is None:
            try:
                m = self.sock.send(data, _DONTWAIT)
            except BlockingIOError:
                m = 0
            except OSError as e:
                self._fail(e)
                return
            if m == len(data):
                return
            self.out = out = bytearray(memoryview(data)[m:])
            self.blocked_since = self.poller.loop.time()
            if not self.watch_out:
                self.watch_out = True
                # Modify re-arms the edge: a socket writable again by now reports it at
                # the next poll.
                self.poller.ep.modify(self.fd, _READ_WRITE_EVENTS)
        else:
            out += data
        if not self.writing_paused and len(out) > _HIGH:
            self.writing_paused = True
            protocol = self.protocol
            assert protocol is not None
            protocol.pause_writing()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.pending and not self.closing:
            # On the next loop turn, never inside the caller's own code.
            self.poller.loop.call_soon(self._resume_read)

    def close(self) -> None:
        """Stop reading; close once what is buffered has been sent."""
        if self.closing:
            return
        self.closing = True
        if self.out is None:
            self._close_now(None)

    def abort(self) -> None:
        """Close now, whatever is unsent."""
        self.closing = True
        self.out = None
        if not self.closed:
            self._close_now(None)

    def get_write_buffer_size(self) -> int:
        out = self.out
        return 0 if out is None else len(out)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "socket":
            return self.sock
        return default

    # --- the end -------------------------------------------------------------------------
    def _fail(self, exc: Exception | None) -> None:
        self.closing = True
        self.out = None
        if not self.closed:
            self._close_now(exc)

    def _close_now(self, exc: Exception | None) -> None:
        self.closed = True
        # Closing the socket takes it out of the epoll (it is never duplicated).
        self.poller.sides.pop(self.fd, None)
        self.sock.close()
        self.poller.loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "closing" if self.closing else "open"
        return f"<PollTransport fd={self.fd} peer={self.peer!r} {state}>"
