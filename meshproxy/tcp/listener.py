"""The L4 listener: accepts on its listening sockets, makes a
:class:`~meshproxy.tcp.pipe.TcpConnection` of each client, runs the connect and idle
timeouts on the listener's tick, counts outcomes and bytes, drains.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from meshproxy.balance import PickContext
from meshproxy.listener import ListenerBase
from meshproxy.tcp.pipe import CSocket, TcpConnection
from meshproxy.tcp.poller import Acceptor, Poller, listening_sockets

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.config.listeners import TcpListenerConfig
    from meshproxy.metrics import Stats

log = logging.getLogger(__name__)

#: Accepts per poll of one listening socket (the rest wait for the next poll).
_ACCEPT_BATCH = 64
_STREAM = socket.SOCK_STREAM


class TcpListener(ListenerBase):
    """An L4 listener."""

    kind = "tcp"

    def __init__(self, config: TcpListenerConfig, cluster: Cluster, *,
                 loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
        super().__init__(config, loop=loop, stats=stats)
        self.cluster = cluster
        self.poller = Poller(loop, self._accept)
        #: Connections still connecting upstream (insertion-ordered), for the tick.
        self.connecting: dict[TcpConnection, None] = {}
        self._outcomes: dict[str, object] = {}  # outcome -> Counter child
        self._outcome_counts: dict[str, int] = {}  # outcome -> not yet in the metric
        self._next_idle_check = 0.0
        #: The balancer's pick context, one for all connections (see Lane.ctx).
        self.pick_context = PickContext(0.0)

    async def start(self, *, share: object | None = None) -> None:
        try:
            sockets = await listening_sockets(self.loop, self.config.address,
                                               self.config.port, share)
        except BaseException:
            self.poller.close()
            raise
        self.server = Acceptor(self.poller, sockets)  # type: ignore[assignment]

    def stop_accepting(self) -> None:
        super().stop_accepting()
        if not self.connections:
            self.poller.close()

    def update(self, config: TcpListenerConfig, cluster: Cluster) -> None:
        """New connections go to ``cluster``; open ones keep their upstream."""
        self.config = config
        self.cluster = cluster

    def _accept(self, lsock: socket.socket) -> None:
        family = lsock.family
        connections = self.connections
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, _ = lsock._accept()  # the C accept, without the wrapper's socket
            except BlockingIOError:
                break
            except OSError as e:
                # EMFILE and the like: the connection stays queued; say so, try again
                # at the next poll.
                log.warning("tcp listener %s: accept failed: %s", self.name, e)
                break
            # Left in blocking mode: every read and write passes MSG_DONTWAIT (pipe.py).
            conn = TcpConnection(self, CSocket(family, _STREAM, 0, fd))
            connections.add(conn)
            conn.connect()
        if connections:
            self.start_ticking()  # connect and idle timeouts

    def connection_closed(self, conn: TcpConnection, rx: int = 0, tx: int = 0) -> None:
        if not conn.up.connected:
            self.connecting.pop(conn, None)
        super().connection_closed(conn, rx, tx)
        if not self.connections and self.server is not None and not self.server.sockets:
            self.poller.close()  # no longer accepting and nothing left to serve

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
