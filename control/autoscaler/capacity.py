"""The capacity report: how much traffic a service can take, from what it was seen doing.

The estimate is deliberately simple and says what it rests on. From the mesh samples of
the service's Pods (the metrics API's history: per Pod and window, requests per second
and p99 latency), keep those *under load*, i.e. whose window holds at least
``min_requests`` requests (a p99 of a handful of requests is noise). Among them:

- **per-replica capacity** = the highest per-Pod rate observed while p99 stayed at or
  under the latency target. If p99 never crossed the target, the Pods were never pushed
  to their limit and the figure is a *lower bound* (said so); if it did, the lowest rate
  at which it crossed is reported too;
- **capacity now / at maximum** = per-replica capacity x current / maximum replicas
  (linear: the mesh balances across replicas; shared bottlenecks downstream are not
  seen here);
- **headroom now** = capacity now - the service's current rate (the sum of its Pods'
  latest rates), also as a share of capacity.

With fewer than ``min_samples`` loaded samples, or none within the target, there is no
estimate and :attr:`CapacityReport.reason` says plainly why. ``meshctl capacity``
(``control/cli/capacity_cmd.py``) gathers the inputs and prints the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

MIN_SAMPLES = 10      # loaded samples needed before anything is estimated
MIN_REQUESTS = 50     # requests in a sample's window for its p99 to count


@dataclass(frozen=True, slots=True)
class Observation:
    pod: str
    timestamp: float
    rps: float
    p99: float | None       # seconds
    requests: int


@dataclass(frozen=True, slots=True)
class CapacityReport:
    samples: int                       # all mesh samples seen
    loaded: int                        # of which under load
    latency_target: float
    current_replicas: int
    max_replicas: int
    current_rps: float
    per_replica_rps: float | None = None
    lower_bound: bool = False          # p99 never crossed the target: capacity may be higher
    saturated_at_rps: float | None = None  # lowest per-Pod rate seen with p99 over target
    reason: str | None = None          # why there is no estimate

    @property
    def capacity_now(self) -> float | None:
        return None if self.per_replica_rps is None else \
            self.per_replica_rps * self.current_replicas

    @property
    def capacity_max(self) -> float | None:
        return None if self.per_replica_rps is None else \
            self.per_replica_rps * self.max_replicas

    @property
    def headroom_rps(self) -> float | None:
        cap = self.capacity_now
        return None if cap is None else cap - self.current_rps

    @property
    def headroom_share(self) -> float | None:
        cap = self.capacity_now
        return None if not cap else (cap - self.current_rps) / cap


def estimate(observations: Sequence[Observation], *, latency_target: float,
             current_replicas: int, max_replicas: int, current_rps: float,
             min_samples: int = MIN_SAMPLES, min_requests: int = MIN_REQUESTS) -> CapacityReport:
    """See the module docstring."""
    if latency_target <= 0:
        raise ValueError(f"latency target must be positive, got {latency_target}")
    if current_replicas < 0 or max_replicas < current_replicas:
        raise ValueError(f"replicas must satisfy 0 <= current <= max, got "
                         f"{current_replicas}/{max_replicas}")
    loaded = [o for o in observations if o.requests >= min_requests and o.p99 is not None]
    base = CapacityReport(samples=len(observations), loaded=len(loaded),
                          latency_target=latency_target, current_replicas=current_replicas,
                          max_replicas=max_replicas, current_rps=current_rps)
    if len(loaded) < min_samples:
        return replace(base, reason=(
            f"too little data: {len(loaded)} of {len(observations)} samples were under load "
            f"(at least {min_requests} requests in their window); {min_samples} are needed. "
            f"Put the service under load for a few minutes and ask again."))
    within = [o.rps for o in loaded if o.p99 is not None and o.p99 <= latency_target]
    over = [o.rps for o in loaded if o.p99 is not None and o.p99 > latency_target]
    saturated = min(over) if over else None
    if not within:
        return replace(base, saturated_at_rps=saturated, reason=(
            f"no estimate: p99 exceeded the target of {latency_target * 1000:g} ms in every "
            f"one of the {len(loaded)} loaded samples (from {saturated:.1f} requests/s per "
            f"pod up), so no rate is known at which the service meets it"))
    return replace(base, per_replica_rps=max(within),
                   lower_bound=not over, saturated_at_rps=saturated)


def render(report: CapacityReport, *, service: str, target_source: str,
           replicas_source: str) -> str:
    """The report as ``meshctl capacity`` prints it."""
    ms = f"{report.latency_target * 1000:g} ms"
    lines = [f"Service:          {service}",
             f"Replicas:         {report.current_replicas} now, {report.max_replicas} at most "
             f"({replicas_source})",
             f"Latency target:   p99 <= {ms} ({target_source})",
             f"Samples:          {report.samples} mesh samples, {report.loaded} under load",
             f"Load now:         {report.current_rps:.1f} requests/s"]
    if report.per_replica_rps is None:
        lines.append(f"Estimate:         none: {report.reason}")
        return "\n".join(lines) + "\n"
    per = report.per_replica_rps
    bound = "at least " if report.lower_bound else ""
    lines.append(f"Per replica:      {bound}{per:.1f} requests/s with p99 <= {ms}")
    if report.lower_bound:
        lines.append("                  (p99 never exceeded the target: the pods were not "
                     "pushed to their limit, so capacity may be higher)")
    elif report.saturated_at_rps is not None:
        lines.append(f"                  (p99 exceeded the target from "
                     f"{report.saturated_at_rps:.1f} requests/s per pod)")
    lines.append(f"Capacity now:     {bound}{report.capacity_now:.1f} requests/s "
                 f"({report.current_replicas} x {per:.1f})")
    lines.append(f"Capacity at max:  {bound}{report.capacity_max:.1f} requests/s "
                 f"({report.max_replicas} x {per:.1f})")
    share = report.headroom_share
    lines.append(f"Headroom now:     {report.headroom_rps:.1f} requests/s"
                 + (f" ({share:.0%} of capacity)" if share is not None else ""))
    return "\n".join(lines) + "\n"
