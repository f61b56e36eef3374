"""TrafficPolicies onto the proxy config: one Service's policy, merged under the file.

A ``TrafficPolicy`` (``mesh.io/v1alpha1``) names a Service (``spec.service``) and
carries the proxy's :class:`~meshproxy.config.policy.ServicePolicy` groups: ``cluster``
(load balancing, health checks, breakers, outlier detection, limits) and ``route``
(retries, hedging, deadlines, rate limit, priority, function). For every cluster that
follows that Service:

- each ``cluster`` field the policy sets goes onto the cluster's config, and each
  ``route`` field onto every route whose cluster it is;
- **unless the file sets that field itself**: the file is the place for local overrides,
  so a field written in the file always wins over the control plane (decided per field,
  from what the YAML actually set, not from values: a file that spells out a default
  still wins).

The policy's ``degrade`` (the Service's degradation switch) is a whole switch, not
fields: it becomes a ``service``-level switch targeting the following cluster, named
``<namespace>.<service>`` (:func:`~meshproxy.config.policy.service_switch_name`),
appended to ``resilience.switches``, **unless the file declares a switch of that name**:
then the file's switch is the one in force (a local override, as for fields). A policy
without ``degrade`` (or one that drops it) leaves no switch behind. Switches are rebuilt
by value (:meth:`~meshproxy.resilience.degrade.SwitchRegistry.reload`), so a re-apply
that leaves a switch's settings as they were keeps its trip state and any mode an
operator set on this proxy through the admin API; a policy that *changes* the switch
builds it anew, so the newly declared state applies (as Kubernetes' declared state
overrides a hand edit of one replica). A switch targets one cluster: two clusters of one
proxy following the same Service cannot both take its policy's switch (refused, naming
them; a file switch of that name resolves it).

The merged config is validated again as a whole (each touched model re-validated, then
the cross-model checks of :func:`meshproxy.config.root.cross_check`), so a policy that
does not fit is refused with field paths (:class:`PolicyRefused`) before anything
changes. Several TrafficPolicies for one Service: the first by name is used, the others
are reported. Pure functions; :mod:`meshproxy.discovery.runtime` applies the result
through the proxy's atomic ``apply``.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec

from meshproxy.config.listeners import HttpListenerConfig
from meshproxy.config.policy import ServicePolicy, error_path, service_switch_name
from meshproxy.config.root import ProxyConfig, cross_check
from meshproxy.resilience.degrade import SwitchBehaviour, SwitchConfig
from meshproxy.schema import SchemaError, fields_set, parse, replace, to_builtins

log = logging.getLogger(__name__)

Obj = dict[str, Any]
M = TypeVar("M", bound=msgspec.Struct)


class PolicyRefused(ValueError):
    """A policy that cannot be applied; ``problems`` are (where, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{w}: {m}" for w, m in problems))


def policy_for(policies: dict[str, Obj], *, namespace: str, service: str) -> Obj | None:
    """The TrafficPolicy governing ``namespace/service`` among ``policies`` (keyed
    ``namespace/name``): the first by name; others for the same Service are logged."""
    matches = sorted((key, obj) for key, obj in policies.items()
                     if key.startswith(f"{namespace}/")
                     and (obj.get("spec") or {}).get("service") == service)
    if len(matches) > 1:
        log.warning("discovery: several TrafficPolicies for service %s/%s (%s): using %s",
                    namespace, service, ", ".join(k for k, _ in matches), matches[0][0])
    return matches[0][1] if matches else None


def parse_policy(obj: Obj) -> ServicePolicy:
    """A TrafficPolicy object's spec (less ``service``) as a ServicePolicy."""
    meta = obj.get("metadata") or {}
    where = f"trafficpolicy {meta.get('namespace', '?')}/{meta.get('name', '?')}: spec"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise PolicyRefused([(where, "must be an object")])
    sections = {k: v for k, v in spec.items() if k != "service"}
    try:
        return parse(sections, ServicePolicy)
    except SchemaError as e:
        raise PolicyRefused([(f"{where}{error_path(p.path)}", p.message)
                             for p in e.problems]) from None


def _under(base: M, section: msgspec.Struct, where: str,
           problems: list[tuple[str, str]]) -> M:
    """``base`` with each field ``section`` set that ``base`` (the file) did not,
    validated again as ``base``'s model; when that fails, the problems (located under
    ``where``) are added and ``base`` is returned unchanged."""
    own = fields_set(base)
    taken = {f: getattr(section, f) for f in fields_set(section) if f not in own}
    data = to_builtins({**{f: getattr(base, f) for f in own}, **taken})
    try:
        return parse(data, type(base))
    except SchemaError as e:
        problems += [(f"{where}{error_path(p.path)}", p.message) for p in e.problems]
        return base


def merge(cfg: ProxyConfig, policies: dict[str, ServicePolicy]) -> ProxyConfig:
    """``cfg`` with each cluster's policy (``cluster name -> ServicePolicy``) merged
    under the fields the file set; PolicyRefused when the result is not valid."""
    if not policies:
        return cfg
    problems: list[tuple[str, str]] = []
    clusters = []
    for i, c in enumerate(cfg.clusters):
        sp = policies.get(c.name)
        clusters.append(c if sp is None
                        else _under(c, sp.cluster, f"clusters[{i}]", problems))
    listeners = []
    for i, lst in enumerate(cfg.listeners):
        if not isinstance(lst, HttpListenerConfig) \
                or not any(r.cluster in policies for r in lst.routes):
            listeners.append(lst)
            continue
        routes = []
        for j, r in enumerate(lst.routes):
            sp = policies.get(r.cluster)
            routes.append(r if sp is None else _under(r, sp.route,
                                                      f"listeners[{i}].routes[{j}]", problems))
        listeners.append(replace(lst, routes=tuple(routes)))
    switches, switch_problems = policy_switches(cfg, policies)
    problems += switch_problems
    if problems:
        raise PolicyRefused(problems)
    update: dict[str, Any] = {"clusters": tuple(clusters), "listeners": tuple(listeners)}
    if switches:
        update["resilience"] = replace(
            cfg.resilience, switches=(*cfg.resilience.switches, *switches))
    merged = replace(cfg, **update)
    problems = cross_check(merged)
    if problems:
        raise PolicyRefused(problems)
    return merged


def policy_switches(cfg: ProxyConfig, policies: dict[str, ServicePolicy]
                    ) -> tuple[list[SwitchConfig], list[tuple[str, str]]]:
    """The service switches ``policies`` declare for ``cfg``'s followed clusters, less
    those the file declares by name (the file wins), and the problems found."""
    declared = sorted(((c, sp.degrade) for c, sp in policies.items()
                       if sp.degrade is not None), key=lambda d: d[0])
    if not declared:
        return [], []
    file_names = {sw.name for sw in cfg.resilience.switches}
    services: dict[str, tuple[str, str]] = {}
    if cfg.discovery is not None:
        services = {f.cluster: cfg.discovery.service_key(f) for f in cfg.discovery.clusters}
    by_name: dict[str, list[tuple[str, SwitchBehaviour]]] = {}
    problems: list[tuple[str, str]] = []
    for cluster, behaviour in declared:
        key = services.get(cluster)
        if key is None:
            problems.append((f"clusters[{cluster}]", "a TrafficPolicy's degradation switch "
                             "applies to a cluster that follows a Service; this one does not"))
            continue
        try:
            name = service_switch_name(*key)
        except ValueError as e:
            problems.append((f"trafficpolicy for {key[0]}/{key[1]}: spec.degrade", str(e)))
            continue
        by_name.setdefault(name, []).append((cluster, behaviour))
    out: list[SwitchConfig] = []
    for name, uses in by_name.items():
        if name in file_names:
            continue  # the file's switch of this name is the local override
        if len(uses) > 1:
            problems.append((f"resilience.switches[{name}]", "clusters "
                             f"{', '.join(c for c, _ in uses)} all follow the Service whose "
                             "TrafficPolicy declares this switch, and a switch targets one "
                             "cluster: follow the Service with one cluster, or declare a "
                             "switch of this name in the file"))
            continue
        ((cluster, behaviour),) = uses
        fields = {f: getattr(behaviour, f) for f in SwitchBehaviour.__struct_fields__}
        out.append(SwitchConfig(name=name, level="service", target=cluster, **fields))
    return out, problems
