"""The innermost handler: one attempt to one endpoint of the route's cluster.

Picks an endpoint through the cluster's balancer, takes a pooled keep-alive
connection (or opens one), sends the request and returns the response as soon as its
head arrives; the body then streams straight from the upstream connection to the
client. The endpoint's ``active_requests`` is raised here and lowered when the
exchange is over, at which point the balancer ``observe``s the outcome.

One retry is built in, and only for the keep-alive race every HTTP/1.1 client has: a
reused idle connection that the upstream closed just as we sent on it (reset before
any response byte), for an idempotent request whose body can be replayed. That is a
property of connection reuse, not a policy (Go's net/http does the same), so it does
not belong to the retry layer. Retry policy is a layer of its own above this one.
"""

from __future__ import annotations

import asyncio

from meshproxy.balance import PickContext
from meshproxy.cluster import Cluster
from meshproxy.errors import UpstreamReset
from meshproxy.http.message import Exchange, Response
from meshproxy.http.upstream import UpstreamConnection

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Forward:
    """Send the exchange to an endpoint of ``cluster``."""

    __slots__ = ("cluster", "loop")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.loop = cluster.loop

    async def __call__(self, ex: Exchange) -> Response:
        cluster = self.cluster
        exclude = ex.values.get("tried", ()) if ex.values else ()
        ep = cluster.pick(PickContext(self.loop.time()), exclude)
        pool = cluster.pool(ep)
        conn = pool.take_idle()
        if conn is None:
            conn = await pool.acquire()
        try:
            return await self._attempt(ex, ep, conn)
        except UpstreamReset:
            if not (conn.reused and ex.method in IDEMPOTENT and ex.body.replayable):
                raise
        # The stale keep-alive race: once more, on a fresh connection.
        conn = await pool.acquire()
        return await self._attempt(ex, ep, conn)

    async def _attempt(self, ex: Exchange, ep, conn: UpstreamConnection) -> Response:
        cluster = self.cluster
        started = self.loop.time()
        ep.active_requests += 1
        ex.attempts += 1

        def done(ok: bool, status: int, reason: str) -> None:
            cluster.attempt_done(ep, started, ok, status, reason)

        try:
            fut = conn.send(ex.upstream_head(), ex.body, head_only=ex.method == b"HEAD",
                            on_done=done)
        except UpstreamReset:
            conn.abort()
            done(False, 0, "body_not_replayable")
            raise
        try:
            return await fut
        except asyncio.CancelledError:
            conn.cancel()  # timed out or the client left: this connection is unusable
            raise
