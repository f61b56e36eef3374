"""Assembling a route's request path: the ordered list of layers, in one place.

Outermost first; each entry says why it sits where it does. A concern that is not
configured contributes ``None`` and is skipped, so it costs nothing at request time.
The result is built once per route per config load, and is immutable: a reload builds
new stacks, and requests in flight keep the stack they started with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from meshproxy.cluster import Cluster
from meshproxy.config.listeners import RouteConfig
from meshproxy.hedge import HedgePolicy
from meshproxy.layers.base import Handler, Layer
from meshproxy.layers.forward import Forward
from meshproxy.layers.guard import (
    ClusterBreakerLayer,
    ClusterLimitLayer,
    EndpointGuard,
    GuardedDirect,
    RateLimitLayer,
    ShedLayer,
    SwitchLayer,
)
from meshproxy.layers.rescue import Rescue
from meshproxy.layers.timeout import RouteTimeout
from meshproxy.layers.traffic import DeadlineLayer, HedgeLayer, RetryLayer
from meshproxy.retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:
    from meshproxy.resilience.runtime import ResilienceRuntime


@dataclass
class RouteState:
    """Per-route objects with state that must outlive one config load (a reload that
    leaves the route's retry and hedge settings alone keeps its budget and its
    latency windows)."""

    retry: RetryPolicy | None = None
    budget: RetryBudget | None = None
    hedge: HedgePolicy | None = None


@dataclass
class StackContext:
    """What building a route's stack needs beyond the route and its cluster."""

    listener: str = ""
    resilience: ResilienceRuntime | None = None
    clusters: dict[str, Cluster] = field(default_factory=dict)
    #: (listener, route) -> its state, kept by the proxy across reloads
    states: dict[tuple[str, str], RouteState] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    #: clusters whose config sets ``limits`` (max_requests, max_retries enforced)
    limited: set[str] = field(default_factory=set)

    def state(self, route: RouteConfig, cluster: Cluster) -> RouteState:
        key = (self.listener, route.name)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = RouteState()
        uses_budget = route.retry is not None or route.hedge is not None
        if st.budget is None or st.budget.config != route.retry_budget:
            st.budget = RetryBudget(route.retry_budget, clock=cluster.loop.time) \
                if uses_budget else None
        if route.retry is None:
            st.retry = None
        elif st.retry is None or st.retry.config != route.retry:
            st.retry = RetryPolicy(route.retry)
        if route.hedge is None:
            st.hedge = None
        elif st.hedge is None or st.hedge.config != route.hedge:
            st.hedge = HedgePolicy(route.hedge, clock=cluster.loop.time)
        return st


def route_layers(route: RouteConfig, cluster: Cluster | None = None,
                 ctx: StackContext | None = None) -> list[Layer | None]:
    """The layers of ``route``, outermost first."""
    ctx = ctx or StackContext()
    rt = ctx.resilience
    guard = cluster.guard if cluster is not None else None
    key = f"{ctx.listener}/{route.name}"
    st = ctx.state(route, cluster) if cluster is not None else RouteState()
    limiter = rt.rate_limiters.get(key) if rt is not None else None
    switches = (rt.switches.applicable(route=route.name, function=route.function,
                                       cluster=route.cluster)
                if rt is not None and len(rt.switches) else ())
    shedder = rt.shedder if rt is not None else None
    return [
        # Rescue is outermost so that every refusal or failure below it, whichever
        # layer raised it, is answered by the one mapping from error to local reply.
        Rescue,
        # The caller's deadline tightens the request's before the route timeout arms
        # its timer (at the earlier of the two); an expired one fails fast here.
        partial(DeadlineLayer, config=route.deadline) if route.deadline else None,
        # The route timeout bounds everything below: queueing for a connection, every
        # attempt of a retry, and waiting out a breaker's probe. Inside rescue so its
        # 504 is an ordinary local reply.
        partial(RouteTimeout, timeout=route.timeout),
        # Rate limit: the client's contract, the cheapest refusal, before any work.
        partial(RateLimitLayer, limiter=limiter) if limiter is not None else None,
        # Degradation switch: a fallback costs no capacity, so it comes before
        # shedding; it observes the final answer of everything below, refusals
        # included (an open breaker *is* a failing service).
        partial(SwitchLayer, switches=switches,
                fallbacks=_fallbacks(switches, ctx)) if switches else None,
        # Load shedding by priority: protects this process before anything queues.
        partial(ShedLayer, shedder=shedder, rank=route.rank) if shedder is not None else None,
        # Cluster max_requests: refused before the breaker, so overload is not
        # mistaken for failure.
        partial(ClusterLimitLayer, limiter=guard.limits.requests)
        if guard is not None and route.cluster in ctx.limited else None,
        # Cluster breaker, once per request outside the retry loop: an open circuit
        # refuses once, and retries do not count as separate failures.
        partial(ClusterBreakerLayer, breaker=guard.breaker)
        if guard is not None and guard.breaker is not None else None,
        # Retries with the route's budget; each attempt goes through the layers below.
        partial(RetryLayer, policy=st.retry, budget=st.budget, rng=ctx.rng,
                limiter=guard.limits.retries
                if guard is not None and route.cluster in ctx.limited else None)
        if st.retry is not None and st.budget is not None else None,
        # Hedging: each copy is an attempt of its own through the layers below.
        partial(HedgeLayer, policy=st.hedge, budget=st.budget, cluster=cluster)
        if st.hedge is not None and st.budget is not None else None,
        # Per attempt: endpoint breaker and limits, outlier detection fed.
        partial(EndpointGuard, cluster=cluster, breakers=guard.endpoint_breakers,
                limits=guard.endpoint_limits, outlier=guard.outlier)
        if guard is not None and (guard.endpoint_breakers is not None
                                  or guard.endpoint_limits is not None
                                  or guard.outlier is not None) else None,
    ]


