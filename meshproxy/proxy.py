"""The proxy runtime: clusters and listeners built from a config, and swapped on reload.

:class:`Proxy` holds the config in force (a :class:`~meshproxy.config.load.Loaded`),
the :class:`~meshproxy.cluster.Cluster` objects by name and the listeners by name.
:meth:`Proxy.apply` moves it to a new config atomically, in two phases:

1. prepare, with no visible effect: new clusters, new routers (each route's layer
   stack), and sockets for listeners that are new or moved to another address; if
   binding fails, what was bound is closed and the old config keeps serving;
2. commit: clusters that stay are reconfigured in place (their endpoints, pools and
   balancer state survive), kept listeners get their new router, new listeners start
   serving, removed or moved ones drain in the background, removed clusters close.

Requests in flight hold their route (and its stack) and finish on the config they
started with. :meth:`Proxy.reload` wraps this with reading and validating the file
and counting ``meshproxy_config_reload_total{result}``. :meth:`Proxy.drain` is the
SIGTERM path. Neighbours: :mod:`meshproxy.run` drives a Proxy in a process,
:mod:`meshproxy.admin` reads it.

The resilience state (breakers, outlier detectors, limiters, rate limiters,
switches, the shedder, the event log) lives in one
:class:`~meshproxy.resilience.runtime.ResilienceRuntime` per process, applied from each
config in phase 1 (before the routers are built, since their stacks hold its
objects); ``apply`` keeps everything whose config did not change. Per-route retry
budgets and hedge windows survive reloads the same way (``route_states``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from meshproxy.cluster import Cluster
from meshproxy.config import ConfigError, Loaded, load_config
from meshproxy.config.listeners import HttpListenerConfig
from meshproxy.config.root import ProxyConfig
from meshproxy.listener import HttpListener
from meshproxy.metrics import Stats
from meshproxy.policy_metrics import PolicyStats
from meshproxy.resilience.concurrency import ConcurrencyConfig
from meshproxy.resilience.ratelimit import BucketBackend
from meshproxy.resilience.runtime import (
    ClusterResilienceConfig,
    ResilienceRuntime,
    RouteResilienceConfig,
)
from meshproxy.resilience.snapshot import plain
from meshproxy.router import Router
from meshproxy.stack import RouteState, StackContext
from meshproxy.tcp import TcpListener

log = logging.getLogger(__name__)

Listener = HttpListener | TcpListener

#: Seconds between pool sweeps (idle connection expiry, pool-size gauges).
SWEEP_INTERVAL = 1.0


class Proxy:
    """One process's listeners and clusters."""

    def __init__(self, loaded: Loaded, *, stats: Stats | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 shared_buckets: BucketBackend | None = None) -> None:
        self.loaded = loaded
        self.stats = stats if stats is not None else Stats()
        self.loop = loop or asyncio.get_running_loop()
        #: Breakers, limiters, switches...: state that outlives the route stacks.
        self.resilience = ResilienceRuntime(clock=self.loop.time,
                                            shared_buckets=shared_buckets)
        self.policy_stats = PolicyStats(self.stats.registry)
        self.route_states: dict[tuple[str, str], RouteState] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.clusters: dict[str, Cluster] = {}
        self.listeners: dict[str, Listener] = {}
        self.started = False
        self.draining = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._reload_lock = asyncio.Lock()

    @property
    def config(self):
        return self.loaded.config

    async def start(self) -> None:
        """Bind every listener of the initial config; raises OSError if one cannot."""
        await self.apply(self.loaded, initial=True)
        self.resilience.start(self.loop)
        self.stats.config_loaded.set(self.loaded.loaded_at)
        self.started = True
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    # --- reload -------------------------------------------------------------------
    async def reload(self, path: str | Path, *, count: bool = True) -> bool:
        """Load ``path`` and apply it; False (old config kept) when it is refused."""
        async with self._reload_lock:
            if self.draining:
                return False
            try:
                loaded = load_config(path)
            except ConfigError as e:
                for field, msg in e.problems:
                    log.error("config reload refused: %s: %s: %s", e.source, field, msg)
                return self._reload_failed(count)
            if loaded.version == self.loaded.version:
                return True  # nothing changed (a touch, or a SIGHUP without an edit)
            previous = self.loaded.config
            try:
                await self.apply(loaded)
            except Exception as e:
                if isinstance(e, OSError):
                    log.error("config reload refused: %s: cannot bind: %s", path, e)
                else:
                    # A fault of ours, not of the file: still a failed reload (counted,
                    # the previous config's tables restored by apply), never an exception
                    # for the file watcher or the SIGHUP handler to swallow.
                    log.exception("config reload failed: %s (version %s)", path,
                                  loaded.version)
                return self._reload_failed(count)
            if count:
                self.stats.config_reloads.labels("success").inc()
            self.stats.config_loaded.set(loaded.loaded_at)
            for section in ("admin", "process"):
                if getattr(previous, section) != getattr(loaded.config, section):
                    log.warning("config %s: the %r section changed; it takes effect on "
                                "restart only", loaded.version, section)
            log.info("config %s loaded from %s", loaded.version, path)
            return True

    def _reload_failed(self, count: bool) -> bool:
        """Count a refused or failed reload (unless a supervisor counts it); False."""
        if count:
            self.stats.config_reloads.labels("failure").inc()
        return False

    async def apply(self, loaded: Loaded, *, initial: bool = False) -> None:
        """Switch to ``loaded`` (see the module docstring for the two phases)."""
        cfg = loaded.config
        # Phase 1: prepare. Nothing here is visible to traffic yet.
        fresh = {c.name: Cluster(c, loop=self.loop, stats=self.stats)
                 for c in cfg.clusters if c.name not in self.clusters}
        clusters = {c.name: self.clusters.get(c.name) or fresh[c.name] for c in cfg.clusters}
        plan: list[tuple[Listener | None, object, object]] = []
        started: list[Listener] = []
        states: dict[tuple[str, str], RouteState] = {}
        try:
            self._apply_resilience(cfg, clusters)
            ctx = StackContext(resilience=self.resilience, clusters=clusters,
                               states=states,
                               limited={c.name for c in cfg.clusters if c.limits})
            for key, st in self.route_states.items():
                states[key] = st
            for lc in cfg.listeners:
                old = self.listeners.get(lc.name)
                target = (Router(lc, clusters, stats=self.stats, version=loaded.version,
                                 ctx=ctx)
                          if isinstance(lc, HttpListenerConfig) else clusters[lc.cluster])
                key = (lc.protocol, lc.address, lc.port)
                if old is not None and old.bind_key == key:
                    plan.append((old, lc, target))
                    continue
                new: Listener
                if isinstance(lc, HttpListenerConfig):
                    new = HttpListener(lc, target, loop=self.loop, stats=self.stats)  # type: ignore[arg-type]
                else:
                    new = TcpListener(lc, target, loop=self.loop, stats=self.stats)  # type: ignore[arg-type]
                # Same address and port, other protocol: share the old listening socket
                # (no queued connection is reset when the old server closes). Another
                # address: bind beside the old socket (both SO_REUSEPORT). Either way
                # the old one stops accepting only at commit, so a failed reload leaves
                # it untouched.
                same_bind = (old is not None and old.config.address == lc.address
                             and old.config.port == lc.port and lc.port != 0)
                await new.start(share=old.server if same_bind else None)  # type: ignore[union-attr]
                started.append(new)
                plan.append((None, new, old))
        except BaseException:
            for lst in started:
                lst.stop_accepting()
            for c in fresh.values():
                c.close()
            if not initial:  # back to the old config's resilience tables
                self._apply_resilience(self.loaded.config, self.clusters)
            raise
        # Phase 2: commit.
        for c in cfg.clusters:
            if c.name not in fresh:
                clusters[c.name].configure(c)
        for cluster in fresh.values():
            cluster.start()
        routes = {(lc.name, r.name) for lc in cfg.listeners
                  if isinstance(lc, HttpListenerConfig) for r in lc.routes}
        self.route_states = {k: v for k, v in states.items() if k in routes}
        listeners: dict[str, Listener] = {}
        for old, a, b in plan:
            if old is not None:
                old.update(a, b)  # type: ignore[arg-type]
                listeners[old.name] = old
            else:
                listeners[a.name] = a  # type: ignore[union-attr]
                if b is not None:
                    self._retire(b)  # type: ignore[arg-type]
        for name, lst in self.listeners.items():
            if name not in listeners:
                self._retire(lst)
        for name, cluster in self.clusters.items():
            if name not in clusters:
                self._close_later(cluster)
        self.clusters = clusters
        self.listeners = listeners
        self.loaded = loaded

    def _apply_resilience(self, cfg: ProxyConfig, clusters: dict[str, Cluster]) -> None:
        """Bring the resilience tables to ``cfg`` (unchanged parts keep their state) and
        attach each cluster's part to it."""
        guarded = {c.name: ClusterResilienceConfig(
            breaker=c.breaker, endpoint_breaker=c.endpoint_breaker, outlier=c.outlier,
            limits=c.limits or ConcurrencyConfig(), endpoint_limits=c.endpoint_limits)
            for c in cfg.clusters if c.guarded}
        routes = {f"{lc.name}/{r.name}": RouteResilienceConfig(
            priority=r.priority, function=r.function, rate_limit=r.rate_limit)
            for lc in cfg.listeners if isinstance(lc, HttpListenerConfig) for r in lc.routes}
        self.resilience.apply(
            cfg.resilience,
            clusters=guarded, routes=routes,
            endpoints={name: clusters[name].endpoints for name in guarded})
        limited = {c.name for c in cfg.clusters if c.limits is not None}
        for name, cluster in clusters.items():
            guard = cluster.guard = self.resilience.clusters.get(name)
            cluster.share_connection_limit(
                guard.limits.connections if guard is not None and name in limited else None)

    def _close_later(self, cluster: Cluster) -> None:
        """A cluster left the config: close it (and stop its health checks) soon."""
        task = self.loop.create_task(cluster.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _retire(self, lst: Listener) -> None:
        """Drain a listener that left the config, in the background."""
        task = self.loop.create_task(lst.drain(self.config.drain.timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # --- periodic sweep -----------------------------------------------------------
    def _sweep(self) -> None:
        now = self.loop.time()
        for cluster in self.clusters.values():
            cluster.sweep(now)
        for lst in self.listeners.values():
            lst.sweep()
        self.policy_stats.sync(self)
        self.stats.flush()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    # --- shutdown -----------------------------------------------------------------
    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting everywhere, let requests in flight finish (up to the drain
        timeout), close idle keep-alive connections and upstream pools."""
        self.draining = True
        timeout = self.config.drain.timeout if timeout is None else timeout
        for lst in self.listeners.values():
            lst.stop_accepting()
        await asyncio.gather(*(lst.drain(timeout) for lst in self.listeners.values()),
                             *self._retiring)
        await self.close()

    def flush_metrics(self) -> None:
        """Bring prometheus-client up to date (before a scrape)."""
        for lst in self.listeners.values():
            lst.sweep()
        for cluster in self.clusters.values():
            cluster.sample_pools()
        self.policy_stats.sync(self)
        self.stats.flush()

    async def close(self) -> None:
        """Close everything now (tests, and the end of a drain)."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for lst in self.listeners.values():
            lst.stop_accepting()
            lst.abort_connections()
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for lst in self.listeners.values():
            if lst.server is not None:
                await lst.server.wait_closed()
        self.resilience.stop()
        for cluster in self.clusters.values():
            await cluster.aclose()
            for pool in cluster.pools.values():
                for conn in list(pool.owned):
                    conn.abort()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.sleep(0)  # let transports deliver connection_lost
        self.stats.flush()

    def snapshot(self) -> dict:
        """State for /clusters and the worker snapshot files."""
        return {"version": self.loaded.version, "ready": self.started and not self.draining,
                "clusters": [c.snapshot() for c in self.clusters.values()],
                "listeners": [lst.snapshot() for lst in self.listeners.values()],
                "resilience": self.resilience_snapshot(),
                "events": [e.as_dict() for e in self.resilience.events.recent(200)]}

    def use_shared_buckets(self, table: BucketBackend) -> None:
        """Rate limits with ``backend: shared`` use ``table`` (one limit for all the
        workers of a supervisor). Before :meth:`start` only."""
        if self.started:
            raise RuntimeError("shared buckets must be set before the proxy starts")
        self.resilience = ResilienceRuntime(clock=self.loop.time, shared_buckets=table)

    def apply_switch_modes(self, modes: dict[str, dict]) -> None:
        """Set switch modes decided elsewhere (a supervisor's admin API): ``{name:
        {"mode": ..., "config_id": ...}}``. A flip applies only to the switch config it
        was made for, as in one process, where a config change of the switch ends an
        admin flip: a worker started after that change (a restart) must not bring the
        old flip back. Unknown names and invalid modes are ignored (the supervisor
        checked them)."""
        for name, flip in modes.items():
            try:
                sw = self.resilience.switches.get(name)
            except KeyError:
                continue
            if not isinstance(flip, dict) or flip.get("config_id") not in (None, sw.config_id):
                continue
            mode = flip.get("mode")
            if mode in ("on", "off", "auto") and (sw.mode != mode or sw.mode_source != "admin"):
                sw.set_mode(mode, source="admin")  # type: ignore[arg-type]

    def resilience_snapshot(self) -> dict:
        """Every breaker, ejection, limiter, rate limiter and switch, for the admin API."""
        rt = self.resilience
        return {
            "clusters": {name: plain(c.statistics()) for name, c in rt.clusters.items()},
            "rate_limits": {name: {"admitted_total": rl.admitted_total,
                                   "limited_total": rl.limited_total,
                                   "rate": rl.config.rate, "burst": rl.config.capacity,
                                   "key": rl.config.key}
                            for name, rl in rt.rate_limiters.items()},
            "switches": [plain(s) for s in rt.switches.list()],
            "shedding": plain(rt.shedder.statistics()) if rt.shedder else None,
            "retry_budgets": {f"{lst}/{route}": plain(st.budget.statistics())
                              for (lst, route), st in self.route_states.items()
                              if st.budget is not None},
            "events": rt.events.counts(),
        }
