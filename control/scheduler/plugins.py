"""Filter and score plugins.

A filter returns ``None`` when the node fits and otherwise a short reason, worded as
kube-scheduler words it so the aggregated message reads the same ("Insufficient cpu",
"node(s) were not ready"). A scorer returns 0..100, higher is better; the framework
weights and sums them. Plugins never raise and never mutate the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from control.scheduler.cache import NodeInfo
from control.scheduler.podinfo import PodInfo

Filter = Callable[[PodInfo, NodeInfo], "str | None"]
Scorer = Callable[[PodInfo, NodeInfo, "ScoreContext"], float]


class ScoreContext:
    """Cluster-wide facts a scorer needs, computed once per Pod over the feasible nodes."""

    def __init__(self, pod: PodInfo, feasible: list[NodeInfo]) -> None:
        owner = pod.owner_uid
        self.owner_counts = {n.name: (n.owners.get(owner, 0) if owner else 0)
                             for n in feasible}
        self.max_owner_count = max(self.owner_counts.values(), default=0)
        zones: dict[str, int] = {}
        for n in feasible:
            if n.zone is not None:
                zones[n.zone] = zones.get(n.zone, 0) + self.owner_counts[n.name]
        self.zone_counts = zones
        self.max_zone_count = max(zones.values(), default=0)


# -- filters -----------------------------------------------------------------------

def node_ready(pod: PodInfo, node: NodeInfo) -> str | None:
    return None if node.ready else "node(s) were not ready"


def node_schedulable(pod: PodInfo, node: NodeInfo) -> str | None:
    if not node.unschedulable:
        return None
    tolerated = any(t.get("key") == "node.kubernetes.io/unschedulable"
                    and t.get("operator", "Equal") == "Exists" for t in pod.tolerations)
    return None if tolerated else "node(s) were unschedulable"


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
        return "node(s) didn't match Pod's node affinity/selector"
    if pod.required_affinity and not any(
            all(_expr_matches(e, node.labels) for e in term)
            for term in pod.required_affinity):
        return "node(s) didn't match Pod's node affinity/selector"
    return None


def _tolerates(tolerations: tuple[dict[str, Any], ...], taint: Mapping[str, Any]) -> bool:
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
    for taint in node.taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue  # PreferNoSchedule only lowers the score
        if not _tolerates(pod.tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    return None


def host_ports_free(pod: PodInfo, node: NodeInfo) -> str | None:
    if not pod.host_ports:
        return None
    for other in node.pods.values():
        for mine in pod.host_ports:
            if any(mine.conflicts(theirs) for theirs in other.host_ports):
                return "node(s) didn't have free ports for the requested pod ports"
    return None


# -- scorers -----------------------------------------------------------------------

def _fractions(pod: PodInfo, node: NodeInfo) -> tuple[float, float]:
    cpu = (node.score_cpu + pod.score_cpu) / node.cpu if node.cpu else 1.0
    mem = (node.score_memory + pod.score_memory) / node.memory if node.memory else 1.0
    return min(cpu, 1.0), min(mem, 1.0)


def least_allocated(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Prefer nodes with the most room left after placing the Pod."""
    cpu, mem = _fractions(pod, node)
    return (1 - (cpu + mem) / 2) * 100


def balanced_allocation(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Prefer nodes whose CPU and memory usage stay close to each other."""
    cpu, mem = _fractions(pod, node)
    return (1 - abs(cpu - mem)) * 100


def spread(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    """Prefer nodes, then zones, holding fewer replicas of the Pod's owner.

    Like kube-scheduler's default spreading: when zones are labelled, the zone term
    weighs two thirds, so losing a zone costs as few replicas as possible.
    """
    if pod.owner_uid is None:
        return 100.0
    node_score = 100.0
    if ctx.max_owner_count:
        node_score = 100 * (ctx.max_owner_count - ctx.owner_counts[node.name]) \
            / ctx.max_owner_count
    if node.zone is None or not ctx.zone_counts:
        return node_score
    zone_score = 100.0
    if ctx.max_zone_count:
        zone_score = 100 * (ctx.max_zone_count - ctx.zone_counts[node.zone]) \
            / ctx.max_zone_count
    return node_score / 3 + zone_score * 2 / 3


def prefer_no_schedule(pod: PodInfo, node: NodeInfo, ctx: ScoreContext) -> float:
    soft = [t for t in node.taints if t.get("effect") == "PreferNoSchedule"]
    if not soft:
        return 100.0
    bad = sum(1 for t in soft if not _tolerates(pod.tolerations, t))
    return 100.0 * (1 - bad / len(soft))


DEFAULT_FILTERS: tuple[Filter, ...] = (
    node_ready, node_schedulable, node_selector, taints_tolerated, resources_fit,
    host_ports_free,
)
# (scorer, weight). Spreading weighs most: a replica set that survives a node loss
# matters more than a tidy packing.
DEFAULT_SCORERS: tuple[tuple[Scorer, float], ...] = (
    (least_allocated, 1.0), (balanced_allocation, 1.0), (spread, 2.0),
    (prefer_no_schedule, 1.0),
)
