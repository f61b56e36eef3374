"""Routing: which route (and so which cluster and layer stack) answers a request.

An HTTP listener's routes are tried in order; the first whose every condition holds
wins (host, then path, then headers: cheapest test first). Hosts compare without the
port and case-insensitively; ``*.example.com`` matches any subdomain. A
:class:`Router` is immutable and built per config load; a reload swaps the
listener's router, so a keep-alive connection's next request already sees the new one
while the request in flight keeps its route.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from meshproxy.config.listeners import HeaderMatch, HttpListenerConfig, RouteConfig
from meshproxy.http.headers import first_value
from meshproxy.http.lane import Lane
from meshproxy.layers.forward import Forward
from meshproxy.layers.guard import GuardedDirect
from meshproxy.stack import StackContext, build_handler, direct_forward

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.http.headers import Headers
    from meshproxy.http.message import Exchange
    from meshproxy.layers.base import Handler
    from meshproxy.metrics import Stats


class _HeaderRule:
    __slots__ = ("invert", "name", "present", "regex", "value")

    def __init__(self, m: HeaderMatch) -> None:
        self.name = m.name.lower().encode()
        self.value = m.value.encode() if m.value is not None else None
        self.regex = re.compile(m.regex.encode()) if m.regex is not None else None
        self.present = m.present
        self.invert = m.invert

    def holds(self, headers: Headers, lowered: list[bytes]) -> bool:
        v = first_value(headers, lowered, self.name)
        if self.present is not None:
            ok = (v is not None) == self.present
        elif v is None:
            ok = False
        elif self.value is not None:
            ok = v == self.value
        else:
            ok = self.regex.fullmatch(v) is not None  # type: ignore[union-attr]
        return ok != self.invert


class Route:
    """One route of a listener, with its handler stack and bound metrics."""

    __slots__ = ("_exact_host", "_headers", "_path", "_prefix", "_regex", "_suffix",
                 "cluster", "config", "direct", "handler", "lane", "name", "tally", "timeout")

    def __init__(self, config: RouteConfig, cluster: Cluster, *, listener: str,
                 stats: Stats, ctx: StackContext | None = None) -> None:
        self.name = config.name
        self.config = config
        self.cluster = cluster
        self.handler: Handler = build_handler(config, cluster, ctx)
        self.direct = direct_forward(config, cluster, ctx)
        self.timeout = config.timeout
        m = config.match
        host = m.host.lower().encode() if m.host else None
        self._suffix = host[1:] if host and host.startswith(b"*.") else None
        self._exact_host = host if host and self._suffix is None else None
        self._prefix = m.prefix.encode() if m.prefix else None
        self._path = m.path.encode() if m.path else None
        self._regex = re.compile(m.regex.encode()) if m.regex else None
        self._headers = tuple(_HeaderRule(h) for h in m.headers)
        self.tally = stats.route_tally(listener, self.name)
        # The plain lane: for a route whose stack is the defaults (its fused path is a
        # bare Forward), or the defaults and admission guards the lane can run without
        # an Exchange, and whose balancer needs nothing from the request.
        direct = self.direct
        guard = direct if isinstance(direct, GuardedDirect) and direct.lane_ready else None
        self.lane = (Lane(cluster, timeout=self.timeout, tally=self.tally, guard=guard)
                     if (type(direct) is Forward or guard is not None)
                     and cluster.hash_on is None else None)

    def matches(self, host: bytes, path: bytes, headers: Headers,
                lowered: list[bytes]) -> bool:
        """Whether every condition of the route holds for this request head."""
        if self._exact_host is not None and host != self._exact_host:
            return False
        if self._suffix is not None and not host.endswith(self._suffix):
            return False
        if self._prefix is not None and not path.startswith(self._prefix):
            return False
        if self._path is not None and path != self._path:
            return False
        if self._regex is not None and self._regex.fullmatch(path) is None:
            return False
        # No generator object per request for the usual route without header rules.
        return not self._headers or all(rule.holds(headers, lowered) for rule in self._headers)


class Router:
    """The ordered routes of one HTTP listener."""

    __slots__ = ("_first", "listener", "routes", "version")

    def __init__(self, config: HttpListenerConfig, clusters: dict[str, Cluster], *,
                 stats: Stats, version: str = "", ctx: StackContext | None = None) -> None:
        self.listener = config.name
        self.version = version
        if ctx is not None:
            ctx.listener = config.name
        self.routes = tuple(Route(r, clusters[r.cluster], listener=config.name, stats=stats,
                                  ctx=ctx)
                            for r in config.routes)
        # The first route when its only condition is a path prefix (or none: the usual
        # sidecar route), checked inline before the general loop.
        first = self.routes[0] if self.routes else None
        self._first = (first, first._prefix) if first is not None and not (
            first._exact_host or first._suffix or first._path or first._regex
            or first._headers) else None

    def match(self, ex: Exchange) -> Route | None:
        return self.match_head(ex.host, ex.path, ex.headers, ex.lowered)

    def match_head(self, host: bytes, path: bytes, headers: Headers,
                   lowered: list[bytes]) -> Route | None:
        """The first route whose conditions hold (the parts of a request head: the
        plain lane routes before any Exchange exists)."""
        first = self._first
        if first is not None and (first[1] is None or path.startswith(first[1])):
            return first[0]
        for route in self.routes:
            if route.matches(host, path, headers, lowered):
                return route
        return None
