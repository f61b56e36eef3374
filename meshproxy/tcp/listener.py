"""The L4 listener: accepts on its listening sockets, makes a
:class:`~meshproxy.tcp.pipe.TcpConnection` of each client, runs the connect and idle
timeouts on the listener's tick, counts outcomes and bytes, drains.
"""

from __future__ import annotations

import asyncio
from _socket import socket as CSocket
from typing import TYPE_CHECKING, Any, Final

from meshproxy.balance import PickContext
from meshproxy.listener import ListenerBase
from meshproxy.tcp.pipe import TcpConnection

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.config.listeners import TcpListenerConfig
    from meshproxy.metrics import Stats

#: ``read_at_accept``: the most its score counts (hits beyond are not remembered, so a
#: change of clients is noticed within this many connections) ...
_EARLY_MAX: Final = 8
#: ... and, while it guesses "no bytes yet", one new connection in this many still reads
#: at once, to notice when the clients change.
_EARLY_PROBE: Final = 16


class TcpListener(ListenerBase):
    """An L4 listener."""

    kind = "tcp"
    config: TcpListenerConfig

    def __init__(self, config: TcpListenerConfig, cluster: Cluster, *,
                 loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        super().__init__(config, loop=loop, stats=stats)
        self.cluster = cluster
        #: Connections still connecting upstream (insertion-ordered), for the tick.
        self.connecting: dict[TcpConnection, None] = {}
        self._outcomes: dict[str, object] = {}  # outcome -> Counter child
        self._outcome_counts: dict[str, int] = {}  # outcome -> not yet in the metric
        self._next_idle_check = 0.0
        #: The balancer's pick context, one for all connections (see Lane.ctx).
        self.pick_context = PickContext(0.0)
        #: How often reading a new client at accept has found bytes lately (see
        #: read_at_accept): 0 to _EARLY_MAX.
        self.early_score = _EARLY_MAX // 2
        self._early_skipped = 0

    def update(self, config: TcpListenerConfig, cluster: Cluster) -> None:
        """New connections go to ``cluster``; open ones keep their upstream."""
        self.config = config
        self.cluster = cluster

    def accepted(self, sock: CSocket, peer: Any) -> None:
        conn = TcpConnection(self, sock)
        self.connections.add(conn)
        conn.connect()
        if not conn.closed:
            self.start_ticking()  # connect and idle timeouts

    def read_at_accept(self) -> bool:
        """Whether a new client's socket is read at once (``TcpConnection._open``):
        yes while reading at accept has found bytes more often than not lately.

        Which it does depends on the clients: a remote client's first bytes follow its
        handshake's last packet and are usually in by the time it is accepted; a local
        client scheduled on another core (an application talking to its sidecar, a
        load generator) has usually not written yet, and the read would fail (a system
        call and an exception: in the benchmark's connection-per-request run 83% of
        them found nothing, and not making them took about 5% off the proxy's CPU per
        connection). The score moves by one per read (up when it found bytes or the
        client's EOF, down when not), between 0 and ``_EARLY_MAX``; at 0 one
        connection in ``_EARLY_PROBE`` still reads at once."""
        if self.early_score > 0:
            return True
        self._early_skipped += 1
        if self._early_skipped >= _EARLY_PROBE:
            self._early_skipped = 0
            return True
        return False

    def early_read(self, found: bool) -> None:
        """The outcome of a read at accept (see ``read_at_accept``)."""
        if found:
            if self.early_score < _EARLY_MAX:
                self.early_score += 1
        elif self.early_score > 0:
            self.early_score -= 1

    def connection_closed(self, conn: TcpConnection, rx: int = 0, tx: int = 0) -> None:
        if not conn.up.connected:
            self.connecting.pop(conn, None)
        super().connection_closed(conn, rx, tx)

    def abort_connections(self) -> None:
        for conn in list(self.connections):
            conn.abort()

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
