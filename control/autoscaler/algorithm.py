"""Kubernetes' HPA arithmetic, pure and on a caller-given clock.

Per metric (:func:`propose`): ``desired = ceil(ready * current / target)``, nothing
changes inside the tolerance band, and Pods without a sample are treated conservatively:
when the ratio says "scale up" a missing Pod counts as using nothing and a not-yet-ready
Pod (CPU only, as in Kubernetes) too; when it says "scale down" a missing Pod counts as
exactly at target. If that reassessment flips the direction or lands inside the band,
the count stays. Across metrics the largest proposal wins.

Then :class:`Normalizer` applies the behaviour: the stabilisation window (scale up to
the *lowest* recommendation of the up-window, down to the *highest* of the down-window,
so a flapping metric does not flap replicas), then the rate policies (at most N Pods or
P percent per period, measured from the replica count at the start of the period), then
min/max. Every step explains itself in words for Events and ``describe``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True, slots=True)
class Proposal:
    replicas: int
    ratio: float            # current / target (after the conservative reassessment)
    current: float          # the observed metric value (average per Pod, or utilisation %)
    reason: str


def propose(
    current_replicas: int,
    samples: Mapping[str, float],
    *,
    target: float,
    ready: Sequence[str],
    unready: Sequence[str] = (),
    requests: Mapping[str, float] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    unready_counts_as_zero: bool = False,
) -> Proposal:
    """A replica count for one metric.

    ``samples`` maps Pod name to its value (usage for a resource metric, the value for a
    Pods metric); ``ready``/``unready`` name the Pods that exist. With ``requests`` the
    target is a utilisation percentage of the Pods' requests (resource metrics);
    without, ``target`` is an average value per Pod. ``unready_counts_as_zero`` is
    Kubernetes' CPU rule for Pods that are not ready yet.
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    ready_with = [p for p in ready if p in samples]
    missing = [p for p in ready if p not in samples]
    if not ready_with:
        return Proposal(current_replicas, 1.0, 0.0, "no metrics for any ready pod: unchanged")
    metrics = {p: samples[p] for p in ready_with}

    def ratio_of(values: Mapping[str, float]) -> tuple[float, float]:
        if requests is not None:
            req = sum(requests.get(p, 0.0) for p in values)
            if req <= 0:
                raise ValueError("utilisation target needs resource requests on the pods")
            util = 100.0 * sum(values.values()) / req
            return util / target, util
        avg = sum(values.values()) / len(values)
        return avg / target, avg

    ratio, value = ratio_of(metrics)
    scale_up_with_unready = bool(unready) and unready_counts_as_zero and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if abs(1.0 - ratio) <= tolerance:
            return Proposal(current_replicas, ratio, value,
                            f"ratio {ratio:.2f} within tolerance {tolerance}: unchanged")
        n = math.ceil(ratio * len(metrics))
        return Proposal(n, ratio, value, f"ratio {ratio:.2f} over {len(metrics)} pods")
    adjusted = dict(metrics)
    for p in missing:
        if ratio < 1.0:
            # Scaling down: assume the silent Pod is exactly at target.
            adjusted[p] = (requests.get(p, 0.0) * target / 100.0) if requests is not None \
                else target
        else:
            adjusted[p] = 0.0
    if scale_up_with_unready:
        for p in unready:
            adjusted[p] = 0.0
    new_ratio, _ = ratio_of(adjusted)
    if (abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio)
            or (ratio > 1.0 > new_ratio)):
        return Proposal(current_replicas, new_ratio, value,
                        f"ratio {ratio:.2f} is {new_ratio:.2f} counting {len(missing)} "
                        f"missing and {len(unready)} unready pods conservatively: unchanged")
    n = math.ceil(new_ratio * len(adjusted))
    if (new_ratio < 1.0 and n > current_replicas) or (new_ratio > 1.0 and n < current_replicas):
        return Proposal(current_replicas, new_ratio, value,
                        "conservative estimate points the other way: unchanged")
    return Proposal(n, new_ratio, value,
                    f"ratio {new_ratio:.2f} over {len(adjusted)} pods "
                    f"({len(missing)} missing, {len(unready)} unready counted conservatively)")


PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True, slots=True)
class Policy:
    type: PolicyType
    value: int
    period_seconds: int


@dataclass(frozen=True, slots=True)
class Rules:
    stabilization_window: float
    policies: tuple[Policy, ...]
    select: SelectPolicy = "Max"


# Kubernetes' defaults: up at once, by 100% or 4 Pods per 15 s, whichever is more;
# down only after 5 minutes of lower recommendations, by up to 100% per 15 s.
DEFAULT_UP = Rules(0.0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), "Max")
DEFAULT_DOWN = Rules(300.0, (Policy("Percent", 100, 15),), "Max")


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str
    limited_by: str | None = None


@dataclass
class Normalizer:
    """Stabilisation and rate limiting for one HPA; keeps its own short history."""

    up: Rules = DEFAULT_UP
    down: Rules = DEFAULT_DOWN
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _events: deque[tuple[float, int]] = field(default_factory=deque)  # (time, +/-change)

    def record_scale(self, now: float, change: int) -> None:
        """Tell the normaliser a scale of ``change`` replicas happened at ``now``."""
        if change:
            self._events.append((now, change))

    def decide(self, now: float, current: int, desired: int, min_replicas: int,
               max_replicas: int) -> Decision:
        keep = max(self.up.stabilization_window, self.down.stabilization_window,
                   *(p.period_seconds for p in (*self.up.policies, *self.down.policies)))
        while self._recommendations and self._recommendations[0][0] < now - keep:
            self._recommendations.popleft()
        while self._events and self._events[0][0] < now - keep:
            self._events.popleft()
        self._recommendations.append((now, desired))
        up_rec = min(r for t, r in self._recommendations
                     if t >= now - self.up.stabilization_window)
        down_rec = max(r for t, r in self._recommendations
                       if t >= now - self.down.stabilization_window)
        stabilized = min(max(current, up_rec), down_rec)
        reason = f"recommended {desired}"
        if stabilized != desired:
            reason += f", stabilised to {stabilized}"
        target, limited = stabilized, None
        if stabilized > current:
            cap = self._limit(now, current, self.up, up=True)
            if target > cap:
                target, limited = cap, f"scale-up policy allows at most {cap}"
        elif stabilized < current:
            floor = self._limit(now, current, self.down, up=False)
            if target < floor:
                target, limited = floor, f"scale-down policy allows at least {floor}"
        clamped = min(max(target, min_replicas), max_replicas)
        if clamped != target:
            limited = (f"clamped to minReplicas {min_replicas}" if clamped > target
                       else f"clamped to maxReplicas {max_replicas}")
        if limited:
            reason += f"; {limited}"
        return Decision(clamped, reason, limited)

    def _limit(self, now: float, current: int, rules: Rules, *, up: bool) -> int:
        if rules.select == "Disabled" or not rules.policies:
            return current
        limits = []
        for p in rules.policies:
            changed = sum(c for t, c in self._events
                          if t > now - p.period_seconds and (c > 0) == up)
            start = current - changed
            if p.type == "Pods":
                limits.append(start + p.value if up else start - p.value)
            elif up:
                limits.append(math.ceil(start * (1 + p.value / 100)))
            else:
                limits.append(math.floor(start * (1 - p.value / 100)))
        # "Max" selects the policy allowing the biggest change.
        if up:
            return max(limits) if rules.select == "Max" else min(limits)
        return min(limits) if rules.select == "Max" else max(limits)
