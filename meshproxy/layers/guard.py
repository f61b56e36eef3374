"""Resilience layers: the protective concerns of :mod:`meshproxy.resilience` on the
request path. Each holds the live object it consults (owned by the proxy's
:class:`~meshproxy.resilience.runtime.ResilienceRuntime`, so its state outlives the
route stack across reloads) and refuses by raising :class:`Refused`, a
:class:`~meshproxy.errors.ProxyError` with its own status, reason and headers.

Order (outer to inner, see :mod:`meshproxy.stack` and the resilience package
docstring for why): :class:`RateLimitLayer`, :class:`SwitchLayer`,
:class:`ShedLayer`, :class:`ClusterLimitLayer`, :class:`ClusterBreakerLayer`, then
retries/hedging, then per attempt :class:`EndpointGuard` (endpoint breaker, endpoint
limits, outlier detection fed with each attempt's outcome).

A limit is held until the response head is returned, not until the body has
streamed: for the API-sized responses a sidecar carries the difference is small, and
it keeps a slot from being held by a slow-reading client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from meshproxy.cluster import Cluster
from meshproxy.errors import NoHealthyUpstream, ProxyError, Refused, UpstreamReset
from meshproxy.http.message import Exchange, Response
from meshproxy.http.reply import local_reply
from meshproxy.layers.base import Handler
from meshproxy.layers.forward import (
    ANSWERED,
    Forward,
    HeadCallback,
    PickContext,
    pick_context,
    stale_retry_ok,
)
from meshproxy.resilience.breaker import REASON as CIRCUIT_OPEN
from meshproxy.resilience.breaker import Admission, Breaker, BreakerGroup
from meshproxy.resilience.concurrency import EndpointLimits, Limiter
from meshproxy.resilience.degrade import (
    ClusterFallback,
    FailFast,
    StaticResponse,
    Switch,
    Verdict,
)
from meshproxy.resilience.outlier import OutlierDetector
from meshproxy.resilience.ratelimit import RateLimiter
from meshproxy.resilience.shedding import LoadShedder

# plain values for the fused path's inline checks
_PASS = int(Admission.PASS)
_PASS_VERDICT = Verdict.PASS


class RateLimitLayer:
    """429 (with ``Retry-After`` and ``RateLimit-*``) beyond the route's token bucket."""

    __slots__ = ("header", "inner", "limiter")

    def __init__(self, inner: Handler, *, limiter: RateLimiter) -> None:
        self.inner = inner
        self.limiter = limiter
        name = limiter.header_name
        self.header = name.encode() if name else None

    async def __call__(self, ex: Exchange) -> Response:
        hv = ex.header(self.header) if self.header is not None else None
        d = self.limiter.refusal(client_address=ex.client, header_value=hv,
                                 now=asyncio.get_running_loop().time())
        if d is not None:
            raise Refused(d.status, "rate_limited", headers=[
                (k.encode(), v.encode()) for k, v in d.headers()])
        return await self.inner(ex)


class SwitchLayer:
    """Degradation switches of the route (interface, function, service), most specific
    first: a degraded route answers its fallback; every answer is observed."""

    __slots__ = ("fallbacks", "inner", "switches")

    def __init__(self, inner: Handler, *, switches: Sequence[Switch],
                 fallbacks: dict[str, Handler]) -> None:
        self.inner = inner
        self.switches = tuple(switches)
        self.fallbacks = fallbacks  # cluster name -> handler, for ClusterFallback actions

    async def __call__(self, ex: Exchange) -> Response:
        loop = asyncio.get_running_loop()
        now = loop.time()
        checked: list[tuple[Switch, Verdict]] = []
        for sw in self.switches:
            v = _PASS_VERDICT if sw.passive else sw.check(now)
            if v == Verdict.DEGRADE:
                return await self._fallback(sw, ex)
            checked.append((sw, v))
        status = 599
        try:
            resp = await self.inner(ex)
            status = resp.status
            return resp
        except ProxyError as e:
            status = e.status
            raise
        finally:
            end = loop.time()
            for sw, v in checked:
                sw.observe(v, status < 500, end - now, end)

    async def _fallback(self, sw: Switch, ex: Exchange) -> Response:
        action = sw.config.action
        if isinstance(action, FailFast):
            raise Refused(action.status, action.reason, f"switch {sw.name} is degrading")
        if isinstance(action, StaticResponse):
            return _static(sw, action)
        assert isinstance(action, ClusterFallback)
        ex.endpoint = None
        return await self.fallbacks[action.cluster](ex)


