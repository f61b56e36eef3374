"""The proxy that hosts discovery: :class:`DiscoveringProxy`, what :mod:`meshproxy.run`
starts.

Its one addition to :class:`~meshproxy.proxy.Proxy` is in :meth:`DiscoveringProxy.apply`,
the path every config change takes (start, file watch, SIGHUP, admin ``POST /reload``):
the validated file config is *composed* with what the control plane says before it is
applied — the accepted TrafficPolicies merged under the file's own settings
(:mod:`meshproxy.discovery.policy`), then each followed cluster's ``endpoints`` filled
from discovery — so a file reload neither wipes discovered state nor churns it. After the
commit the live endpoint set is re-asserted (an event may have arrived while the reload
was binding sockets), and a changed ``discovery`` section restarts the watches.

A TrafficPolicy change takes the same road (:meth:`DiscoveringProxy.apply_policies`):
compose the file's config with the new policies, validate the whole, apply atomically
under the reload lock; a policy that is invalid or does not fit is refused with its
field paths in the log and ``meshproxy_discovery_policy_updates_total{result="refused"}``,
and the policy in force keeps serving. A config without a ``discovery`` section makes
this a plain Proxy (aiohttp is never imported for it). Neighbours:
:mod:`meshproxy.discovery.runtime` (:class:`Discovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshproxy.config import Loaded
from meshproxy.config.discovery import DiscoveryConfig
from meshproxy.config.policy import ServicePolicy
from meshproxy.discovery.policy import PolicyRefused, merge, policy_for
from meshproxy.discovery.runtime import Discovery, DiscoveryStats
from meshproxy.proxy import Proxy

if TYPE_CHECKING:
    from meshproxy.metrics import Stats

log = logging.getLogger(__name__)


class DiscoveringProxy(Proxy):
    """A :class:`Proxy` whose followed clusters take their endpoints from discovery
    (see the module docstring). Without a ``discovery`` section it is a plain Proxy."""

    def __init__(self, loaded: Loaded, *, stats: Stats | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        super().__init__(loaded, stats=stats, loop=loop)
        self._clock = clock
        self._rng = rng
        self._discovery_stats: DiscoveryStats | None = None
        self.discovery: Discovery | None = None
        #: The config as the file says it (before discovery composes into it).
        self.file_loaded = loaded
        if loaded.config.discovery is not None:
            self.discovery = self._new_discovery(loaded.config.discovery)

    def _new_discovery(self, config: DiscoveryConfig) -> Discovery:
        if self._discovery_stats is None:
            self._discovery_stats = DiscoveryStats(self.stats.registry)
        return Discovery(self, config, stats=self._discovery_stats, clock=self._clock,
                         rng=self._rng, on_policies=self.apply_policies)

    def _compose(self, loaded: Loaded, policies: dict[str, ServicePolicy]) -> Loaded:
        """The file's config with discovered endpoints and ``policies`` merged in;
        PolicyRefused when the policies do not fit."""
        assert self.discovery is not None
        # Policies first, on the file's own config (its checks hold there: a followed
        # cluster lists no endpoints), then the discovered endpoints.
        merged = Loaded(merge(loaded.config, policies), loaded.version, loaded.loaded_at,
                        loaded.source)
        return self.discovery.compose(merged)

    async def apply(self, loaded: Loaded, *, initial: bool = False) -> None:
        """Every config change (start, reload) lands here: compose, then apply."""
        wanted = loaded.config.discovery
        self.file_loaded = loaded
        if wanted is not None and self.discovery is None:
            self.discovery = self._new_discovery(wanted)
        composed = loaded
        if wanted is not None and self.discovery is not None:
            policies = {c: p for c, p in self.discovery.accepted.items()
                        if any(f.cluster == c for f in wanted.clusters)}
            try:
                composed = self._compose(loaded, policies)
            except PolicyRefused as e:
                # The file is the local override: it is applied, without the policies
                # that no longer fit it (they are retried at the next policy change).
                for cluster in policies:
                    self.discovery.refuse(cluster, None, error=e)
                composed = self._compose(loaded, {})
                policies = {}
            self.discovery.accepted = policies
        await super().apply(composed, initial=initial)
        disc = self.discovery
        if disc is None:
            return
        if wanted is None:
            self.discovery = None
            await disc.stop()
            return
        if wanted != disc.config:
            disc.config = wanted  # what refresh follows from now on
            disc.refresh()
            await disc.reconfigure(wanted)
        # Nothing awaited since the commit on the unchanged path: no request has seen the
        # composed set yet, and events that arrived while sockets were bound apply now.
        disc.refresh()
        if self.started and not disc.watches:
            disc.start()

    async def apply_policies(self) -> bool:
        """Apply the TrafficPolicies discovery now holds through the same validated,
        atomic path as a file reload (under the reload lock); a policy that is invalid
        or does not fit the file is refused and the one in force keeps serving. True
        when something new was applied."""
        disc = self.discovery
        if disc is None:
            return False
        async with self._reload_lock:
            if self.draining or self.discovery is not disc:
                return False
            candidate = disc.candidate_policies()
            if candidate == disc.accepted:
                return False
            try:
                composed = self._compose(self.file_loaded, candidate)
                await super().apply(composed)
            except (PolicyRefused, ValueError, OSError) as e:
                err = e if isinstance(e, PolicyRefused) else PolicyRefused([("apply", str(e))])
                for cluster, sp in candidate.items():
                    if disc.accepted.get(cluster) != sp:
                        ns, name = disc.config.service_key(
                            next(f for f in disc.config.clusters if f.cluster == cluster))
                        obj = policy_for(disc.objects["trafficpolicies"], namespace=ns,
                                         service=name)
                        disc.refuse(cluster, obj, error=err)
                return False
            disc.refresh()
            changed = sorted(c for c in set(candidate) | set(disc.accepted)
                             if candidate.get(c) != disc.accepted.get(c))
            disc.accepted = candidate
            for cluster in changed:
                disc.refused.pop(cluster, None)
            disc.stats.policies.labels("applied").inc()
            log.info("discovery: TrafficPolicies applied for %s", ", ".join(changed))
            return True

    async def start(self) -> None:
        await super().start()
        if self.discovery is not None and not self.discovery.watches:
            self.discovery.start()

    def flush_metrics(self) -> None:
        if self.discovery is not None:
            self.discovery.update_gauges()
        super().flush_metrics()

    async def close(self) -> None:
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.stop()
        await super().close()
