"""The plain lane: a bodiless request on a route without policies, with no per-request
objects beyond the parser's callbacks and the pooled connection.

Every route whose stack is only the default layers (rescue and the route timeout, see
:func:`meshproxy.stack.direct_forward`) on a cluster without a consistent-hash key gets
a :class:`Lane`. A request takes it when the downstream protocol
(:mod:`meshproxy.http.server`) sees, at the end of its head, that nothing more than the
lane can do is needed: no body (no Content-Length, not chunked), not HEAD, no
``Upgrade``, no ``Expect``, nothing else being answered on the connection (a pipelined
request waits in the queue as an :class:`~meshproxy.http.message.Exchange`), and an
idle pooled connection to the endpoint the balancer picked. The request head (already
filtered: hop-by-hop removed, ``X-Forwarded-For``/``-Proto`` and ``X-Request-Id``
added) is serialised and written at once; the upstream connection
(:meth:`~meshproxy.http.upstream.UpstreamConnection.send_lane`) collects a response
with a Content-Length of at most :data:`LANE_MAX_BODY` and hands status, headers and
body to :meth:`~meshproxy.http.server.HttpServerProtocol.lane_answer`, which frames it
exactly as :meth:`~meshproxy.http.respond.ResponseWriter._send_response` would, in one
write.

What the lane keeps, and how (each pinned by ``tests/meshproxy/test_lane.py``):

- route metrics (status class, duration) through the route's tally, upstream metrics
  and the balancer's ``observe`` through :meth:`~meshproxy.cluster.Cluster.attempt_done`,
  bytes in and out through the connection's counters;
- the route timeout through the listener's :class:`~meshproxy.http.deadlines.TimeoutWheel`
  (the pooled connection is filed, as on the fused path), the stream idle timeout
  through the connection's own check;
- everything that is not the common case leaves the lane *for the rest of that
  request* and continues on the fused path's code: a response without a
  Content-Length, a larger one, a 101, or a failure turns the saved parts into an
  :class:`~meshproxy.http.message.Exchange` (``HttpServerProtocol._lane_exchange``) and
  goes through ``_direct_head``, which maps errors to local replies with
  ``x-mesh-reason``, retries the keep-alive race on a fresh connection through the full
  stack (not after a response head arrived: then the reset is a 502), and streams
  bodies with backpressure; without an idle pooled connection the request goes to the
  route's stack with the endpoint already picked, as on the fused path.

A route whose only policies are admission guards that can run without an Exchange
(the fused path's :class:`~meshproxy.layers.guard.GuardedDirect`: a rate limit with no
key, switches without a cluster fallback, shedding, the cluster's request limit and
breaker) takes the lane too: the admissions run right before the idle connection is
taken, as on the fused path (a refusal becomes an Exchange answered with its local
reply or static fallback), and the outcome is fed back to them when the lane's request
ends, however it ends (answered on the lane, left for the fused path after the head,
failed; a keep-alive race retried by the stack gives its admission back instead).
Without this, a route with a breaker would pay its guards and the whole per-request
machinery the lane saves.

A route with any other policy (deadline propagation, retries, hedging, endpoint guards,
a keyed rate limit, a hash-based balancer) has no lane: its requests take the fused or
the full path, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from meshproxy.balance import PickContext
from meshproxy.http.headers import STATUS_PHRASES

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.layers.guard import GuardedDirect
    from meshproxy.metrics import Tally

#: The largest response body the lane buffers whole before answering; a larger (or
#: unknown) length is streamed by the fused path with backpressure.
LANE_MAX_BODY: Final = 32 * 1024

#: Status lines by code, filled by :func:`status_line` (read directly on the hot path).
STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <code> <phrase>``, the same line ``_send_response`` writes (cached)."""
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %b" % (status, STATUS_PHRASES.get(status, b"-"))
        if len(STATUS_LINES) < 128:
            STATUS_LINES[status] = line
    return line


class Lane:
    """The lane of one route: its cluster, timeout and tally, and a reusable pick
    context (balancers read it during ``pick`` and keep no reference)."""

    __slots__ = ("cluster", "ctx", "deadlines", "guard", "tally", "timeout")

    def __init__(self, cluster: Cluster, *, timeout: float, tally: Tally,
                 guard: GuardedDirect | None = None) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.tally = tally
        #: the route's admission layers run synchronously (rate limit, switches,
        #: shedding, the cluster's limit and breaker), or None on a route without them
        self.guard = guard
        self.ctx = PickContext(0.0)
        #: The listener's TimeoutWheel queue for this timeout, taken on first use (a
        #: route belongs to one listener, whose wheel lives as long as it does).
        self.deadlines: dict | None = None

    def __repr__(self) -> str:
        return f"<Lane to {self.cluster.name} timeout={self.timeout}s>"


class LaneActive:
    """What the downstream protocol's ``_active`` holds while a lane request is being
    answered: not an Exchange (none was built), but answering the questions the
    protocol asks of whatever is active (no upgrade, no route to record: the lane
    records its own)."""

    __slots__ = ()
    upgrade = None
    route = None

    def __repr__(self) -> str:
        return "<request on the plain lane>"


IN_LANE: Final = LaneActive()
