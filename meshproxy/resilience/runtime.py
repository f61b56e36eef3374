"""The resilience state of one proxy process, built from config and rebuilt on reload.

The config schema of each concern lives beside its runtime object (``breaker.py``,
``outlier.py``, ...). This module groups them the way the proxy's config does:

- :class:`ClusterResilienceConfig` / :class:`ClusterResilience`: per cluster: its
  breaker, per-endpoint breakers, outlier detector, cluster and per-endpoint limits.
- :class:`RouteResilienceConfig`: per route: priority (for shedding), function (the
  route group degradation switches target) and rate limit.
- :class:`ProxyResilienceConfig`: process-wide: load shedding, degradation switches,
  the event ring's size.

:class:`ResilienceRuntime` holds the live objects and :meth:`ResilienceRuntime.apply`
swaps in a new config: everything is validated and built first (a bad config raises and
changes nothing), then the tables are replaced in one step each. Objects whose config is
unchanged are kept as they are; clusters and the shedder are resized in place
(``reconfigure``), so an open breaker stays open, an ejected endpoint stays ejected and
in-flight counts stay right across a reload.

What this module does not do is sit on the request path: the engine's layers (see
``meshproxy/stack.py``) read these objects. The order they belong in is documented in the
package docstring (``__init__.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from meshproxy.endpoint import Endpoint
from meshproxy.resilience.breaker import Breaker, BreakerConfig, BreakerGroup
from meshproxy.resilience.concurrency import ConcurrencyConfig, EndpointLimits, LimitSet
from meshproxy.resilience.degrade import SwitchConfig, SwitchRegistry
from meshproxy.resilience.events import Clock, EventLog
from meshproxy.resilience.outlier import OutlierConfig, OutlierDetector
from meshproxy.resilience.ratelimit import (
    BucketBackend,
    LocalBackend,
    RateLimitConfig,
    RateLimiter,
)
from meshproxy.resilience.reuse import rebuild
from meshproxy.resilience.shedding import (
    RANK,
    LoadShedder,
    LoopLagMonitor,
    Priority,
    SheddingConfig,
)
from meshproxy.schema import Frozen


class ClusterResilienceConfig(Frozen, kw_only=True):
    """Protection of one upstream cluster. Each part that is None is off (costs nothing)."""

    breaker: BreakerConfig | None = None
    """The whole cluster's breaker: checked once per request, fed its final outcome."""
    endpoint_breaker: BreakerConfig | None = None
    """One breaker per endpoint: checked per attempt, so a retry can go elsewhere."""
    outlier: OutlierConfig | None = None
    limits: ConcurrencyConfig = msgspec.field(default_factory=ConcurrencyConfig)
    """Envoy's per-cluster thresholds; on by default with Envoy's defaults."""
    endpoint_limits: ConcurrencyConfig | None = None


class RouteResilienceConfig(Frozen, kw_only=True):
    priority: Priority = "normal"
    """Shed order under overload: best_effort first, critical last."""
    function: Annotated[str, Meta(min_length=1, max_length=63)] | None = None
    """The route group ("function") degradation switches of level ``function`` target."""
    rate_limit: RateLimitConfig | None = None

    @property
    def rank(self) -> int:
        return RANK[self.priority]


class ProxyResilienceConfig(Frozen, kw_only=True):
    shedding: SheddingConfig | None = None
    switches: tuple[SwitchConfig, ...] = ()
    events_capacity: Annotated[int, Meta(ge=16, le=1_000_000)] = 1024
    """Events kept for ``/events``: about a day of a busy mesh's state changes."""


class ClusterResilience:
    """The live protective state of one cluster."""

    def __init__(self, name: str, config: ClusterResilienceConfig, *, clock: Clock,
                 events: EventLog, endpoints: Sequence[Endpoint] = ()) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._events = events
        self._endpoints: list[Endpoint] = list(endpoints)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.breaker: Breaker | None = None
        self.endpoint_breakers: BreakerGroup | None = None
        self.outlier: OutlierDetector | None = None
        self.limits = LimitSet(name, config.limits)
        self.endpoint_limits: EndpointLimits | None = None
        self._build_parts(config)

    def _build_parts(self, c: ClusterResilienceConfig) -> None:
        ck, ev = self._clock, self._events
        self.breaker = _keep_or(self.breaker, c.breaker,
                                lambda: Breaker(self.name, c.breaker, clock=ck, events=ev))
        self.endpoint_breakers = _keep_or(
            self.endpoint_breakers, c.endpoint_breaker,
            lambda: BreakerGroup(self.name, c.endpoint_breaker, clock=ck, events=ev))
        had_outlier = self.outlier
        self.outlier = _keep_or(
            self.outlier, c.outlier,
            lambda: OutlierDetector(self.name, c.outlier, clock=ck, events=ev,
                                    endpoints=self._endpoints))
        self.endpoint_limits = _keep_or(self.endpoint_limits, c.endpoint_limits,
                                        lambda: EndpointLimits(self.name, c.endpoint_limits))
        if had_outlier is not None and self.outlier is not had_outlier:
            had_outlier.stop()
        if self._loop is not None and self.outlier is not None:
            self.outlier.start(self._loop)

    def reconfigure(self, config: ClusterResilienceConfig) -> bool:
        """Apply a new config in place; parts switched off are dropped, parts kept are
        resized, new parts are built."""
        self.limits.reconfigure(config.limits)
        self.config = config
        self._build_parts(config)
        return True

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Follow the cluster's endpoint set (the same Endpoint objects it holds)."""
        self._endpoints = list(endpoints)
        if self.outlier is not None:
            self.outlier.update(self._endpoints)
        addrs = [e.address for e in self._endpoints]
        if self.endpoint_breakers is not None:
            self.endpoint_breakers.retain(addrs)
        if self.endpoint_limits is not None:
            self.endpoint_limits.retain(addrs)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.outlier is not None:
            self.outlier.start(loop)

    def stop(self) -> None:
        self._loop = None
        if self.outlier is not None:
            self.outlier.stop()

    def statistics(self) -> dict[str, Any]:
        return {
            "breaker": self.breaker.statistics() if self.breaker else None,
            "endpoint_breakers": (self.endpoint_breakers.statistics()
                                  if self.endpoint_breakers else []),
            "outlier": self.outlier.statistics() if self.outlier else None,
            "limits": self.limits.statistics(),
        }

    def __repr__(self) -> str:
        return (f"<ClusterResilience {self.name} breaker={self.breaker and self.breaker.state} "
                f"{self.limits!r}>")


