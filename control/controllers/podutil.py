"""Facts about Pods the controllers share: active, terminating, ready, available, deletion
order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

Obj = dict[str, Any]


def condition(obj: Obj, type_: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


def is_ready(pod: Obj) -> bool:
    c = condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def is_available(pod: Obj, min_ready_seconds: int, now: datetime) -> bool:
    """Ready for at least ``min_ready_seconds`` (Kubernetes' definition of available)."""
    c = condition(pod, "Ready")
    if c is None or c.get("status") != "True":
        return False
    if min_ready_seconds <= 0:
        return True
    since = parse_time(c.get("lastTransitionTime"))
    return since is not None and (now - since).total_seconds() >= min_ready_seconds


def is_finished(pod: Obj) -> bool:
    """Its containers have all ended for good (phase Succeeded or Failed)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_terminating(pod: Obj) -> bool:
    """Marked for deletion (graceful): still there, and maybe still running, until its
    node's agent has stopped it and deletes it for good."""
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def is_draining(pod: Obj) -> bool:
    """Terminating but not finished: what ``status.terminatingReplicas`` counts
    (Kubernetes' definition: a deletionTimestamp, phase neither Succeeded nor Failed)."""
    return is_terminating(pod) and not is_finished(pod)


def is_active(pod: Obj) -> bool:
    """Counts towards replicas: not finished and not being deleted (a Terminating Pod is
    replaced at once, as Kubernetes' controllers do, and never deleted again)."""
    return not is_finished(pod) and not is_terminating(pod)


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_rank(pod: Obj) -> tuple:
    """Sort key: pods to delete first sort first when scaling down.

    The ReplicaSet controller's order: unscheduled before scheduled, pending before
    unknown before running, not ready before ready, ready for less time before longer,
    more restarts before fewer, newer before older.
    """
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    ready = condition(pod, "Ready")
    ready_since = (ready or {}).get("lastTransitionTime") or ""
    restarts = sum(int(cs.get("restartCount", 0)) for cs in status.get("containerStatuses")
                   or ())
    created = meta.get("creationTimestamp") or ""
    return (
        1 if spec.get("nodeName") else 0,
        _PHASE_RANK.get(status.get("phase", "Pending"), 0),
        1 if is_ready(pod) else 0,
        _Reverse(ready_since) if is_ready(pod) else _Reverse(""),
        -restarts,
        _Reverse(created),
    )


class _Reverse:
    """Wraps a string so that larger values sort first."""

    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v

    def __lt__(self, other: _Reverse) -> bool:
        return self.v > other.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.v == other.v

    def __hash__(self) -> int:
        return hash(self.v)