class ShedLayer:
    """Priority load shedding: refuse the lowest priorities first under overload."""

    __slots__ = ("inner", "rank", "shedder")

    def __init__(self, inner: Handler, *, shedder: LoadShedder, rank: int) -> None:
        self.inner = inner
        self.shedder = shedder
        self.rank = rank

    async def __call__(self, ex: Exchange) -> Response:
        why = self.shedder.admit(self.rank)
        if why is not None:
            raise Refused(503, why)
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok = False
        try:
            resp = await self.inner(ex)
            ok = resp.status < 500
            return resp
        finally:
            end = loop.time()
            self.shedder.done(end - start if ok else None, end)


class ClusterLimitLayer:
    """The cluster's ``max_requests``: refused at once (503 ``max_requests``) beyond it."""

    __slots__ = ("inner", "limiter")

    def __init__(self, inner: Handler, *, limiter: Limiter) -> None:
        self.inner = inner
        self.limiter = limiter

    async def __call__(self, ex: Exchange) -> Response:
        limiter = self.limiter
        if not limiter.try_acquire():
            raise Refused(503, limiter.code, limiter.refusal)
        try:
            return await self.inner(ex)
        finally:
            limiter.release()


class ClusterBreakerLayer:
    """The cluster's breaker, once per request (outside retries): an open circuit
    answers 503 ``circuit_open`` at once; the request's final outcome feeds it."""

    __slots__ = ("breaker", "inner")

    def __init__(self, inner: Handler, *, breaker: Breaker) -> None:
        self.inner = inner
        self.breaker = breaker

    async def __call__(self, ex: Exchange) -> Response:
        loop = asyncio.get_running_loop()
        breaker = self.breaker
        token = breaker.allow(loop.time())
        if not token:
            raise Refused(503, CIRCUIT_OPEN, f"circuit of {breaker.name} is open")
        try:
            resp = await self.inner(ex)
        except asyncio.CancelledError:
            # the route timeout firing is a failure (a hanging upstream); the client
            # leaving is no verdict at all
            if timed_out(ex, loop.time()):
                breaker.record(token, False, loop.time())
            else:
                breaker.cancel(token)
            raise
        except (Refused, NoHealthyUpstream):
            breaker.cancel(token)  # refused on this side: the upstream was not asked
            raise
        except ProxyError:
            breaker.record(token, False, loop.time())
            raise
        breaker.record(token, resp.status < 500, loop.time())
        return resp


def timed_out(ex: Exchange, now: float) -> bool:
    """Whether a cancellation at ``now`` is the route's (or the try's) timeout firing
    rather than the client leaving or a hedge losing."""
    limit = ex.values.get("try_deadline", ex.deadline) if ex.values else ex.deadline
    return now >= min(limit, ex.deadline) - 0.001


