"""One scheduling decision: filter the nodes, score the feasible ones, pick the best.

kube-scheduler's scheduling cycle, in this order:

1. **PreFilter**: each filter plugin says whether it applies to the Pod at all (a Pod
   without host ports skips the port filter for every node);
2. **Filter**: nodes are examined in the cache's zone-interleaved order, starting where
   the previous decision stopped, until enough feasible nodes are found
   (``percentageOfNodesToScore``, below) or every node has been examined. A node fails on
   its first failing filter, whose reason is counted;
3. **PreScore / Score**: a :class:`~control.scheduler.plugins.ScoreContext` is computed
   once over the feasible nodes, every scorer scores them all, the weighted sums are
   compared. Ties between equally good nodes are broken by a rotating offset, not by
   name, so a burst of identical Pods does not all land on one node.

**How many nodes are examined.** ``percentage_of_nodes_to_score`` is Kubernetes'
setting of the same name with its adaptive default (:func:`nodes_to_find`): clusters of
up to 100 nodes are always searched completely (the documentation's "50% at 100 nodes"
is raised to the minimum of 100); larger ones stop after ``max(100, n x p%)`` feasible
nodes with ``p = max(5, 50 - n/125)``: 100 of 150, 420 of 1,000, 500 of 5,000. A Pod
only one node fits still finds it: the search stops early only once enough feasible
nodes are in hand. The price is spreading: with 1,000 nodes, an owner's replicas end
up within one of even instead of exactly even (``tests/scheduler``; the benchmark's
replay measures it).

A Pod that fits nowhere gets an :class:`Unschedulable` result whose message counts the
reasons per node the way kube-scheduler does, so ``meshctl describe pod`` can say
"0/3 nodes are available: 2 Insufficient memory, 1 node(s) were not ready.".
:attr:`Framework.stats` counts decisions and nodes examined and scored, deterministic
numbers for benchmarks (wall time on a shared machine is not).

Neighbours: ``plugins.py`` (the plugins), ``cache.py`` (the state they read),
``scheduler.py`` (the loop that calls :meth:`Framework.schedule` once per Pod).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from control.scheduler.cache import NodeInfo, SchedulerCache
from control.scheduler.plugins import (
    DEFAULT_FILTERS,
    DEFAULT_SCORERS,
    FilterPlugin,
    ScoreContext,
    ScorePlugin,
)
from control.scheduler.podinfo import PodInfo

MIN_FEASIBLE_NODES_TO_FIND = 100        # kube-scheduler's minFeasibleNodesToFind
MIN_FEASIBLE_NODES_PERCENTAGE = 5       # ... and minFeasibleNodesPercentageToFind


def nodes_to_find(total: int, percentage: int | None = None) -> int:
    """How many feasible nodes are enough, among ``total`` (kube-scheduler's
    ``numFeasibleNodesToFind``). ``percentage`` None or 0: the adaptive default."""
    if total < MIN_FEASIBLE_NODES_TO_FIND:
        return total
    pct = percentage or max(50 - total // 125, MIN_FEASIBLE_NODES_PERCENTAGE)
    if pct >= 100:
        return total
    return max(total * pct // 100, MIN_FEASIBLE_NODES_TO_FIND)


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


@dataclass(slots=True)
class FrameworkStats:
    """Work done so far: deterministic, unlike wall time on a shared machine."""

    decisions: int = 0
    unschedulable: int = 0
    nodes_examined: int = 0   # filtered (passed or failed)
    nodes_scored: int = 0     # feasible nodes compared by the scorers
    searches_cut_short: int = 0  # decisions that stopped before examining every node


class Framework:
    """Runs filter and score plugins over the cache's nodes for one Pod at a time."""

    def __init__(
        self,
        cache: SchedulerCache,
        *,
        filters: Sequence[FilterPlugin] = DEFAULT_FILTERS,
        scorers: Sequence[ScorePlugin] = DEFAULT_SCORERS,
        percentage_of_nodes_to_score: int | None = None,
    ) -> None:
        p = percentage_of_nodes_to_score
        if p is not None and not 0 <= p <= 100:
            raise ValueError(f"percentage_of_nodes_to_score must be 0..100 (0 or None: "
                             f"adaptive), got {p}")
        self.cache = cache
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.percentage_of_nodes_to_score = p
        self.stats = FrameworkStats()
        self._next_start = 0   # where the next search begins (round robin over nodes)
        self._rotation = 0     # tie-break offset among the scored nodes

    def feasible(self, pod: PodInfo, *, enough: int | None = None
                 ) -> tuple[list[NodeInfo], Counter[str]]:
        """Nodes that pass every filter (up to ``enough`` of them, searching from where
        the last search stopped) and, per reason, how many nodes failed."""
        nodes = self.cache.ordered()
        total = len(nodes)
        want = total if enough is None else enough
        start = self._next_start % total if total else 0
        checks = [f.check for f in self.filters if f.applies(pod)]
        ok: list[NodeInfo] = []
        reasons: Counter[str] = Counter()
        for node in (nodes[start:] + nodes[:start]) if start else nodes:
            for check in checks:
                reason = check(pod, node)
                if reason is not None:
                    reasons[reason] += 1
                    break
            else:
                ok.append(node)
                if len(ok) >= want:
                    break
        examined = len(ok) + sum(reasons.values())
        if total:
            self._next_start = (start + examined) % total
        self.stats.nodes_examined += examined
        if examined < total:
            self.stats.searches_cut_short += 1
        return ok, reasons

    def schedule(self, pod: PodInfo) -> Scheduled | Unschedulable:
        self.stats.decisions += 1
        total = len(self.cache.nodes)
        feasible, reasons = self.feasible(
            pod, enough=nodes_to_find(total, self.percentage_of_nodes_to_score))
        if not feasible:
            self.stats.unschedulable += 1
            return Unschedulable(dict(reasons), total)
        n = len(feasible)
        self.stats.nodes_scored += n
        ctx = ScoreContext(pod, feasible)
        columns = []
        for plugin in self.scorers:
            scores = plugin.score(pod, feasible, ctx)
            w = plugin.weight
            columns.append(scores if w == 1.0 else [w * s for s in scores])
        # Per node, the weighted scores summed in plugin order.
        totals = list(map(sum, zip(*columns, strict=True))) if columns else [0.0] * n
        # The first best node counting from a rotating offset.
        self._rotation = r = (self._rotation + 1) % n
        rotated = totals[r:] + totals[:r]
        best = max(rotated)
        return Scheduled(feasible[(rotated.index(best) + r) % n].name, best)
