"""Filter and score plugins.

Shaped after kube-scheduler's framework, reduced to plain functions:

- a **filter** has ``check(pod, node)`` returning ``None`` when the node fits and
  otherwise a short reason, worded as kube-scheduler words it so the aggregated message
  reads the same ("Insufficient cpu", "node(s) were not ready"); and ``applies(pod)``,
  its PreFilter: ``False`` means the Pod asks for nothing this filter checks (no
  nodeSelector, no host port), so the framework skips it for every node, as
  kube-scheduler skips a plugin whose PreFilter returns ``Skip``;
- a **scorer** scores all the nodes being compared at once, ``score(pod, nodes, ctx)``
  returning one value in 0..100 per node (higher is better); the framework weights and
  sums them. Scoring a list rather than one node keeps the per-node work inside a list
  comprehension, which is what makes 100 nodes x 4 scorers cheap in Python;
- :class:`ScoreContext` is the PreScore state computed once per Pod over those nodes
  (resource shares after placing the Pod, the owner's replicas per node and per zone).

Plugins never raise and never mutate the cache; they read the incrementally kept
:class:`~control.scheduler.cache.NodeInfo` fields, never walk a node's Pods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control.scheduler.cache import NodeInfo
from control.scheduler.podinfo import PodInfo

Check = Callable[[PodInfo, NodeInfo], "str | None"]
ScoreFn = Callable[[PodInfo, Sequence[NodeInfo], "ScoreContext"], list[float]]


def _always(pod: PodInfo) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class FilterPlugin:
    name: str
    check: Check
    applies: Callable[[PodInfo], bool] = _always  # PreFilter: False = skip for this Pod


@dataclass(frozen=True, slots=True)
class ScorePlugin:
    name: str
    score: ScoreFn
    weight: float = 1.0


class ScoreContext:
    """Facts the scorers share, computed once per Pod over the nodes being scored
    (lists are aligned with those nodes)."""

    __slots__ = ("cpu_share", "max_owner_count", "max_zone_count", "memory_share",
                 "owner_counts", "zone_counts")

    def __init__(self, pod: PodInfo, nodes: Sequence[NodeInfo]) -> None:
        pc, pm = pod.score_cpu, pod.score_memory
        # Share of allocatable requested once the Pod is placed, capped at 1 (a
        # conditional, not min(): this runs for every node of every decision).
        self.cpu_share = [(s if (s := (n.score_cpu + pc) / n.cpu) < 1.0 else 1.0)
                          if n.cpu else 1.0 for n in nodes]
        self.memory_share = [(s if (s := (n.score_memory + pm) / n.memory) < 1.0 else 1.0)
                             if n.memory else 1.0 for n in nodes]
        owner = pod.owner_uid
        self.owner_counts = [n.owners.get(owner, 0) for n in nodes] if owner \
            else [0] * len(nodes)
        self.max_owner_count = max(self.owner_counts, default=0)
        zones: dict[str, int] = {}
        if owner:  # only spreading reads the zones, and only for an owned Pod
            for n, c in zip(nodes, self.owner_counts, strict=True):
                if n.zone is not None:
                    zones[n.zone] = zones.get(n.zone, 0) + c
        self.zone_counts = zones
        self.max_zone_count = max(zones.values(), default=0)


# -- filters -----------------------------------------------------------------------

NOT_READY = "node(s) were not ready"
UNSCHEDULABLE = "node(s) were unschedulable"
SELECTOR = "node(s) didn't match Pod's node affinity/selector"
PORTS = "node(s) didn't have free ports for the requested pod ports"
WILDCARD_IPS = frozenset(("0.0.0.0", "", "::"))


def node_ready(pod: PodInfo, node: NodeInfo) -> str | None:
    return None if node.ready else NOT_READY


def node_schedulable(pod: PodInfo, node: NodeInfo) -> str | None:
    if not node.unschedulable or pod.tolerates_unschedulable:
        return None
    return UNSCHEDULABLE


def resources_fit(pod: PodInfo, node: NodeInfo) -> str | None:
    # Reasons in kube-scheduler's order; only the first is reported per node.
    if len(node.pods) + 1 > node.max_pods:
        return "Too many pods"
    if pod.cpu and node.requested_cpu + pod.cpu > node.cpu:
        return "Insufficient cpu"
    if pod.memory and node.requested_memory + pod.memory > node.memory:
        return "Insufficient memory"
    return None


def _expr_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = expr.get("key"), expr.get("operator")
    values = expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        try:
            have, want = int(labels[key]), int(values[0])
        except (KeyError, IndexError, ValueError):
            return False
        return have > want if op == "Gt" else have < want
    return False


def node_selector(pod: PodInfo, node: NodeInfo) -> str | None:
    if any(node.labels.get(k) != v for k, v in pod.node_selector.items()):
        return SELECTOR
    if pod.required_affinity and not any(
            all(_expr_matches(e, node.labels) for e in term)
            for term in pod.required_affinity):
        return SELECTOR
    return None


def _selects(pod: PodInfo) -> bool:
    return bool(pod.node_selector or pod.required_affinity)


def tolerates(tolerations: tuple[dict[str, Any], ...], taint: Mapping[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator", "Equal")
        if op == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if (op == "Equal" and t.get("key") == taint.get("key")
                and (t.get("value") or "") == (taint.get("value") or "")):
            return True
    return False


def taints_tolerated(pod: PodInfo, node: NodeInfo) -> str | None:
    # PreferNoSchedule taints only lower the score (prefer_no_schedule below).
    for taint in node.hard_taints:
        if not tolerates(pod.tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return None


def host_ports_free(pod: PodInfo, node: NodeInfo) -> str | None:
    used = node.ports
    if not used:
        return None
    for mine in pod.host_ports:
        ips = used.get((mine.protocol, mine.port))
        if ips and (mine.ip in WILDCARD_IPS or mine.ip in ips
                    or not WILDCARD_IPS.isdisjoint(ips)):
            return PORTS
    return None


def _has_host_ports(pod: PodInfo) -> bool:
    return bool(pod.host_ports)


# -- scorers -----------------------------------------------------------------------

def least_allocated(pod: PodInfo, nodes: Sequence[NodeInfo], ctx: ScoreContext) -> list[float]:
    """Prefer nodes with the most room left after placing the Pod."""
    return [(1 - (c + m) / 2) * 100
            for c, m in zip(ctx.cpu_share, ctx.memory_share, strict=True)]


def balanced_allocation(pod: PodInfo, nodes: Sequence[NodeInfo],
                        ctx: ScoreContext) -> list[float]:
    """Prefer nodes whose CPU and memory usage stay close to each other."""
    return [(1 - abs(c - m)) * 100
            for c, m in zip(ctx.cpu_share, ctx.memory_share, strict=True)]


def spread(pod: PodInfo, nodes: Sequence[NodeInfo], ctx: ScoreContext) -> list[float]:
    """Prefer nodes, then zones, holding fewer replicas of the Pod's owner.

    Like kube-scheduler's default spreading: when zones are labelled, the zone term
    weighs two thirds, so losing a zone costs as few replicas as possible. Counts are
    over the nodes being scored (kube-scheduler's SelectorSpread does the same).
    """
    if pod.owner_uid is None:
        return [100.0] * len(nodes)
    top = ctx.max_owner_count
    node_scores = [100 * (top - c) / top for c in ctx.owner_counts] if top \
        else [100.0] * len(nodes)
    if not ctx.zone_counts:
        return node_scores
    ztop = ctx.max_zone_count
    # The zone term, once per zone: two thirds of its score.
    zone_term = {z: (100 * (ztop - c) / ztop if ztop else 100.0) * 2 / 3
                 for z, c in ctx.zone_counts.items()}
    return [s if n.zone is None else s / 3 + zone_term[n.zone]
            for s, n in zip(node_scores, nodes, strict=True)]


def prefer_no_schedule(pod: PodInfo, nodes: Sequence[NodeInfo],
                       ctx: ScoreContext) -> list[float]:
    """Prefer nodes with fewer PreferNoSchedule taints the Pod does not tolerate."""
    tol = pod.tolerations
    return [100.0 * (1 - sum(1 for t in n.soft_taints if not tolerates(tol, t))
                     / len(n.soft_taints)) if n.soft_taints else 100.0
            for n in nodes]


DEFAULT_FILTERS: tuple[FilterPlugin, ...] = (
    FilterPlugin("NodeReady", node_ready),
    FilterPlugin("NodeUnschedulable", node_schedulable),
    FilterPlugin("NodeAffinity", node_selector, _selects),
    FilterPlugin("TaintToleration", taints_tolerated),
    FilterPlugin("NodeResourcesFit", resources_fit),
    FilterPlugin("NodePorts", host_ports_free, _has_host_ports),
)
# Spreading weighs most: a replica set that survives a node loss matters more than a
# tidy packing.
DEFAULT_SCORERS: tuple[ScorePlugin, ...] = (
    ScorePlugin("LeastAllocated", least_allocated, 1.0),
    ScorePlugin("BalancedAllocation", balanced_allocation, 1.0),
    ScorePlugin("Spread", spread, 2.0),
    ScorePlugin("PreferNoSchedule", prefer_no_schedule, 1.0),
)