class EndpointGuard:
    """Per attempt: pick an endpoint whose breaker admits the request and whose limit
    has room (others are skipped), run the attempt, feed its outcome to the endpoint
    breaker and the outlier detector."""

    __slots__ = ("breakers", "cluster", "inner", "limits", "outlier")

    def __init__(self, inner: Handler, *, cluster: Cluster, breakers: BreakerGroup | None,
                 limits: EndpointLimits | None, outlier: OutlierDetector | None) -> None:
        self.inner = inner
        self.cluster = cluster
        self.breakers = breakers
        self.limits = limits
        self.outlier = outlier

    async def __call__(self, ex: Exchange) -> Response:
        loop = asyncio.get_running_loop()
        cluster = self.cluster
        now = loop.time()
        values = ex.values if ex.values is not None else {}
        ex.values = values
        pinned = values.pop("endpoint", None)
        exclude = list(values.get("tried", ()))
        token = 1
        limiter = None
        refusal = ""
        for _ in range(len(cluster.endpoints) + 1):
            ep = pinned if pinned is not None else cluster.pick(
                pick_context(ex, cluster, now), exclude)
            pinned = None
            if self.breakers is not None:
                token = self.breakers.get(ep.address).allow(now)
                if not token:
                    refusal = CIRCUIT_OPEN
                    exclude.append(ep)
                    continue
            if self.limits is not None:
                limiter = self.limits.get(ep.address).requests
                if not limiter.try_acquire():
                    if self.breakers is not None:
                        self.breakers.get(ep.address).cancel(token)
                    refusal = limiter.code
                    limiter = None
                    exclude.append(ep)
                    continue
            break
        else:
            raise Refused(503, refusal or "no_healthy_upstream",
                          f"every endpoint of {cluster.name} refused")
        values["endpoint"] = ep
        status: int | None = None
        try:
            resp = await self.inner(ex)
            status = resp.status
            return resp
        except asyncio.CancelledError:
            if not timed_out(ex, loop.time()):  # a hedge lost or the client left
                if self.breakers is not None:
                    self.breakers.get(ep.address).cancel(token)
                token = 0
            raise
        finally:
            end = loop.time()
            if limiter is not None:
                limiter.release()
            if token and self.breakers is not None:
                self.breakers.get(ep.address).record(
                    token, status is not None and status < 500, end)
            if self.outlier is not None and token:
                self.outlier.observe(ep, status, end - now, end)


