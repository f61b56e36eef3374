"""One scheduling decision: filter every node, score the feasible ones, pick the best.

A Pod that fits nowhere gets a :class:`Unschedulable` result whose message counts the
reasons per node the way kube-scheduler does, so ``meshctl describe pod`` can say
"0/3 nodes are available: 2 Insufficient memory, 1 node(s) were not ready.".
Ties between equally good nodes are broken by a rotating offset, not by name, so a
burst of identical Pods does not all land on the alphabetically first node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from control.scheduler.cache import NodeInfo, SchedulerCache
from control.scheduler.plugins import (
    DEFAULT_FILTERS,
    DEFAULT_SCORERS,
    Filter,
    ScoreContext,
    Scorer,
)
from control.scheduler.podinfo import PodInfo


@dataclass(frozen=True, slots=True)
class Scheduled:
    node: str
    score: float


@dataclass(frozen=True, slots=True)
class Unschedulable:
    reasons: dict[str, int]   # reason -> number of nodes that failed for it
    total_nodes: int

    @property
    def message(self) -> str:
        if not self.total_nodes:
            return "0/0 nodes are available: no nodes registered."
        parts = ", ".join(f"{n} {r}" for r, n in
                          sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"0/{self.total_nodes} nodes are available: {parts}."


class Framework:
    """Runs filter and score plugins over the cache's nodes for one Pod at a time."""

    def __init__(
        self,
        cache: SchedulerCache,
        *,
        filters: Sequence[Filter] = DEFAULT_FILTERS,
        scorers: Sequence[tuple[Scorer, float]] = DEFAULT_SCORERS,
    ) -> None:
        self.cache = cache
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self._rotation = 0

    def feasible(self, pod: PodInfo) -> tuple[list[NodeInfo], Counter[str]]:
        ok: list[NodeInfo] = []
        reasons: Counter[str] = Counter()
        for node in self.cache.nodes.values():
            for f in self.filters:
                reason = f(pod, node)
                if reason is not None:
                    reasons[reason] += 1
                    break
            else:
                ok.append(node)
        return ok, reasons

    def schedule(self, pod: PodInfo) -> Scheduled | Unschedulable:
        feasible, reasons = self.feasible(pod)
        if not feasible:
            return Unschedulable(dict(reasons), len(self.cache.nodes))
        ctx = ScoreContext(pod, feasible)
        n = len(feasible)
        self._rotation = (self._rotation + 1) % n
        best: NodeInfo | None = None
        best_score = -1.0
        for i in range(n):
            node = feasible[(i + self._rotation) % n]
            score = sum(w * s(pod, node, ctx) for s, w in self.scorers)
            if score > best_score:
                best, best_score = node, score
        assert best is not None
        return Scheduled(best.name, best_score)
