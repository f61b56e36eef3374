"""A cluster: a named set of endpoints, its balancer, and a connection pool per endpoint.

The same :class:`Cluster` object serves the config file today and discovery from the
control plane later: both call :meth:`Cluster.set_endpoints`, which updates the set IN
PLACE. An address that stays keeps its :class:`~meshproxy.endpoint.Endpoint` object
(health, counters, balancer state) and its pool; a new address gets both; a removed
one leaves the balancer at once, and its pool closes idle connections now and busy
ones when their exchange ends (no request in flight fails because the set changed).

A reload that keeps a cluster's name keeps the object too (:meth:`Cluster.configure`).
Requests go through :meth:`Cluster.pick` and account for their outcome through
:meth:`Cluster.attempt_done`, which keeps ``Endpoint.active_requests`` and tells the
balancer (``observe``).

The balancer comes from :func:`meshproxy.balance.factory.make_balancer` (the cluster's
``load_balancer`` section); a reload that changes that section builds a new one, an
endpoint change only ``update``s it. Active health checks (:mod:`meshproxy.health`)
run while the cluster is started (:meth:`start` / :meth:`aclose`) and follow
``set_endpoints``; the resilience state of the cluster (``guard``, a
:class:`~meshproxy.resilience.runtime.ClusterResilience` the proxy attaches) follows
it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from meshproxy.balance import Balancer, PickContext
from meshproxy.balance.factory import make_balancer
from meshproxy.endpoint import Endpoint
from meshproxy.errors import NoHealthyUpstream
from meshproxy.health import HealthChecker
from meshproxy.http.pool import Pool
from meshproxy.resilience.snapshot import plain

if TYPE_CHECKING:
    from meshproxy.config.clusters import ClusterConfig
    from meshproxy.http.upstream import UpstreamConnection
    from meshproxy.metrics import Stats, Tally
    from meshproxy.resilience.concurrency import Limiter
    from meshproxy.resilience.runtime import ClusterResilience


class Cluster:
    """Endpoints of one upstream service, with their pools and balancer."""

    def __init__(self, config: ClusterConfig, *, loop: asyncio.AbstractEventLoop,
                 stats: Stats) -> None:
        self.name = config.name
        self.loop = loop
        self.stats = stats
        self.config = config
        self.endpoints: list[Endpoint] = []
        self.pools: dict[tuple[str, int], Pool] = {}
        self._pool_of: dict[Endpoint, Pool] = {}  # same pools by identity: no key tuple
        self.balancer: Balancer = self._make_balancer(config, [])
        #: Whether the balancer uses attempts' outcomes (``observe``); callers skip the
        #: call when it does not.
        self.learns = getattr(self.balancer, "learns", True)
        #: The consistent-hash key source (ring_hash, maglev), else None.
        self.hash_on = config.load_balancer.hash_on
        self._tallies: dict[Endpoint, Tally] = {}
        self.health: HealthChecker | None = None
        self.guard: ClusterResilience | None = None
        self.connection_limit: Limiter | None = None
        self._panic_seen = 0
        self.set_endpoints((e.host, e.port, e.weight) for e in config.endpoints)

    def _make_balancer(self, config: ClusterConfig, endpoints: list[Endpoint]) -> Balancer:
        return make_balancer(config.load_balancer, endpoints, clock=self.loop.time)

    def configure(self, config: ClusterConfig) -> None:
        """Apply a reloaded config of the same name, keeping endpoints that stay."""
        if config.load_balancer != self.config.load_balancer:
            self._count_panic()
            self.balancer = self._make_balancer(config, self.endpoints)
            self.learns = getattr(self.balancer, "learns", True)
            self._panic_seen = 0
            self.hash_on = config.load_balancer.hash_on
        old_check = self.config.health_check
        self.config = config
        for pool in self.pools.values():
            pool.configure(config)
        self.set_endpoints((e.host, e.port, e.weight) for e in config.endpoints)
        if self.health is not None and config.health_check != old_check:
            if config.health_check is None:
                self._stop_health()
                for ep in self.endpoints:
                    ep.healthy = True  # nothing judges them any more
            else:
                self.health.reconfigure(config.health_check)
        elif self.health is None and config.health_check is not None and self._started:
            self.start()

    # --- lifecycle (health checks) --------------------------------------------------
    _started = False
    _stopping: set[asyncio.Task[None]] | None = None

    def start(self) -> None:
        """Start active health checks (if configured). Needs the running loop."""
        self._started = True
        if self.config.health_check is not None and self.health is None:
            self.health = HealthChecker(self.name, self.config.health_check)
            self.health.update(self.endpoints)

    def _stop_health(self) -> None:
        checker, self.health = self.health, None
        if checker is not None:
            task = self.loop.create_task(checker.aclose())
            if self._stopping is None:
                self._stopping = set()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def aclose(self) -> None:
        """Close pools (as :meth:`close`) and stop health checks, awaiting their tasks."""
        self.close()
        self._started = False
        self._stop_health()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def set_endpoints(self, specs: Iterable[tuple[str, int, int] | Endpoint]) -> None:
        """Replace the endpoint set in place: ``(host, port, weight)`` tuples or
        Endpoint objects (whose fields are copied). Duplicate addresses are refused
        before anything changes."""
        wanted: dict[tuple[str, int], int] = {}
        for spec in specs:
            if isinstance(spec, Endpoint):
                host, port, weight = spec.host, spec.port, spec.weight
            else:
                host, port, weight = spec
            if (host, port) in wanted:
                raise ValueError(f"cluster {self.name}: endpoint {host}:{port} given twice")
            if not 0 < port < 65536 or weight < 1:
                raise ValueError(f"cluster {self.name}: bad endpoint {host}:{port} "
                                 f"weight {weight}")
            wanted[(host, port)] = weight
        current = {e.key: e for e in self.endpoints}
        new_list: list[Endpoint] = []
        for key, weight in wanted.items():
            ep = current.get(key)
            if ep is None:
                ep = Endpoint(key[0], key[1], weight)
                pool = self.pools[key] = Pool(ep, self.config, self.loop)
                pool.shared = self.connection_limit
            else:
                ep.weight = weight
            new_list.append(ep)
        for key, ep in current.items():
            if key not in wanted:
                gone = self.pools.pop(key, None)
                if gone is not None:
                    gone.close()
                self._tallies.pop(ep, None)
                del ep
        self.endpoints = new_list
        self._pool_of = {ep: self.pools[ep.key] for ep in new_list}
        self.balancer.update(new_list)
        if self.health is not None:
            self.health.update(new_list)
        if self.guard is not None:
            self.guard.set_endpoints(new_list)

    def share_connection_limit(self, limiter: Limiter | None) -> None:
        """The cluster-wide ``limits.max_connections`` (None: none) for every pool;
        connections opened under an earlier limiter give their slot back to it."""
        if limiter is self.connection_limit:
            return
        self.connection_limit = limiter
        for pool in self.pools.values():
            pool.shared = limiter
            pool.forget_counted()

    def pick(self, ctx: PickContext, exclude: Iterable[Endpoint] = ()) -> Endpoint:
        """An endpoint for one attempt (``ctx.hash_key`` set by the caller for hash
        policies), avoiding ``exclude``; NoHealthyUpstream when there is none."""
        ep = self.balancer.pick(ctx, tuple(exclude) if exclude else ())
        if ep is None:
            raise NoHealthyUpstream(f"cluster {self.name} has no endpoint")
        return ep

    def take_idle(self, ep: Endpoint) -> UpstreamConnection | None:
        """An idle pooled connection to ``ep``, or None (an endpoint just removed has
        no pool, and :meth:`pool` would make it a short-lived one for nothing)."""
        pool = self._pool_of.get(ep)
        return pool.take_idle() if pool is not None else None

    def pool(self, ep: Endpoint) -> Pool:
        pool = self._pool_of.get(ep)
        if pool is None:  # picked just before a removal: give it a short-lived pool
            pool = Pool(ep, self.config, self.loop)
            pool.closing = True
        return pool

    def attempt_done(self, ep: Endpoint, started: float, ok: bool, status: int,
                     reason: str = "") -> None:
        """Account for one finished attempt to ``ep``: its load, the balancer's view,
        metrics."""
        ep.active_requests -= 1
        latency = self.loop.time() - started
        if self.learns:
            self.balancer.observe(ep, latency, ok and status < 500)
        if ok:
            tally = self._tallies.get(ep)
            if tally is None:
                tally = self._tallies[ep] = self.stats.endpoint_tally(self.name, ep.address)
            tally.record(status, latency)
        else:
            self.stats.upstream_errors.labels(self.name, ep.address, reason or "error").inc()
            ep.stats["errors"] = ep.stats.get("errors", 0) + 1

    def sweep(self, now: float) -> None:
        """Close expired idle connections and sample pool sizes (about once a second)."""
        for pool in self.pools.values():
            pool.sweep(now)
        self.sample_pools()

    def sample_pools(self) -> None:
        """Set the pool-size, endpoint-health and panic metrics from the live state."""
        idle = busy = 0
        for pool in self.pools.values():
            idle += len(pool.idle)
            busy += pool.busy_count()
        self.stats.pool_connections.labels(self.name, "idle").set(idle)
        self.stats.pool_connections.labels(self.name, "busy").set(busy)
        for ep in self.endpoints:
            self.stats.endpoint_healthy.labels(self.name, ep.address).set(
                1 if ep.healthy else 0)
        self._count_panic()

    def _count_panic(self) -> None:
        total = self.balancer.panic_total
        if total > self._panic_seen:
            self.stats.lb_panic.labels(self.name).inc(total - self._panic_seen)
            self._panic_seen = total

    def close(self) -> None:
        """The cluster left the config: close idle connections; busy ones finish."""
        for pool in self.pools.values():
            pool.close()

    def snapshot(self) -> dict:
        """State for the admin API's /clusters."""
        now = self.loop.time()
        eps = []
        for ep in self.endpoints:
            pool = self.pools.get(ep.key)
            tally = self._tallies.get(ep)
            eps.append({
                "address": ep.address, "weight": ep.weight, "healthy": ep.healthy,
                "ejected": ep.ejected_until > now, "active_requests": ep.active_requests,
                "requests": sum(tally.count(i) for i in range(1, 6)) if tally else 0,
                "errors": int(ep.stats.get("errors", 0)),
                "responses_5xx": tally.count(5) if tally else 0,
                "pool": {"idle": len(pool.idle), "busy": pool.busy_count(),
                         "waiting": len(pool.waiters), "connects": pool.connects,
                         "connect_failures": pool.connect_failures} if pool else None,
            })
        snap = {"name": self.name, "lb_policy": self.config.load_balancer.policy,
                "panic_total": self.balancer.panic_total, "endpoints": eps}
        if self.health is not None:
            snap["health_checks"] = self.health.status()
        if self.guard is not None:
            snap["resilience"] = plain(self.guard.statistics())
        return snap

    def __repr__(self) -> str:
        return f"<Cluster {self.name} {[e.address for e in self.endpoints]}>"
