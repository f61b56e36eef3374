"""Discovery at run time: watches feeding followed clusters, and its metrics.

:class:`Discovery` runs one :class:`~meshproxy.discovery.watch.ResourceWatch` per
(namespace, resource) the config needs (Services, Endpoints and, unless ``policies:
false``, TrafficPolicies), keeps the objects of the followed Services, and after every
change recomputes each followed cluster's endpoint set (:mod:`meshproxy.discovery.resolve`)
and applies it IN PLACE through :meth:`meshproxy.cluster.Cluster.set_endpoints` when it
differs from what the cluster has: endpoints that stay keep their state and pools, and
no request fails because the set changed. A TrafficPolicy change wakes the policy loop,
which hands over to :meth:`meshproxy.discovery.proxy.DiscoveringProxy.apply_policies`
(the atomic config path); :meth:`Discovery.candidate_policies` says what each cluster
should have, keeping the policy in force for one whose new spec does not parse.

Static stability: a failed list or watch changes nothing that routes traffic; the last
known endpoints and policies stay (and, with ``cache_file``, survive a restart, see
:mod:`meshproxy.discovery.cache`). ``meshproxy_discovery_staleness_seconds`` is 0 while
every watch is open and current, else the seconds since the oldest of them last was.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshproxy.config import EndpointConfig, Loaded
from meshproxy.config.discovery import DiscoveryConfig, FollowConfig
from meshproxy.config.policy import ServicePolicy
from meshproxy.discovery import cache
from meshproxy.discovery.policy import PolicyRefused, parse_policy, policy_for
from meshproxy.discovery.resolve import Unresolved, endpoint_set
from meshproxy.proxy import Proxy
from meshproxy.schema import replace

if TYPE_CHECKING:
    from meshproxy.discovery.watch import ApiConnection, ResourceWatch

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RESOURCES = ("services", "endpoints", "trafficpolicies")
#: Seconds between staleness gauge updates (a scrape also updates it).
GAUGE_INTERVAL = 1.0
#: Seconds a burst of changes is coalesced before the cache file is written.
SAVE_DELAY = 0.2


class DiscoveryStats:
    """Discovery's metrics, in the proxy's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.staleness = Gauge(
            "meshproxy_discovery_staleness_seconds",
            "Seconds since discovery was last in sync with the control plane (0 while "
            "every watch is open and current).", multiprocess_mode="max", registry=registry)
        self.syncs = Counter(
            "meshproxy_discovery_syncs_total",
            "Successful full lists from the control plane, by resource.", ["resource"],
            registry=registry)
        self.errors = Counter(
            "meshproxy_discovery_errors_total",
            "Failed lists or watches, by resource and reason (connect, timeout, gone, "
            "http_<code>, decode, token).", ["resource", "reason"], registry=registry)
        self.updates = Counter(
            "meshproxy_discovery_endpoint_updates_total",
            "Endpoint sets applied to a followed cluster.", ["cluster"], registry=registry)
        self.policies = Counter(
            "meshproxy_discovery_policy_updates_total",
            "TrafficPolicy changes by result (applied, refused: invalid or not fitting the "
            "file; the policy in force keeps serving).", ["result"], registry=registry)
        for result in ("applied", "refused"):
            self.policies.labels(result)


