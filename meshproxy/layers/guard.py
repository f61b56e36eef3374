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
from meshproxy.errors import NoHealthyUpstream, Overloaded, ProxyError
from meshproxy.http.message import Exchange, Response
from meshproxy.http.reply import local_reply
from meshproxy.layers.base import Handler
from meshproxy.layers.forward import pick_context
from meshproxy.resilience.breaker import REASON as CIRCUIT_OPEN
from meshproxy.resilience.breaker import Breaker, BreakerGroup
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


class Refused(Overloaded):
    """A protective layer's refusal, with its status, reason and response headers."""

    def __init__(self, status: int, reason: str, detail: str = "", *,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status = status
        self.headers = headers


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
        d = self.limiter.check(client_address=ex.client, header_value=hv,
                               now=asyncio.get_running_loop().time())
        if not d.allowed:
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
            v = sw.check(now)
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
            headers = [(k.encode(), v.encode()) for k, v in action.headers.items()]
            headers.append((b"x-mesh-switch", sw.name.encode()))
            resp = local_reply(action.status, "degraded", headers=headers,
                               body=action.body.encode())
            return resp
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
