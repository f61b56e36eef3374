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
and kept meshproxy at 0.6x haproxy. Here the sockets are plain sockets that never block
(the upstream one opened non-blocking; the accepted one left as ``accept`` returns it,
every read and write on it passing ``MSG_DONTWAIT``: Python cannot ask ``accept4`` for a
non-blocking socket, and an ``ioctl`` to make it so would be one more system call per
connection) in an edge-triggered ``epoll`` of the listener's own, which uvloop polls as
one more file descriptor (``add_reader`` on the epoll descriptor): per connection
accept, socket, connect, two registrations, one read and one write each way, the
shutdowns and the two closes, fewer system calls than haproxy makes. Linux only, as the
rest of the data plane. The L7 listener's clients live in the same kind of epoll
(:mod:`meshproxy.http.transport`), for the same reason.

A new client is read at once (its bytes sent on right after the connect, saving the
events) only while the listener's guess says its first bytes are usually in by the time
it is accepted (``TcpListener.read_at_accept``, a score of recent reads at accept): a
remote client's are; a local client on another core has usually not written yet, and
the read would find nothing (a system call and an exception).

Edge-triggered means a side is read until the kernel has no more (a short read says so;
``EPOLLRDHUP`` with a short read says the peer's EOF is in too), and a side whose
reading paused is read again by whoever unpauses it, since no new edge will come for
bytes already waiting.

Timeouts cost no timer per connection: the listener's one periodic tick expires the
connects older than the cluster's connect timeout and closes connections quiet for the
idle timeout (measured from the first tick after the last byte, so a connection is
closed after between ``idle_timeout`` and ``idle_timeout`` + two ticks of quiet).

These modules are compiled with mypyc when the package is installed, like the HTTP
request path (``setup.py``; ``docs/ARCHITECTURE.md``, "Departures", has the rules such
code keeps); the same sources run interpreted when the build is not compiled.

The package: :mod:`~meshproxy.tcp.pipe` (a connection's two sides and the bytes between
them), :mod:`~meshproxy.tcp.listener` (accept, timeouts, counts, drain); the epoll and
the listening sockets are :mod:`meshproxy.poller`, shared with the L7 listener.
"""

from meshproxy.tcp.listener import TcpListener

__all__ = ["TcpListener"]
