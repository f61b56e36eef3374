"""A listener's event source: an edge-triggered ``epoll`` of its own that the event loop
polls as one descriptor, and the listening sockets in it. Both kinds of listener use it:
the L4 one (:mod:`meshproxy.tcp`) and the L7 one (:mod:`meshproxy.http.transport`).

:class:`Poller` dispatches each ready socket's events to its :class:`Watched` (a
:class:`~meshproxy.tcp.pipe.Side` or a
:class:`~meshproxy.http.transport.PollTransport`) and a ready listening socket to the
listener's accept
(after the batch: a descriptor closed in it may be reused by an accept while a later
event of the batch is still about the old one). :class:`Acceptor` has the shape of
``asyncio.Server`` that :class:`~meshproxy.listener.ListenerBase` and the proxy's
rebinding use; :func:`listening_sockets` binds the listening sockets (or duplicates an
old listener's, on a rebind to the same address).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
from _socket import socket as CSocket
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

#: The listening sockets' accept queue.
BACKLOG: Final = 2048
#: Accepts per poll of one listening socket (the rest wait for the next poll).
ACCEPT_BATCH: Final = 64
_STREAM: Final = socket.SOCK_STREAM


def socket_of(family: int, fd: int) -> CSocket:
    """The C socket object for an accepted descriptor: the type ``socket.socket``
    wraps, whose Python-level ``__init__``, ``accept`` and ``close`` (reference counting
    for ``makefile``, unused here) were a tenth of the Python time of a short
    connection. Left in blocking mode: every read and write on it passes
    ``MSG_DONTWAIT`` (Python cannot ask ``accept4`` for a non-blocking socket, and an
    ``ioctl`` to make it so would be one more system call per connection)."""
    return CSocket(family, _STREAM, 0, fd)


class Watched:
    """What the poller dispatches a connection socket's events to: a side of an L4
    connection (:class:`~meshproxy.tcp.pipe.Side`) or an L7 client's transport
    (:class:`~meshproxy.http.transport.PollTransport`)."""

    __slots__ = ()

    fd: int  # the socket's descriptor, the poller's key

    def on_event(self, ev: int) -> None:
        """Handle the ``epoll`` events ``ev`` of this socket."""
        raise NotImplementedError  # each subclass handles its events

    def fail(self) -> None:
        """``on_event`` raised: cut the connection (its edges will not come again)."""
        raise NotImplementedError  # each subclass cuts its connection


class Poller:
    """A listener's edge-triggered epoll, polled by the event loop as one descriptor."""

    sides: dict[int, Watched]

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_accept: Callable[[socket.socket], None]) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.sides = {}
        self.acceptors: dict[int, socket.socket] = {}
        self.on_accept = on_accept  # called with a listening socket that has a client
        loop.add_reader(self.ep.fileno(), self._poll)

    def add(self, side: Watched, events: int) -> None:
        self.sides[side.fd] = side
        self.ep.register(side.fd, events)

    def listen(self, sock: socket.socket) -> None:
        self.acceptors[sock.fileno()] = sock
        self.ep.register(sock.fileno(), select.EPOLLIN)

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
                log.exception("connection failed")
                side.fail()
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


class Acceptor:
    """The listening sockets, in the shape of ``asyncio.Server`` that
    :class:`~meshproxy.listener.ListenerBase` and the proxy's rebinding use."""

    def __init__(self, poller: Poller, sockets: list[socket.socket]) -> None:
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


async def listening_sockets(loop: asyncio.AbstractEventLoop, host: str, port: int,
                             share: object | None) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port`` with SO_REUSEPORT (or a
    duplicate of ``share``'s: the two share one accept queue, so when the old listener
    closes, the connections waiting in it are not reset, as closing one of several
    SO_REUSEPORT sockets resets those queued on it)."""
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