class GuardedDirect(Forward):
    """The fused fast path (:meth:`Forward.try_direct`) with the admission layers a
    route may have without losing it: rate limit, switches (fail fast or static
    fallback), shedding, the cluster's request limit and breaker, checked synchronously
    in the stack's order, their outcomes fed from the head callback. Same decisions
    and replies as the layers; it only saves the task and the coroutine frames.

    Admissions run only once an idle pooled connection is known to be there, so that a
    request falling back to the full stack is admitted once, by the stack; one that
    falls back after its admission (no idle connection after all, the keep-alive race)
    gives everything back first (:meth:`undo`), its rate-limit token included.
    """

    __slots__ = ("_passing", "breaker", "checked", "limit", "limiter", "rank", "rate_key",
                 "shedder", "switches", "token")

    def __init__(self, cluster: Cluster, *, limiter: RateLimiter | None,
                 switches: Sequence[Switch], shedder: LoadShedder | None, rank: int,
                 limit: Limiter | None, breaker: Breaker | None) -> None:
        super().__init__(cluster)
        self.limiter = limiter
        self.switches = tuple(switches)
        self.shedder = shedder
        self.rank = rank
        self.limit = limit
        self.breaker = breaker
        # every switch passive (the usual case): the verdicts, not rebuilt per request
        self._passing = tuple((sw, Verdict.PASS) for sw in self.switches)
        #: the admissions' results for the request just admitted (single-threaded: read
        #: right after admit, before anything else can run): the switch verdicts and the
        #: breaker's token, for finish or undo
        self.checked: Sequence[tuple[Switch, Verdict]] = self._passing
        self.token = 0
        #: and the rate limit's bucket key when it is keyed (None: keyed by nothing)
        self.rate_key: bytes | None = None

    def try_direct(self, ex: Exchange, on_head: HeadCallback) -> object:  # type: ignore[override]
        cluster = self.cluster
        loop = self.loop
        now = loop.time()
        ep = cluster.balancer.pick(PickContext(now) if cluster.hash_on is None
                                   else pick_context(ex, cluster, now), ())
        if ep is None:
            return None
        ex.endpoint = ep
        pool = cluster.pool(ep)
        if not pool.idle:
            return None
        refusal = self.admit(ex, now)
        if refusal is not None:
            if isinstance(refusal, Response):
                on_head(refusal, None)
            else:
                on_head(None, refusal)
            return ANSWERED
        switches, token, key = self.checked, self.token, self.rate_key
        conn = pool.take_idle()
        if conn is None:
            self.undo(token, key)
            return None

        # A closure over only what differs per request (the rest is read from self).
        def head(resp: Response | None, exc: ProxyError | None) -> None:
            if exc is not None and stale_retry_ok(ex, conn, exc):
                self.undo(token, key)  # the stack retries it and decides again
            else:
                self.finish(switches, token, resp is not None and resp.status < 500, now,
                            loop.time())
            on_head(resp, exc)

        try:
            self._send(ex, ep, conn, head)
        except UpstreamReset:
            self.undo(token, key)
            return None
        return conn

    def finish(self, switches: Sequence[tuple[Switch, Verdict]], token: int, ok: bool,
               started: float, end: float) -> None:
        """Feed an admitted request's outcome (at loop time ``end``) to the admissions
        that asked for it (what the layers do after their ``await``): the limit's slot
        back, the breaker's record, the shedder's latency, each switch's observation."""
        if self.limit is not None:
            self.limit.release()
        breaker = self.breaker
        if breaker is not None and not (ok and token == _PASS and breaker.quiet):
            breaker.record(token, ok, end)
        if self.shedder is not None:
            self.shedder.done(end - started if ok else None, end)
        for sw, v in switches:
            sw.observe(v, ok, end - started, end)

    @property
    def lane_ready(self) -> bool:
        """Whether the plain lane can run these admissions: it has no Exchange, so a
        rate limit keyed by the client or a header keeps the route off it."""
        return self.limiter is None or self.limiter.config.key == "none"

    def admit(self, ex: Exchange | None, now: float) -> ProxyError | Response | None:
        """Run the admissions in the stack's order: the refusal (a local reply's error or
        a static fallback), or None with :attr:`checked` and :attr:`token` set for
        :meth:`finish` or :meth:`undo` (and :attr:`rate_key`). ``ex`` may be None on the
        plain lane (see :attr:`lane_ready`)."""
        limiter = self.limiter
        if limiter is not None:
            if limiter.config.key == "none":
                self.rate_key = None
                d = limiter.refusal(now)
            else:
                assert ex is not None  # keyed limits keep a route off the lane
                hv = ex.header(limiter.header_name.encode()) if limiter.header_name else None
                key = self.rate_key = limiter.key(client_address=ex.client,
                                                  header_value=hv)
                d = limiter.refusal(now, key=key)
            if d is not None:
                return Refused(d.status, "rate_limited", headers=[
                    (k.encode(), v.encode()) for k, v in d.headers()])
        self.checked = self._passing
        for sw in self.switches:
            if not sw.passive:
                refusal = self._check_switches(now)
                if refusal is not None:
                    return refusal
                break
        if self.shedder is not None:
            why = self.shedder.admit(self.rank)
            if why is not None:
                return Refused(503, why)
        if self.limit is not None and not self.limit.try_acquire():
            if self.shedder is not None:
                self.shedder.done(None, now)
            return Refused(503, self.limit.code, self.limit.refusal)
        token = _PASS
        breaker = self.breaker
        if breaker is not None and breaker.state != "closed":
            token = breaker.allow(now)
            if not token:
                if self.limit is not None:
                    self.limit.release()
                if self.shedder is not None:
                    self.shedder.done(None, now)
                return Refused(503, CIRCUIT_OPEN)
        self.token = token
        return None

    def _check_switches(self, now: float) -> ProxyError | Response | None:
        """Some switch is not passive: ask each (most specific first)."""
        checked: list[tuple[Switch, Verdict]] = []
        for sw in self.switches:
            v = _PASS_VERDICT if sw.passive else sw.check(now)
            if v == Verdict.DEGRADE:
                action = sw.config.action
                if isinstance(action, FailFast):
                    return Refused(action.status, action.reason)
                assert isinstance(action, StaticResponse)  # cluster fallbacks are not fused
                return _static(sw, action)
            checked.append((sw, v))
        self.checked = checked
        return None

    def undo(self, token: int, rate_key: bytes | None = None) -> None:
        """Give back what an admitted request held, without an outcome (it goes to the
        stack, which admits it again): its rate-limit token (``rate_key``: the
        :attr:`rate_key` of its admission), its breaker token, its limit's slot."""
        if self.limiter is not None:
            self.limiter.refund(rate_key)
        if self.breaker is not None:
            self.breaker.cancel(token)
        if self.limit is not None:
            self.limit.release()
        if self.shedder is not None:
            self.shedder.done(None, self.loop.time())


def _static(sw: Switch, action: StaticResponse) -> Response:
    headers = [(k.encode(), v.encode()) for k, v in action.headers.items()]
    headers.append((b"x-mesh-switch", sw.name.encode()))
    return local_reply(action.status, "degraded", headers=headers, body=action.body.encode())
