"""The scheduler's decisions alone, replayed in this process: CPU per decision and
placement quality, without HTTP, JSON or other processes in the way.

:func:`replay` builds a :class:`~control.scheduler.cache.SchedulerCache` with the
benchmark's node shape (same allocatable, zones and Pod requests), then places the
replicas of one owner one after the other exactly as the scheduling loop does
(``Framework.schedule``, then ``assume``). It reports the CPU time per decision
(``time.process_time``: time the process was actually running, so another session's
load on the shared machine does not count, unlike wall time), how many nodes each
decision examined and scored (deterministic), and the resulting spread per node and per
zone. Replaying a larger cluster than the end-to-end run shows what
``percentageOfNodesToScore`` costs in spreading once it starts cutting searches short
(above 100 nodes).

Neighbours: ``scheduler_bench.py`` runs this after the end-to-end phases and prints
it; ``control/scheduler/framework.py`` is what is measured.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from control.scheduler.cache import ZONE_LABEL, SchedulerCache
from control.scheduler.framework import Framework, Scheduled
from control.scheduler.podinfo import pod_info


@dataclass(frozen=True)
class ReplayResult:
    nodes: int
    replicas: int
    placed: int
    cpu_us_per_decision: float
    examined_per_decision: float
    scored_per_decision: float
    per_node_min: int
    per_node_max: int
    per_node_stdev: float
    per_zone_min: int
    per_zone_max: int


def _node(i: int, *, cpu: str, memory: str, zones: int) -> dict[str, Any]:
    res = {"cpu": cpu, "memory": memory, "pods": "110"}
    name = f"node-{i:04d}"
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  ZONE_LABEL: f"zone-{i % zones}"}},
            "spec": {}, "status": {"allocatable": res,
                                   "conditions": [{"type": "Ready", "status": "True"}]}}


def _pod(i: int, *, cpu: str, memory: str) -> dict[str, Any]:
    return {"metadata": {"name": f"bench-{i}", "namespace": "default", "uid": f"uid-{i}",
                         "ownerReferences": [{"uid": "rs-bench", "controller": True,
                                              "kind": "ReplicaSet", "name": "bench"}]},
            "spec": {"containers": [{"name": "app", "resources": {"requests": {
                "cpu": cpu, "memory": memory}}}]}}


def replay(*, nodes: int, replicas: int, zones: int, node_cpu: str, node_memory: str,
           pod_cpu: str, pod_memory: str, percentage: int | None = None) -> ReplayResult:
    """Place ``replicas`` Pods of one owner on ``nodes`` empty nodes; see the module
    docstring. Pod objects are parsed before the clock starts, as the loop parses
    each Pod before its decision."""
    cache = SchedulerCache()
    for i in range(nodes):
        cache.set_node(_node(i, cpu=node_cpu, memory=node_memory, zones=zones))
    fw = Framework(cache, percentage_of_nodes_to_score=percentage)
    infos = [pod_info(_pod(i, cpu=pod_cpu, memory=pod_memory)) for i in range(replicas)]
    placed = 0
    start = time.process_time()
    for p in infos:
        r = fw.schedule(p)
        if isinstance(r, Scheduled):
            cache.assume(p, r.node)
            placed += 1
    cpu = time.process_time() - start
    per_node = [len(n.pods) for n in cache.nodes.values()]
    per_zone: Counter[str | None] = Counter()
    for n in cache.nodes.values():
        per_zone[n.zone] += len(n.pods)
    s = fw.stats
    return ReplayResult(
        nodes=nodes, replicas=replicas, placed=placed,
        cpu_us_per_decision=cpu / max(1, s.decisions) * 1e6,
        examined_per_decision=s.nodes_examined / max(1, s.decisions),
        scored_per_decision=s.nodes_scored / max(1, s.decisions),
        per_node_min=min(per_node), per_node_max=max(per_node),
        per_node_stdev=round(statistics.pstdev(per_node), 2),
        per_zone_min=min(per_zone.values()), per_zone_max=max(per_zone.values()))