def _fallbacks(switches: tuple, ctx: StackContext) -> dict[str, Handler]:
    from meshproxy.resilience.degrade import ClusterFallback

    out: dict[str, Handler] = {}
    for sw in switches:
        action = sw.config.action
        if isinstance(action, ClusterFallback) and action.cluster in ctx.clusters:
            out[action.cluster] = Forward(ctx.clusters[action.cluster])
    return out


#: The layers every route has. A route with nothing else runs "fused" (below).
DEFAULT_LAYERS = (Rescue, RouteTimeout)


def _layer_type(layer: Layer) -> object:
    return layer.func if isinstance(layer, partial) else layer


#: Layers the fused path can run synchronously (see GuardedDirect).
FUSABLE = frozenset({RateLimitLayer, SwitchLayer, ShedLayer, ClusterLimitLayer,
                     ClusterBreakerLayer})


def direct_forward(route: RouteConfig, cluster: Cluster,
                   ctx: StackContext | None = None) -> Forward | None:
    """The fused fast path of a route, or None when its stack needs the task.

    A route whose stack is only the defaults runs "pick, send on an idle pooled
    connection, answer or map the error" with callbacks (:meth:`Forward.try_direct`
    and a timer for the route timeout) instead of a task and a coroutine frame per
    layer. Admission layers (rate limit, switches without a cluster fallback,
    shedding, the cluster's request limit and breaker) run synchronously in front of
    it (:class:`~meshproxy.layers.guard.GuardedDirect`), so configuring them does not
    cost the fast path. The semantics are the stack's (same decisions, replies and
    reasons); whenever it cannot (no idle connection, the stale-connection retry) the
    request falls back to the full stack. Any other layer (deadline, retry, hedging,
    the per-attempt endpoint guard) turns it off.
    """
    layers = [layer for layer in route_layers(route, cluster, ctx) if layer is not None]
    types = tuple(_layer_type(layer) for layer in layers)
    if types[:2] != DEFAULT_LAYERS or not set(types[2:]) <= FUSABLE:
        return None
    if len(types) == 2:
        return Forward(cluster)
    kw: dict = {"limiter": None, "switches": (), "shedder": None, "rank": route.rank,
                "limit": None, "breaker": None}
    for layer in layers[2:]:
        assert isinstance(layer, partial)
        k = layer.keywords
        if layer.func is RateLimitLayer:
            kw["limiter"] = k["limiter"]
        elif layer.func is SwitchLayer:
            if k["fallbacks"]:
                return None  # a cluster fallback is an async forward of its own
            kw["switches"] = k["switches"]
        elif layer.func is ShedLayer:
            kw["shedder"] = k["shedder"]
        elif layer.func is ClusterLimitLayer:
            kw["limit"] = k["limiter"]
        else:
            kw["breaker"] = k["breaker"]
    return GuardedDirect(cluster, **kw)


def build_handler(route: RouteConfig, cluster: Cluster,
                  ctx: StackContext | None = None) -> Handler:
    """The request path of ``route``: its layers around :class:`Forward`."""
    # Innermost: one attempt to one endpoint picked by the cluster's balancer.
    handler: Handler = Forward(cluster)
    for layer in reversed(route_layers(route, cluster, ctx)):
        if layer is not None:
            handler = layer(handler)
    return handler
