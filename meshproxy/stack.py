"""Assembling a route's request path: the ordered list of layers, in one place.

Outermost first; each entry says why it sits where it does. A concern that is not
configured contributes ``None`` and is skipped, so it costs nothing at request time.
The result is built once per route per config load, and is immutable: a reload builds
new stacks, and requests in flight keep the stack they started with.
"""

from __future__ import annotations

from functools import partial

from meshproxy.cluster import Cluster
from meshproxy.config.listeners import RouteConfig
from meshproxy.layers.base import Handler, Layer
from meshproxy.layers.forward import Forward
from meshproxy.layers.rescue import Rescue
from meshproxy.layers.timeout import RouteTimeout


def route_layers(route: RouteConfig) -> list[Layer | None]:
    """The layers of ``route``, outermost first."""
    return [
        # Rescue is outermost so that every refusal or failure below it, whichever
        # layer raised it, is answered by the one mapping from error to local reply.
        Rescue,
        # The route timeout bounds everything below: queueing for a connection, every
        # attempt of a retry, and waiting out a breaker's probe. Inside rescue so its
        # 504 is an ordinary local reply.
        partial(RouteTimeout, timeout=route.timeout),
        # Planned, outer to inner (each None unless configured for the route):
        # inbound rate limit (cheapest refusal first, before any work is queued),
        # degradation switch (fallback instead of the cluster), concurrency limit and
        # load shedding (admission), retry with budget and hedging (each attempt goes
        # through the layers below it), circuit breaker (per attempt, so a retry can
        # go to a healthy endpoint while one is open).
    ]


#: The layers every route has. A route with nothing else runs "fused" (below).
DEFAULT_LAYERS = (Rescue, RouteTimeout)


def _layer_type(layer: Layer) -> object:
    return layer.func if isinstance(layer, partial) else layer


def direct_forward(route: RouteConfig, cluster: Cluster) -> Forward | None:
    """The fused fast path of a route whose stack is only the defaults, else None.

    Such a route's whole path is "pick, send on an idle pooled connection, answer or
    map the error": the downstream protocol runs it with callbacks
    (:meth:`Forward.try_direct` and a timer for the route timeout) instead of a task
    and three coroutine frames per request. The semantics are the same as the stack's
    (the same local replies and reasons); whenever it cannot (no idle connection, the
    stale-connection retry) the request falls back to the full stack. Any other layer
    configured for the route turns it off.
    """
    types = tuple(_layer_type(layer) for layer in route_layers(route) if layer is not None)
    return Forward(cluster) if types == DEFAULT_LAYERS else None


def build_handler(route: RouteConfig, cluster: Cluster) -> Handler:
    """The request path of ``route``: its layers around :class:`Forward`."""
    # Innermost: one attempt to one endpoint picked by the cluster's balancer.
    handler: Handler = Forward(cluster)
    for layer in reversed(route_layers(route)):
        if layer is not None:
            handler = layer(handler)
    return handler