class Discovery:
    """Follows Services of the control plane for the clusters named in the config."""

    def __init__(self, proxy: Proxy, config: DiscoveryConfig, *, stats: DiscoveryStats,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random,
                 on_policies: Callable[[], Awaitable[None]] | None = None) -> None:
        self.proxy = proxy
        self.on_policies = on_policies
        #: cluster -> the ServicePolicy in force (accepted and applied).
        self.accepted: dict[str, ServicePolicy] = {}
        #: cluster -> "namespace/name@resourceVersion" of the TrafficPolicy last refused
        #: (a refusal is logged and counted once per version).
        self.refused: dict[str, str] = {}
        self._policy_dirty = asyncio.Event()
        self.config = config
        self.stats = stats
        self.clock = clock
        self.rng = rng
        #: resource -> "namespace/name" -> object, for followed Services only.
        self.objects: dict[str, dict[str, Obj]] = {r: {} for r in RESOURCES}
        self.started_at = clock()
        self.restored_at: float | None = None
        #: When it was last in sync before the current watches (restart, reconfigure).
        self._baseline = self.started_at
        self.watches: list[ResourceWatch] = []
        self._conn: ApiConnection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = asyncio.Event()
        self._unresolved: dict[str, str] = {}
        if config.cache_file is not None:
            self._restore()

    # --- the followed set --------------------------------------------------------
    def _followed(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for f in self.config.clusters:
            ns, name = self.config.service_key(f)
            out.setdefault(ns, set()).add(name)
        return out

    def wanted(self, follow: FollowConfig, config: DiscoveryConfig | None = None
               ) -> list[tuple[str, int, int]] | None:
        """The endpoint set ``follow``'s cluster should have; None when it cannot be
        resolved yet (the cluster keeps what it has)."""
        ns, name = (config or self.config).service_key(follow)
        key = f"{ns}/{name}"
        try:
            eps = endpoint_set(self.objects["endpoints"].get(key), port=follow.port,
                               service=self.objects["services"].get(key))
        except Unresolved as e:
            if self._unresolved.get(follow.cluster) != str(e):
                log.warning("discovery: cluster %s (service %s): %s; keeping its "
                            "endpoints", follow.cluster, key, e)
            self._unresolved[follow.cluster] = str(e)
            return None
        self._unresolved.pop(follow.cluster, None)
        return eps

    def compose(self, loaded: Loaded) -> Loaded:
        """``loaded`` with each cluster it says to follow filled from discovery."""
        cfg = loaded.config
        assert cfg.discovery is not None
        sets = {}
        for f in cfg.discovery.clusters:
            eps = self.wanted(f, cfg.discovery)
            if eps is None:
                current = self.proxy.clusters.get(f.cluster)
                eps = [(e.host, e.port, e.weight) for e in current.endpoints] \
                    if current is not None else []
            sets[f.cluster] = tuple(EndpointConfig(address=f"{h}:{p}", weight=w)
                                    for h, p, w in eps)
        clusters = tuple(replace(c, endpoints=sets[c.name])
                         if c.name in sets else c for c in cfg.clusters)
        return Loaded(replace(cfg, clusters=clusters), loaded.version,
                      loaded.loaded_at, loaded.source)

    def refresh(self) -> None:
        """Bring every followed cluster's endpoints to the wanted set (in place)."""
        for f in self.config.clusters:
            cluster = self.proxy.clusters.get(f.cluster)
            if cluster is None:
                continue
            eps = self.wanted(f)
            if eps is None:
                continue
            if [(e.host, e.port, e.weight) for e in cluster.endpoints] == eps:
                continue
            cluster.set_endpoints(eps)
            self.stats.updates.labels(f.cluster).inc()
            log.info("discovery: cluster %s now %s", f.cluster,
                     [f"{h}:{p}" for h, p, _ in eps] or "empty")

    # --- watch callbacks ------------------------------------------------------------
    @staticmethod
    def _service_of(resource: str, name: str, obj: Obj) -> str:
        """The Service an object is about: its name, or a TrafficPolicy's spec.service."""
        if resource == "trafficpolicies":
            return str((obj.get("spec") or {}).get("service", ""))
        return name

    def _on_reset(self, resource: str, ns: str, objs: dict[str, Obj]) -> None:
        self.stats.syncs.labels(resource).inc()
        names = self._followed().get(ns, set())
        table = self.objects[resource]
        for key in [k for k in table if k.startswith(f"{ns}/")]:
            del table[key]
        for name, obj in objs.items():
            if self._service_of(resource, name, obj) in names:
                table[f"{ns}/{name}"] = obj
        self._changed(resource)

    def _on_event(self, resource: str, ns: str, kind: str, obj: Obj) -> None:
        name = obj.get("metadata", {}).get("name", "")
        key = f"{ns}/{name}"
        followed = self._service_of(resource, name, obj) in self._followed().get(ns, set())
        if kind == "DELETED" or not followed:
            # A policy whose spec.service moved away is gone for the old Service too.
            if self.objects[resource].pop(key, None) is None:
                return
        else:
            self.objects[resource][key] = obj
        self._changed(resource)

    def _changed(self, resource: str) -> None:
        self.refresh()
        self._dirty.set()
        if resource == "trafficpolicies":
            self._policy_dirty.set()

    # --- policies -------------------------------------------------------------------
    def candidate_policies(self) -> dict[str, ServicePolicy]:
        """The policy each followed cluster should have now: the TrafficPolicy's when it
        parses; the one in force when it does not (refused: logged and counted once)."""
        out: dict[str, ServicePolicy] = {}
        for f in self.config.clusters:
            ns, name = self.config.service_key(f)
            obj = policy_for(self.objects["trafficpolicies"], namespace=ns, service=name)
            if obj is None:
                continue
            try:
                out[f.cluster] = parse_policy(obj)
            except PolicyRefused as e:
                self.refuse(f.cluster, obj, error=e)
                if f.cluster in self.accepted:
                    out[f.cluster] = self.accepted[f.cluster]
        return out

    def refuse(self, cluster: str, obj: Obj | None, *, error: PolicyRefused) -> None:
        meta = (obj or {}).get("metadata") or {}
        tag = f"{meta.get('namespace')}/{meta.get('name')}@{meta.get('resourceVersion')}"
        if self.refused.get(cluster) == tag:
            return
        self.refused[cluster] = tag
        self.stats.policies.labels("refused").inc()
        for where, msg in error.problems:
            log.error("discovery: TrafficPolicy for cluster %s refused, the policy in force "
                      "keeps serving: %s: %s", cluster, where, msg)

    async def _policy_loop(self) -> None:
        while True:
            await self._policy_dirty.wait()
            self._policy_dirty.clear()
            if self.on_policies is not None:
                try:
                    await self.on_policies()
                except Exception:
                    log.exception("discovery: applying TrafficPolicies failed")

    # --- staleness ----------------------------------------------------------------
    def last_in_sync(self) -> float | None:
        """Wall-clock time discovery was last wholly current; None when now (every
        watch open); before any sync, the cache's time or the start."""
        if self.watches and all(w.live for w in self.watches):
            return None
        times = [w.last_live if w.last_live is not None else self._baseline
                 for w in self.watches if not w.live]
        return min(times) if times else self._baseline

    def staleness(self) -> float:
        since = self.last_in_sync()
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def update_gauges(self) -> None:
        self.stats.staleness.set(self.staleness())

    # --- cache file -----------------------------------------------------------------
    def _restore(self) -> None:
        assert self.config.cache_file is not None
        snap = cache.load(self.config.cache_file, server=self.config.server)
        if snap is None:
            return
        names = self._followed()
        for resource in RESOURCES:
            for key, obj in (snap.objects.get(resource) or {}).items():
                ns, _, name = key.partition("/")
                if self._service_of(resource, name, obj) in names.get(ns, ()):
                    self.objects[resource][key] = obj
        self.restored_at = snap.synced_at
        if snap.synced_at is not None:
            self._baseline = snap.synced_at
        log.info("discovery: restored %d objects from %s (last in sync %s)",
                 sum(len(t) for t in self.objects.values()), self.config.cache_file,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.synced_at))
                 if snap.synced_at else "never")

    def snapshot(self) -> cache.Snapshot:
        since = self.last_in_sync()
        return cache.Snapshot(server=self.config.server,
                              synced_at=self.clock() if since is None else since,
                              objects={r: dict(t) for r, t in self.objects.items()})

    async def _saver(self) -> None:
        path = self.config.cache_file
        assert path is not None
        while True:
            await self._dirty.wait()
            await asyncio.sleep(SAVE_DELAY)  # coalesce a burst of events into one write
            self._dirty.clear()
            try:
                await asyncio.to_thread(cache.save, path, self.snapshot())
            except OSError as e:
                log.error("discovery: cannot write cache %s: %s", path, e)

    async def _gauge_ticker(self) -> None:
        while True:
            self.update_gauges()
            await asyncio.sleep(GAUGE_INTERVAL)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Start the watches (aiohttp is imported only now)."""
        from meshproxy.discovery.watch import ApiConnection, ResourceWatch

        self._conn = ApiConnection(self.config)
        loop = asyncio.get_running_loop()
        for ns in self.config.namespaces():
            for resource in self.resources():
                w = ResourceWatch(
                    self._conn, resource, namespace=ns,  # type: ignore[arg-type]
                    on_reset=lambda objs, r=resource, n=ns: self._on_reset(r, n, objs),
                    on_event=lambda kind, obj, r=resource, n=ns: self._on_event(r, n, kind,
                                                                                obj),
                    on_error=lambda reason, r=resource: self.stats.errors.labels(
                        r, reason).inc(),
                    clock=self.clock, rng=self.rng)
                self.watches.append(w)
                self._spawn(loop, w.run())
        self._spawn(loop, self._gauge_ticker())
        self._spawn(loop, self._policy_loop())
        self._policy_dirty.set()  # policies restored from the cache, if any
        if self.config.cache_file is not None:
            self._spawn(loop, self._saver())

    def resources(self) -> tuple[str, ...]:
        return RESOURCES if self.config.policies else RESOURCES[:2]

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop watching; what is known stays applied."""
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        since = self.last_in_sync()
        self._baseline = self.clock() if since is None else since
        self.watches = []
        self.update_gauges()

    async def reconfigure(self, config: DiscoveryConfig) -> None:
        """A reload changed the section: restart the watches, keeping what is known
        about Services that are still followed."""
        running = bool(self.watches)
        await self.stop()
        self.config = config
        names = self._followed()
        for resource, table in self.objects.items():
            for key, obj in list(table.items()):
                ns, _, name = key.partition("/")
                if self._service_of(resource, name, obj) not in names.get(ns, ()):
                    del table[key]
        if running:
            self.start()
