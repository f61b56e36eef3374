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

A retry layer steers the next attempt away from endpoints that failed by listing them
in ``ex.values["tried"]`` (passed to the balancer as ``exclude``); ``ex.endpoint`` is
the endpoint of the latest attempt. A layer that picks the endpoint itself (the
endpoint guard, which must check that endpoint's breaker first) hands it over in
``ex.values["endpoint"]``. For consistent-hash clusters the request's key is computed
here (:func:`~meshproxy.balance.hashing.request_hash_key`). With deadline propagation
on (``ex.values["deadline_header"]``), each attempt sends the time left.

:meth:`Forward.try_direct` is the same attempt without a task, for routes whose stack
is only the defaults (see :func:`meshproxy.stack.direct_forward`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from meshproxy.balance import PickContext
from meshproxy.balance.hashing import request_hash_key
from meshproxy.cluster import Cluster
from meshproxy.deadline import format_timeout_ms
from meshproxy.endpoint import Endpoint
from meshproxy.errors import ProxyError, UpstreamReset
from meshproxy.http.message import Exchange, Response
from meshproxy.http.upstream import UpstreamConnection

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

#: What a fused path's ``try_direct`` returns when it answered the request itself (a
#: refusal or a fallback, through the head callback): nothing more to do.
ANSWERED = object()

#: Callback form of the response-head future: (response, None) or (None, error).
HeadCallback = Callable[[Response | None, ProxyError | None], None]


def stale_retry_ok(ex: Exchange, conn: UpstreamConnection, exc: ProxyError) -> bool:
    """True for the keep-alive race: a reused connection reset before any response,
    for an idempotent request whose body can be sent again."""
    return (isinstance(exc, UpstreamReset) and conn.reused > 0 and ex.method in IDEMPOTENT
            and ex.body.replayable)


def pick_context(ex: Exchange, cluster: Cluster, now: float) -> PickContext:
    """The balancer's view of ``ex``: the time, and the hash key for hash policies."""
    hash_on = cluster.hash_on
    if hash_on is None:
        return PickContext(now)
    return PickContext(now, hash_key=request_hash_key(hash_on, headers=ex.headers,
                                                      client_host=ex.client))


class Forward:
    """Send the exchange to an endpoint of ``cluster``."""

    __slots__ = ("cluster", "loop")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.loop = cluster.loop

    async def __call__(self, ex: Exchange) -> Response:
        cluster = self.cluster
        ep = ex.endpoint
        values = ex.values
        pinned = values.pop("endpoint", None) if values else None
        if pinned is not None:
            ep = pinned
        elif ep is None or ex.attempts:
            exclude = values.get("tried", ()) if values else ()
            ep = cluster.pick(pick_context(ex, cluster, self.loop.time()), exclude)
        ex.endpoint = ep
        pool = cluster.pool(ep)
        conn = pool.take_idle()
        if conn is None:
            conn = await pool.acquire()
        try:
            try:
                return await self._send(ex, ep, conn, None)
            except UpstreamReset as e:
                if not stale_retry_ok(ex, conn, e):
                    raise
            # The stale keep-alive race: once more, on a fresh connection.
            conn = await pool.acquire()
            return await self._send(ex, ep, conn, None)
        except asyncio.CancelledError:
            conn.cancel()  # timed out or the client left: this connection is unusable
            raise

    def try_direct(self, ex: Exchange, on_head: HeadCallback) -> UpstreamConnection | None:
        """Start the attempt without a task when an idle pooled connection is at hand;
        None when not (the endpoint picked is kept in ``ex.endpoint`` for the task)."""
        cluster = self.cluster
        ctx = (PickContext(self.loop.time()) if cluster.hash_on is None
               else pick_context(ex, cluster, self.loop.time()))
        ep = cluster.balancer.pick(ctx, ())
        if ep is None:
            return None
        ex.endpoint = ep
        conn = cluster.pool(ep).take_idle()
        if conn is None:
            return None
        try:
            self._send(ex, ep, conn, on_head)
        except UpstreamReset:
            return None
        return conn

    def _send(self, ex: Exchange, ep: Endpoint, conn: UpstreamConnection,
              on_head: HeadCallback | None) -> asyncio.Future[Response]:
        cluster = self.cluster
        started = self.loop.time()
        ep.active_requests += 1
        ex.attempts += 1
        # Called as done(ok, status, reason) when the exchange is over (a partial: no
        # Python frame of its own on the hot path).
        done = partial(cluster.attempt_done, ep, started)
        head = ex.upstream_head()
        values = ex.values
        if values and "deadline_header" in values:
            # the time left, as of this attempt (the head is otherwise reused as is)
            head = (head[:-2] + values["deadline_header"] + b": "
                    + format_timeout_ms(ex.deadline - started) + b"\r\n\r\n")
        try:
            return conn.send(head, ex.body, head_only=ex.method == b"HEAD",
                             on_done=done, on_head=on_head)
        except UpstreamReset:
            conn.abort()
            done(False, 0, "body_not_replayable")
            raise
