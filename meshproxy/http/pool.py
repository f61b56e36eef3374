"""Per-endpoint keep-alive pools of upstream connections.

A :class:`Pool` holds the idle connections to one endpoint (a LIFO stack: the most
recently used connection is the least likely to have been closed by the upstream),
counts every connection it owns (idle, busy, connecting) against
``max_connections``, and makes requests wait, up to ``max_pending`` of them, for a
connection to come free when the pool is full; beyond that they are refused at once
(:class:`~meshproxy.errors.PoolOverflow`). Connect errors are translated here into
:class:`~meshproxy.errors.ConnectFailure` / :class:`~meshproxy.errors.ConnectTimeout`.

Idle connections are closed by :meth:`Pool.sweep` (called about once a second by the
proxy), not by a timer per release: releasing a connection on the hot path costs an
append.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from meshproxy.errors import ConnectFailure, ConnectTimeout, PoolOverflow, Refused
from meshproxy.http.upstream import UpstreamConnection

if TYPE_CHECKING:
    from meshproxy.config.clusters import ClusterConfig
    from meshproxy.endpoint import Endpoint
    from meshproxy.resilience.concurrency import Limiter


class Pool:
    """Connections to one endpoint."""

    def __init__(self, endpoint: Endpoint, config: ClusterConfig,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.idle: list[UpstreamConnection] = []
        self.owned: set[UpstreamConnection] = set()
        self.connecting = 0
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.closing = False
        self.connects = 0          # connections opened, for /clusters
        self.connect_failures = 0
        #: The cluster's ``limits.max_connections`` shared by all its endpoints' pools
        #: (a resilience Limiter), None when the cluster sets no limits.
        self.shared: Limiter | None = None
        self._counted: set[UpstreamConnection] = set()
        self.configure(config)

    def configure(self, config: ClusterConfig) -> None:
        """Apply (new) cluster settings; existing connections are kept."""
        self.connect_timeout = config.connect_timeout
        self.stream_idle_timeout = config.stream_idle_timeout
        self.max_connections = config.pool.max_connections
        self.max_pending = config.pool.max_pending
        self.max_idle = config.pool.max_idle
        self.idle_timeout = config.pool.idle_timeout

    @property
    def size(self) -> int:
        return len(self.owned) + self.connecting

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled idle connection, or None (the synchronous fast path)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, a new one, or one released while we waited."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        while self.size >= self.max_connections or not self._take_slot():
            shared = self.shared
            if shared is not None and self.size < self.max_connections:
                # the cluster's connection limit is what is full: wait (in this pool's
                # line, bounded by max_pending_requests) for a connection of this
                # endpoint to be released, or refuse at once
                if len(self.waiters) >= min(self.max_pending, shared.max_waiting):
                    raise Refused(503, "max_connections", shared.refusal)
            elif len(self.waiters) >= self.max_pending:
                raise PoolOverflow(f"{self.endpoint.address}: {self.size} connections busy "
                                   f"and {len(self.waiters)} requests waiting")
            fut: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self.waiters.append(fut)
            try:
                handed = await fut
            finally:
                if not fut.done():
                    fut.cancel()
                try:
                    self.waiters.remove(fut)
                except ValueError:
                    pass
            if handed is not None and not handed.closed:
                return handed
        return await self._connect()

    def _take_slot(self) -> bool:
        """A slot of the cluster's connection limit for a new connection (always
        granted without one); ``_connect`` hands it to the connection or gives it back."""
        return self.shared is None or self.shared.try_acquire()

    def forget_counted(self) -> None:
        """The limiter changed: open connections no longer hold slots of the new one
        (the old limiter is dropped with them)."""
        self._counted.clear()

    def _give_back(self) -> None:
        if self.shared is not None:
            self.shared.release()

    async def _connect(self) -> UpstreamConnection:
        self.connecting += 1
        ep = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), ep.host, ep.port)
        except (TimeoutError, OSError, asyncio.CancelledError) as e:
            self.connecting -= 1
            self._give_back()
            self._wake_one()
            if isinstance(e, asyncio.CancelledError):
                raise
            self.connect_failures += 1
            if isinstance(e, TimeoutError):
                raise ConnectTimeout(f"connect to {ep.address} took over "
                                     f"{self.connect_timeout}s") from None
            raise ConnectFailure(f"connect to {ep.address}: {e.strerror or e}") from None
        self.connecting -= 1
        self.connects += 1
        self.owned.add(conn)
        if self.shared is not None:
            self._counted.add(conn)
        # An endpoint removed while this connect was in flight still serves the request
        # that asked for it (the backend is up; failing it would turn a routine endpoint
        # update into a 502): release() closes the connection once that exchange ends.
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished an exchange and may be reused."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        if self.closing or len(self.idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: it no longer counts, and a waiter may connect instead."""
        if conn in self._counted:
            self._counted.discard(conn)
            self._give_back()
        if conn in self.owned:
            self.owned.discard(conn)
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self._wake_one()

    def detach(self, conn: UpstreamConnection) -> None:
        """A connection became a tunnel (101): it leaves the pool for good."""
        self.forget(conn)

    def _wake_one(self) -> None:
        # Room for one more connection: let the first waiter try to connect.
        if self.size < self.max_connections:
            while self.waiters:
                fut = self.waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return

    def sweep(self, now: float) -> None:
        """Close idle connections past the idle timeout (oldest first)."""
        limit = now - self.idle_timeout
        while self.idle and self.idle[0].idle_since < limit:
            self.idle.pop(0).abort()

    def close(self) -> None:
        """The endpoint left its cluster: close idle connections now, busy ones when
        their exchange ends."""
        self.closing = True
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()

    def busy_count(self) -> int:
        return len(self.owned) - len(self.idle)

    def __repr__(self) -> str:
        return (f"<Pool {self.endpoint.address} idle={len(self.idle)} "
                f"busy={self.busy_count()} waiting={len(self.waiters)}>")

