"""The whole proxy config: listeners, clusters, admin, reload, drain, workers.

Field checks live with each concern's model; the checks that span concerns (a route
names a cluster that exists, names and ports are unique) live here, in
:func:`cross_check`, and report the offending field's path as :func:`meshproxy.schema.parse` does.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from meshproxy.config.admin import AdminConfig
from meshproxy.config.base import Settings
from meshproxy.config.clusters import ClusterConfig
from meshproxy.config.discovery import DiscoveryConfig
from meshproxy.config.listeners import HttpListenerConfig, ListenerConfig
from meshproxy.config.runtime import DrainConfig, ProcessConfig, ReloadConfig
from meshproxy.resilience.runtime import ProxyResilienceConfig


class ProxyConfig(Settings, kw_only=True):
    """One meshproxy's configuration, as loaded from its YAML file."""

    listeners: Annotated[tuple[ListenerConfig, ...], Meta(max_length=256)] = ()
    clusters: Annotated[tuple[ClusterConfig, ...], Meta(max_length=4096)] = ()
    admin: AdminConfig = AdminConfig()
    reload: ReloadConfig = ReloadConfig()
    drain: DrainConfig = DrainConfig()
    process: ProcessConfig = ProcessConfig()
    #: Process-wide resilience: load shedding, degradation switches, the event ring.
    resilience: ProxyResilienceConfig = ProxyResilienceConfig()
    #: Clusters that follow Services of the control plane (None: all from this file).
    discovery: DiscoveryConfig | None = None

    def cluster(self, name: str) -> ClusterConfig:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)


def cross_check(cfg: ProxyConfig) -> list[tuple[str, str]]:
    """Problems that span several models, as (field path, message) pairs."""
    problems: list[tuple[str, str]] = []
    clusters = {c.name for c in cfg.clusters}
    seen: dict[str, int] = {}
    for i, c in enumerate(cfg.clusters):
        if c.name in seen:
            problems.append((f"clusters[{i}].name",
                             f"cluster {c.name!r} already defined at clusters[{seen[c.name]}]"))
        seen.setdefault(c.name, i)
    names: dict[str, int] = {}
    binds: dict[tuple[str, int], int] = {}
    for i, lst in enumerate(cfg.listeners):
        if lst.name in names:
            problems.append((f"listeners[{i}].name",
                             f"listener {lst.name!r} already defined at "
                             f"listeners[{names[lst.name]}]"))
        names.setdefault(lst.name, i)
        bind = (lst.address, lst.port)
        if lst.port and bind in binds:
            problems.append((f"listeners[{i}].port",
                             f"{lst.address}:{lst.port} is already used by "
                             f"listeners[{binds[bind]}]"))
        binds.setdefault(bind, i)
        if isinstance(lst, HttpListenerConfig):
            for j, r in enumerate(lst.routes):
                if r.cluster not in clusters:
                    problems.append((f"listeners[{i}].routes[{j}].cluster",
                                     f"no cluster named {r.cluster!r}"))
        elif lst.cluster not in clusters:
            problems.append((f"listeners[{i}].cluster", f"no cluster named {lst.cluster!r}"))
    problems += _discovery_problems(cfg)
    problems += _switch_problems(cfg, clusters)
    if cfg.admin.enabled and cfg.admin.port:
        for i, lst in enumerate(cfg.listeners):
            if lst.port == cfg.admin.port and lst.address in (cfg.admin.address, "0.0.0.0"):
                problems.append((f"listeners[{i}].port",
                                 f"port {lst.port} is the admin port"))
    return problems


def _discovery_problems(cfg: ProxyConfig) -> list[tuple[str, str]]:
    """A followed cluster exists and lists no endpoints of its own (one source each)."""
    if cfg.discovery is None:
        return []
    problems: list[tuple[str, str]] = []
    by_name = {c.name: c for c in cfg.clusters}
    for i, f in enumerate(cfg.discovery.clusters):
        c = by_name.get(f.cluster)
        if c is None:
            problems.append((f"discovery.clusters[{i}].cluster",
                             f"no cluster named {f.cluster!r}"))
        elif c.endpoints:
            problems.append((f"discovery.clusters[{i}].cluster",
                             f"cluster {f.cluster!r} follows service {f.service!r}: its "
                             f"endpoints come from discovery, remove its static endpoints"))
    return problems


def _switch_problems(cfg: ProxyConfig, clusters: set[str]) -> list[tuple[str, str]]:
    """Switch names are unique; a service switch and a cluster fallback name clusters."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, sw in enumerate(cfg.resilience.switches):
        where = f"resilience.switches[{i}]"
        if sw.name in seen:
            problems.append((f"{where}.name", f"switch {sw.name!r} is defined twice"))
        seen.add(sw.name)
        if sw.level == "service" and sw.target not in clusters:
            problems.append((f"{where}.target", f"no cluster named {sw.target!r}"))
        fallback = getattr(sw.action, "cluster", None)
        if fallback is not None and fallback not in clusters:
            problems.append((f"{where}.action.cluster", f"no cluster named {fallback!r}"))
    return problems
