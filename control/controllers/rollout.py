"""Rolling-update arithmetic of the Deployment controller, as Kubernetes does it.

Given the desired replica count, ``maxSurge`` and ``maxUnavailable`` and the current
ReplicaSets, :func:`plan_rolling_update` says how many replicas each ReplicaSet should
have next. Scaling up the new ReplicaSet is bounded by ``replicas + maxSurge`` Pods in
total; scaling down the old ones by keeping at least ``replicas - maxUnavailable``
available, counting the new ReplicaSet's not-yet-available Pods against that budget.
Repeated as Pods become ready, the rollout converges without dropping below the floor.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

# The alphabet Kubernetes uses for generated name suffixes: no vowels, no look-alikes.
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True, slots=True)
class RSState:
    name: str
    replicas: int       # spec.replicas
    available: int      # status.availableReplicas
    created: str = ""   # creationTimestamp, oldest scaled down first


def resolve_int_or_percent(value: int | str | None, total: int, *, round_up: bool,
                           default: int | str) -> int:
    """``"25%"`` of ``total`` (rounded as asked) or an integer as it is."""
    if value is None:
        value = default
    if isinstance(value, bool):
        raise ValueError(f"expected an integer or a percentage, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative: {value}")
        return value
    text = str(value).strip()
    if not text.endswith("%") or not text[:-1].isdigit():
        raise ValueError(f"expected an integer or a percentage like '25%', got {value!r}")
    share = int(text[:-1]) * total / 100
    return math.ceil(share) if round_up else math.floor(share)


def surge_and_unavailable(replicas: int, max_surge: int | str | None,
                          max_unavailable: int | str | None) -> tuple[int, int]:
    surge = resolve_int_or_percent(max_surge, replicas, round_up=True, default="25%")
    unavailable = resolve_int_or_percent(max_unavailable, replicas, round_up=False,
                                         default="25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1  # otherwise no rollout could ever make progress
    return surge, unavailable


def plan_rolling_update(replicas: int, max_surge: int, max_unavailable: int, new: RSState,
                        olds: list[RSState]) -> dict[str, int]:
    """Next replica counts (by ReplicaSet name) for one rolling-update step.

    Only ReplicaSets whose count changes appear in the result.
    """
    plan: dict[str, int] = {}
    total = new.replicas + sum(o.replicas for o in olds)
    # Scale up the new ReplicaSet within the surge allowance.
    if new.replicas > replicas:
        plan[new.name] = replicas
    elif new.replicas < replicas:
        room = replicas + max_surge - total
        if room > 0:
            plan[new.name] = new.replicas + min(room, replicas - new.replicas)
    # Scale down old ReplicaSets without going below the availability floor.
    old_total = sum(o.replicas for o in olds)
    if old_total == 0:
        return plan
    min_available = replicas - max_unavailable
    new_unavailable = max(new.replicas - new.available, 0)
    budget = total - min_available - new_unavailable
    if budget <= 0:
        return plan
    counts = {o.name: o.replicas for o in olds}
    ordered = sorted(olds, key=lambda o: (o.created, o.name))
    # First remove old Pods that are not available anyway: they cost nothing.
    for o in ordered:
        if budget <= 0:
            break
        unhealthy = max(counts[o.name] - o.available, 0)
        cut = min(unhealthy, budget)
        if cut:
            counts[o.name] -= cut
            budget -= cut
    # Then available old Pods, as far as the available total stays above the floor.
    available_total = new.available + sum(min(o.available, counts[o.name]) for o in olds)
    excess = available_total - min_available
    for o in ordered:
        if excess <= 0:
            break
        cut = min(counts[o.name], excess)
        counts[o.name] -= cut
        excess -= cut
    for o in olds:
        if counts[o.name] != o.replicas:
            plan[o.name] = counts[o.name]
    return plan


def template_hash(template: dict[str, Any]) -> str:
    """A short, stable hash of a Pod template (the ``pod-template-hash`` label)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    n = int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")
    out = []
    for _ in range(10):
        n, r = divmod(n, len(_SAFE))
        out.append(_SAFE[r])
    return "".join(out)