def _keep_or(current, cfg, build):  # type: ignore[no-untyped-def]
    """The part for ``cfg``: None when off, ``current`` reconfigured when it exists,
    else a new one."""
    if cfg is None:
        return None
    if current is not None and (current.config == cfg or current.reconfigure(cfg)):
        return current
    return build()


class ResilienceRuntime:
    """Every resilience object of one proxy process."""

    def __init__(self, config: ProxyResilienceConfig | None = None, *, clock: Clock,
                 wall: Clock = time.time, shared_buckets: BucketBackend | None = None) -> None:
        config = config or ProxyResilienceConfig()
        self.config = config
        self._clock = clock
        self._shared = shared_buckets
        self.events = EventLog(config.events_capacity, wall=wall)
        self.switches = SwitchRegistry(config.switches, clock=clock, events=self.events)
        self.lag: LoopLagMonitor | None = None
        self.shedder: LoadShedder | None = None
        self.clusters: dict[str, ClusterResilience] = {}
        self.routes: dict[str, RouteResilienceConfig] = {}
        self.rate_limiters: dict[str, RateLimiter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._set_shedding(config.shedding)

    def _set_shedding(self, cfg: SheddingConfig | None) -> None:
        if cfg is None:
            self.shedder = None
            if self.lag is not None:
                self.lag.stop()
                self.lag = None
            return
        if self.shedder is not None and (self.shedder.config == cfg
                                         or self.shedder.reconfigure(cfg)):
            pass
        else:
            self.shedder = LoadShedder(cfg, clock=self._clock, lag=self._lag_now,
                                       events=self.events)
        if self.lag is None or self.lag.interval != cfg.lag_interval:
            if self.lag is not None:
                self.lag.stop()
            self.lag = LoopLagMonitor(cfg.lag_interval)
            if self._loop is not None:
                self.lag.start(self._loop)

    def _lag_now(self) -> float:
        return self.lag.lag if self.lag is not None else 0.0

    def _backend(self, cfg: RateLimitConfig) -> BucketBackend:
        # "shared" without a shared table means one worker: the process is the group.
        if cfg.backend == "shared" and self._shared is not None:
            return self._shared
        return LocalBackend(cfg.max_keys)

    def apply(self, config: ProxyResilienceConfig, *,
              clusters: Mapping[str, ClusterResilienceConfig],
              routes: Mapping[str, RouteResilienceConfig],
              endpoints: Mapping[str, Sequence[Endpoint]] | None = None) -> None:
        """Swap in a new config, keeping unchanged state. Validation errors (duplicate
        switch names) raise before anything changes."""
        names = [s.name for s in config.switches]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate degradation switch names: {dupes}")
        endpoints = endpoints or {}
        self.switches.reload(config.switches)
        self._set_shedding(config.shedding)
        self.config = config

        def build_cluster(name: str, cfg: ClusterResilienceConfig) -> ClusterResilience:
            c = ClusterResilience(name, cfg, clock=self._clock, events=self.events,
                                  endpoints=endpoints.get(name, ()))
            if self._loop is not None:
                c.start(self._loop)
            return c

        old_clusters = self.clusters
        self.clusters = rebuild(old_clusters, clusters, build_cluster)
        for name, c in old_clusters.items():
            if self.clusters.get(name) is not c:
                c.stop()
        for name, eps in endpoints.items():
            if name in self.clusters:
                self.clusters[name].set_endpoints(eps)
        self.routes = dict(routes)
        limits = {r: c.rate_limit for r, c in routes.items() if c.rate_limit is not None}
        self.rate_limiters = rebuild(self.rate_limiters, limits, lambda r, c: RateLimiter(
            r, c, backend=self._backend(c), clock=self._clock))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the timers (outlier sweeps, loop-lag sampling) on ``loop``."""
        self._loop = loop
        if self.lag is not None:
            self.lag.start(loop)
        for c in self.clusters.values():
            c.start(loop)

    def stop(self) -> None:
        self._loop = None
        if self.lag is not None:
            self.lag.stop()
        for c in self.clusters.values():
            c.stop()
