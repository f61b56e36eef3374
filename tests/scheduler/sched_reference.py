"""A deliberately naive scheduler decision, the yardstick for the fast one.

Everything is recomputed from each node's Pods for every decision (requests summed,
owners counted, host ports compared pair by pair), every filter runs on every node, and
each scorer scores one node at a time, with the formulas written out plainly. This is
what ``control/scheduler`` computed before its state became incremental and its scorers
list-wise; the property tests check that the fast framework still picks a node this one
ranks best, with the same score, and explains failures with the same reasons.

Not used by the product: only by ``test_scheduler_equivalence.py`` and
``test_scheduler_cache_incremental.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control.scheduler.cache import NodeInfo, SchedulerCache
from control.scheduler.podinfo import PodInfo

WILD = ("0.0.0.0", "", "::")


@dataclass(frozen=True)
class Totals:
    """What is bound to one node, summed from its Pods."""

    cpu: int
    memory: int
    score_cpu: int
    score_memory: int
    owners: dict[str, int]
    ports: dict[tuple[str, int], dict[str, int]]


def totals(node: NodeInfo) -> Totals:
    owners: Counter[str] = Counter()
    ports: dict[tuple[str, int], Counter[str]] = {}
    for p in node.pods.values():
        if p.owner_uid:
            owners[p.owner_uid] += 1
        for hp in p.host_ports:
            ports.setdefault((hp.protocol, hp.port), Counter())[hp.ip] += 1
    return Totals(
        cpu=sum(p.cpu for p in node.pods.values()),
        memory=sum(p.memory for p in node.pods.values()),
        score_cpu=sum(p.score_cpu for p in node.pods.values()),
        score_memory=sum(p.score_memory for p in node.pods.values()),
        owners=dict(owners), ports={k: dict(v) for k, v in ports.items()})


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


def _expr(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False


def reason(pod: PodInfo, node: NodeInfo) -> str | None:
    """The first filter ``node`` fails for ``pod``, in kube-scheduler's order."""
    if not node.ready:
        return "node(s) were not ready"
    if node.unschedulable and not any(
            t.get("key") == "node.kubernetes.io/unschedulable"
            and t.get("operator", "Equal") == "Exists" for t in pod.tolerations):
        return "node(s) were unschedulable"
    labels = node.labels
    if any(labels.get(k) != v for k, v in pod.node_selector.items()) or (
            pod.required_affinity and not any(all(_expr(e, labels) for e in term)
                                              for term in pod.required_affinity)):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and \
                not _tolerates(pod.tolerations, taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    t = totals(node)
    if len(node.pods) + 1 > node.max_pods:
        return "Too many pods"
    if pod.cpu and t.cpu + pod.cpu > node.cpu:
        return "Insufficient cpu"
    if pod.memory and t.memory + pod.memory > node.memory:
        return "Insufficient memory"
    for other in node.pods.values():
        for mine in pod.host_ports:
            for theirs in other.host_ports:
                if (mine.port == theirs.port and mine.protocol == theirs.protocol
                        and (mine.ip in WILD or theirs.ip in WILD or mine.ip == theirs.ip)):
                    return "node(s) didn't have free ports for the requested pod ports"
    return None


def scores(pod: PodInfo, feasible: list[NodeInfo]) -> dict[str, float]:
    """Each feasible node's weighted score: least allocated + balanced + 2 x spread +
    PreferNoSchedule, spread counted over the feasible nodes."""
    owner = pod.owner_uid
    counts = {n.name: (totals(n).owners.get(owner, 0) if owner else 0) for n in feasible}
    top = max(counts.values(), default=0)
    zones: dict[str, int] = {}
    for n in feasible:
        z = n.labels.get("topology.kubernetes.io/zone")
        if z is not None:
            zones[z] = zones.get(z, 0) + counts[n.name]
    ztop = max(zones.values(), default=0)
    out: dict[str, float] = {}
    for n in feasible:
        t = totals(n)
        cpu = min((t.score_cpu + pod.score_cpu) / n.cpu, 1.0) if n.cpu else 1.0
        mem = min((t.score_memory + pod.score_memory) / n.memory, 1.0) if n.memory else 1.0
        least = (1 - (cpu + mem) / 2) * 100
        balanced = (1 - abs(cpu - mem)) * 100
        zone = n.labels.get("topology.kubernetes.io/zone")
        if owner is None:
            spread = 100.0
        else:
            spread = 100 * (top - counts[n.name]) / top if top else 100.0
            if zone is not None and zones:
                zone_score = 100 * (ztop - zones[zone]) / ztop if ztop else 100.0
                spread = spread / 3 + zone_score * 2 / 3
        soft = [x for x in n.taints if x.get("effect") == "PreferNoSchedule"]
        prefer = 100.0 * (1 - sum(1 for x in soft if not _tolerates(pod.tolerations, x))
                          / len(soft)) if soft else 100.0
        out[n.name] = 0 + 1.0 * least + 1.0 * balanced + 2.0 * spread + 1.0 * prefer
    return out


def decide(pod: PodInfo, cache: SchedulerCache) -> tuple[dict[str, float], dict[str, int]]:
    """(score per feasible node, count per reason over the infeasible ones)."""
    feasible: list[NodeInfo] = []
    reasons: Counter[str] = Counter()
    for node in cache.nodes.values():
        r = reason(pod, node)
        if r is None:
            feasible.append(node)
        else:
            reasons[r] += 1
    return scores(pod, feasible), dict(reasons)
