"""Node lifecycle decisions: when a node is NotReady, when its Pods are evicted, and when
eviction must stop because the control plane, not the nodes, is probably cut off.

Kubernetes' node lifecycle controller, reduced to its decisions:

- a node whose last heartbeat is older than ``grace_period`` is NotReady (its Pods'
  Ready condition goes false, so endpoints drop them at once);
- once NotReady for ``eviction_timeout`` its Pods are evicted (deleted, so their owners
  recreate them elsewhere), at most ``eviction_rate`` nodes per second;
- when the share of NotReady nodes reaches ``unhealthy_threshold`` (Kubernetes' 0.55 per
  zone) the cluster is in *full disruption*: a partition is far likelier than half the
  machines dying together, so eviction stops entirely until enough nodes come back.
  In clusters with at least ``large_cluster_size`` nodes, partial disruption slows
  eviction to ``secondary_eviction_rate`` instead.

Everything runs on a caller-given clock (monotonic seconds) so tests need no sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ZoneState = Literal["Normal", "PartialDisruption", "FullDisruption"]


@dataclass(frozen=True, slots=True)
class NodeHealthConfig:
    grace_period: float = 40.0        # s without heartbeat before NotReady (kube: 40 s)
    eviction_timeout: float = 300.0   # s NotReady before Pods are evicted (kube: 5 min)
    eviction_rate: float = 0.1        # nodes/s evicted in normal state (kube: 0.1)
    secondary_eviction_rate: float = 0.01  # nodes/s in partial disruption of a large cluster
    unhealthy_threshold: float = 0.55  # share NotReady at which eviction stops
    large_cluster_size: int = 50       # below it partial disruption stops eviction too


@dataclass(slots=True)
class _Node:
    last_heartbeat: float
    not_ready_since: float | None = None
    evicted: bool = False


@dataclass(slots=True)
class Decisions:
    mark_not_ready: list[str] = field(default_factory=list)
    mark_ready: list[str] = field(default_factory=list)
    evict: list[str] = field(default_factory=list)
    state: ZoneState = "Normal"
    waiting_for_eviction: list[str] = field(default_factory=list)


class NodeHealth:
    """Tracks heartbeats and turns them into NotReady marks and rate-limited evictions."""

    def __init__(self, config: NodeHealthConfig | None = None) -> None:
        self.config = config or NodeHealthConfig()
        self._nodes: dict[str, _Node] = {}
        self._tokens = 1.0
        self._last_refill: float | None = None

    def heartbeat(self, name: str, at: float) -> None:
        n = self._nodes.get(name)
        if n is None:
            self._nodes[name] = _Node(last_heartbeat=at)
        elif at > n.last_heartbeat:
            n.last_heartbeat = at

    def forget(self, name: str) -> None:
        self._nodes.pop(name, None)

    def state(self, now: float) -> ZoneState:
        total = len(self._nodes)
        if not total:
            return "Normal"
        bad = sum(1 for n in self._nodes.values()
                  if now - n.last_heartbeat > self.config.grace_period)
        if bad == 0:
            return "Normal"
        # Kubernetes: full disruption when every node is down; otherwise "partial" once
        # the unhealthy share passes the threshold (needs at least 3 unhealthy nodes).
        if bad == total:
            return "FullDisruption"
        if bad > 2 and bad / total >= self.config.unhealthy_threshold:
            return "PartialDisruption"
        return "Normal"

    def _rate(self, state: ZoneState) -> float:
        if state == "FullDisruption":
            return 0.0
        if state == "PartialDisruption":
            if len(self._nodes) >= self.config.large_cluster_size:
                return self.config.secondary_eviction_rate
            return 0.0
        return self.config.eviction_rate

    def evaluate(self, now: float) -> Decisions:
        """What to do now. Call periodically; each decision is returned once."""
        cfg = self.config
        out = Decisions(state=self.state(now))
        rate = self._rate(out.state)
        if self._last_refill is not None:
            self._tokens = min(1.0, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        for name in sorted(self._nodes):
            n = self._nodes[name]
            stale = now - n.last_heartbeat > cfg.grace_period
            if stale and n.not_ready_since is None:
                n.not_ready_since = now
                out.mark_not_ready.append(name)
            elif not stale and n.not_ready_since is not None:
                n.not_ready_since = None
                n.evicted = False
                out.mark_ready.append(name)
            if (n.not_ready_since is not None and not n.evicted
                    and now - n.not_ready_since >= cfg.eviction_timeout):
                if rate > 0 and self._tokens >= 1.0:
                    self._tokens -= 1.0
                    n.evicted = True
                    out.evict.append(name)
                else:
                    out.waiting_for_eviction.append(name)
        return out
