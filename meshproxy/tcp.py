"""L4 TCP proxying: each accepted connection is piped to one endpoint of a cluster.

Bytes a client sends before the upstream connection is open are buffered, its reading
paused past 256 KiB (nothing is buffered without bound); then bytes flow both ways with
backpressure: when one side's write buffer fills, the other side's reading pauses.
Half-close (EOF) is
passed through. A connect failure closes the client's connection (at L4 there is no
status to send) and is counted by outcome. An idle timeout closes both sides after a
period with no byte in either direction, checked by a periodic tick.

Each connection has one timer: first it is the cluster's connect timeout, then (once
connected) the idle tick. A connection-per-request client pays for one timer, not two.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING

from meshproxy.balance import PickContext
from meshproxy.errors import ProxyError
from meshproxy.listener import ListenerBase

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.config.listeners import TcpListenerConfig
    from meshproxy.endpoint import Endpoint
    from meshproxy.metrics import Stats

log = logging.getLogger(__name__)


class _Upstream(asyncio.Protocol):
    def __init__(self, down: TcpDownstream) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        d = self.down
        d.active = True
        if d.transport is not None:
            d.tx += len(data)
            d.transport.write(data)

    def eof_received(self) -> bool:
        d = self.down
        d.eof_up = True
        if d.transport is not None and d.transport.can_write_eof():
            d.transport.write_eof()
        return d.check_both_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.down.upstream_lost()
        self.down = None  # type: ignore[assignment]  # break the cycle: free by refcount

    def pause_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.resume_reading()


class TcpDownstream(asyncio.Protocol):
    """One client connection of a TCP listener."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.endpoint: Endpoint | None = None
        self.active = False
        self.eof_down = self.eof_up = False
        self.rx = self.tx = 0
        self._pending: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False   # the connect timeout passed while connecting
        self._connected_tick = True  # the timer's next firing is the connect timeout's
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.connections.add(self)
        cluster = self.listener.cluster
        self._task = self.loop.create_task(self._connect(cluster))
        # The connection's one timer starts as the connect timeout (see _tick).
        self._timer = self.loop.call_later(cluster.config.connect_timeout, self._tick)

    async def _connect(self, cluster: Cluster) -> None:
        started = self.loop.time()
        try:
            ep = cluster.pick(PickContext(started))
        except ProxyError:
            self.listener.count("no_healthy_upstream")
            self._close()
            return
        self.endpoint = ep
        ep.active_requests += 1
        try:
            _, up = await self.loop.create_connection(partial(_Upstream, self), ep.host,
                                                      ep.port)
        except (OSError, asyncio.CancelledError) as e:
            expired = self._expired
            if isinstance(e, asyncio.CancelledError) and not expired:
                raise  # the client left: connection_lost accounts for the endpoint
            reason = "connect_timeout" if expired else "connect_failure"
            if expired:
                self._task.uncancel()  # type: ignore[union-attr]
            self.endpoint = None
            cluster.attempt_done(ep, started, False, 0, reason)
            self.listener.count(reason)
            self._close()
            return
        finally:
            self._task = None
        cluster.balancer.observe(ep, self.loop.time() - started, True)
        self.upstream = up
        if self._closed:
            up.transport.close()  # type: ignore[union-attr]
            return
        self.listener.count("connected")
        if cluster.config.connect_timeout > self.listener.config.idle_timeout / 2:
            # An idle timeout shorter than the connect timeout: tick from now on.
            if self._timer is not None:
                self._timer.cancel()
            self._connected_tick = False
            self._arm_tick()
        if self._pending:
            up.transport.write(b"".join(self._pending))  # type: ignore[union-attr]
            self._pending = []
            if self.transport is not None:
                self.transport.resume_reading()
        if self.eof_down and up.transport.can_write_eof():  # type: ignore[union-attr]
            up.transport.write_eof()  # type: ignore[union-attr]  # the client's EOF came early

    def data_received(self, data: bytes) -> None:
        self.active = True
        self.rx += len(data)
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.write(data)
        else:
            self._pending.append(data)
            if sum(map(len, self._pending)) > 256 * 1024 and self.transport is not None:
                self.transport.pause_reading()  # resumed by the upstream's connect

    def eof_received(self) -> bool:
        self.eof_down = True
        up = self.upstream
        if up is not None and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()
        return self.check_both_eof()

    def check_both_eof(self) -> bool:
        """Half-close passes through; once both directions ended, close both sides.
        Returns what ``eof_received`` must return (True: keep the transport open)."""
        if not (self.eof_down and self.eof_up):
            return True
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.close()
        if self.transport is not None:
            self.transport.close()
        return False

    def pause_writing(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.transport = None
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up = self.upstream
        if up is not None and up.transport is not None:
            up.transport.close()
        self._finish()
        self.listener.connection_closed(self)

    def upstream_lost(self) -> None:
        self._finish()
        self.upstream = None
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        ep, self.endpoint = self.endpoint, None
        if ep is not None:
            ep.active_requests -= 1
        self.listener.count_bytes(self.rx, self.tx)
        self.rx = self.tx = 0

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_tick(self) -> None:
        self._timer = self.loop.call_later(max(self.listener.config.idle_timeout / 2, 0.05),
                                           self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self.upstream is None:
            if self._task is not None:
                # Still connecting after the connect timeout: give up (_connect counts it
                # and closes).
                self._expired = True
                self._task.cancel()
                return
            # Not connected and not connecting: _connect failed and is closing us.
            return
        if self._connected_tick:
            # The connect-timeout timer firing after the connect: from now on the idle
            # tick, which starts counting quiet ticks afresh.
            self._connected_tick = False
            self.active = False
            self._arm_tick()
            return
        # Two quiet ticks in a row: idle for at least idle_timeout.
        if not self.active:
            self.listener.count("idle_timeout")
            self._close()
            return
        self.active = False
        self._arm_tick()

    def drain(self) -> None:
        """TCP has no message boundary to wait for: a draining listener leaves open
        connections alone until the drain timeout."""


class TcpListener(ListenerBase):
    """An L4 listener."""

    kind = "tcp"
    protocol = TcpDownstream

    def __init__(self, config: TcpListenerConfig, cluster: Cluster, *,
                 loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        super().__init__(config, loop=loop, stats=stats)
        self.cluster = cluster
        self._outcomes: dict[str, object] = {}  # outcome -> Counter child
        self._outcome_counts: dict[str, int] = {}  # outcome -> not yet in the metric

    def update(self, config: TcpListenerConfig, cluster: Cluster) -> None:
        """New connections go to ``cluster``; open ones keep their upstream."""
        self.config = config
        self.cluster = cluster

    def count(self, outcome: str) -> None:
        """Count a connection's outcome (in a plain integer until the next sweep)."""
        counts = self._outcome_counts
        counts[outcome] = counts.get(outcome, 0) + 1

    def sweep(self) -> None:
        """Periodic (and before a scrape): move the open connections' bytes and the
        counted outcomes into the metrics."""
        for conn in self.connections:
            self.count_bytes(conn.rx, conn.tx)
            conn.rx = conn.tx = 0
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

    async def drain(self, timeout: float) -> None:
        """Stop accepting; open connections may run until ``timeout``, then are cut."""
        self.stop_accepting()
        self.draining = True
        await self._wait_empty(timeout)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
            if conn.upstream is not None and conn.upstream.transport is not None:
                conn.upstream.transport.abort()
        self.sweep()  # a retired listener is swept no more
        if self.server is not None:
            await self.server.wait_closed()

    def snapshot(self) -> dict:
        return {"name": self.name, "protocol": "tcp", "address": self.config.address,
                "port": self.port if self.server else self.config.port,
                "connections": len(self.connections), "cluster": self.cluster.name}
