"""Rolling-update arithmetic: surge and availability bounds hold at every step, and the
rollout converges; deletion order prefers the cheapest Pods to lose."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.controllers.podutil import deletion_rank, is_available
from control.controllers.rollout import (
    RSState,
    plan_rolling_update,
    resolve_int_or_percent,
    surge_and_unavailable,
    template_hash,
)


def test_percentages_round_as_kubernetes_does() -> None:
    assert surge_and_unavailable(10, "25%", "25%") == (3, 2)   # surge up, unavailable down
    assert surge_and_unavailable(1, None, None) == (1, 0)
    assert surge_and_unavailable(3, 0, 0) == (0, 1)            # never a stuck rollout
    with pytest.raises(ValueError, match="percentage"):
        resolve_int_or_percent("12.5%", 10, round_up=True, default=0)


def test_first_step_surges_and_keeps_floor() -> None:
    plan = plan_rolling_update(10, 3, 2, RSState("new", 0, 0), [RSState("old", 10, 10)])
    # 13 Pods at most: the new set gets 3; 2 old may go while 8 stay available.
    assert plan == {"new": 3, "old": 8}


def test_unavailable_new_pods_block_further_scale_down() -> None:
    plan = plan_rolling_update(10, 3, 2, RSState("new", 5, 0), [RSState("old", 8, 8)])
    assert "old" not in plan          # 8 available is exactly the floor
    assert "new" not in plan          # 13 Pods already: no more surge


def test_unavailable_old_pods_are_removed_first() -> None:
    plan = plan_rolling_update(4, 0, 1, RSState("new", 1, 1),
                               [RSState("a", 2, 0, "2020"), RSState("b", 2, 2, "2021")])
    assert plan["a"] == 0


def _simulate(replicas: int, surge_v, unavail_v, n_old: int) -> None:
    surge, unavailable = surge_and_unavailable(replicas, surge_v, unavail_v)
    floor = replicas - unavailable
    sizes = [replicas // n_old + (1 if i < replicas % n_old else 0) for i in range(n_old)]
    olds = {f"old{i}": [s, s] for i, s in enumerate(sizes)}   # name -> [replicas, available]
    new = [0, 0]
    for _ in range(4 * replicas + 10):
        if new == [replicas, replicas] and all(v[0] == 0 for v in olds.values()):
            return
        plan = plan_rolling_update(
            replicas, surge, unavailable, RSState("new", *new),
            [RSState(n, r, a, n) for n, (r, a) in olds.items()])
        assert plan, "no progress although the rollout is not done"
        for name, target in plan.items():
            if name == "new":
                new[0] = target
                new[1] = min(new[1], target)
            else:
                olds[name][0] = target
                olds[name][1] = min(olds[name][1], target)
        total = new[0] + sum(v[0] for v in olds.values())
        available = new[1] + sum(v[1] for v in olds.values())
        assert total <= replicas + surge
        assert available >= min(floor, replicas)
        new[1] = new[0]  # the new Pods become ready before the next step
    raise AssertionError("rollout did not converge")


@given(replicas=st.integers(1, 30),
       surge=st.one_of(st.integers(0, 5), st.sampled_from(["0%", "10%", "25%", "50%", "100%"])),
       unavailable=st.one_of(st.integers(0, 5), st.sampled_from(["0%", "25%", "50%"])),
       n_old=st.integers(1, 3))
def test_rollout_respects_bounds_and_converges(replicas, surge, unavailable, n_old) -> None:
    if n_old > replicas:
        n_old = replicas
    _simulate(replicas, surge, unavailable, n_old)


def test_template_hash_is_stable_and_sensitive() -> None:
    t = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "a:1"}]}}
    same = {"spec": {"containers": [{"image": "a:1"}]}, "metadata": {"labels": {"app": "web"}}}
    changed = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "a:2"}]}}
    assert template_hash(t) == template_hash(same)
    assert template_hash(t) != template_hash(changed)
    assert len(template_hash(t)) == 10
    assert set(template_hash(t)) <= set("bcdfghjklmnpqrstvwxz2456789")


def _pod(name, *, node=None, phase="Running", ready=None, created="2024-01-01T00:00:00Z",
         restarts=0):
    conds = [] if ready is None else [{"type": "Ready", "status": "True",
                                       "lastTransitionTime": ready}]
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": conds,
                       "containerStatuses": [{"restartCount": restarts}]}}


def test_scale_down_deletes_cheapest_pods_first() -> None:
    pods = [
        _pod("ready-old", node="n", ready="2024-01-01T00:00:00Z"),
        _pod("ready-new", node="n", ready="2024-01-02T00:00:00Z"),
        _pod("running-not-ready", node="n"),
        _pod("pending", node="n", phase="Pending"),
        _pod("unscheduled", phase="Pending"),
        _pod("crashy", node="n", restarts=5),
    ]
    order = [p["metadata"]["name"] for p in sorted(pods, key=deletion_rank)]
    assert order == ["unscheduled", "pending", "crashy", "running-not-ready", "ready-new",
                     "ready-old"]


def test_available_needs_min_ready_seconds() -> None:
    now = datetime(2024, 1, 1, 0, 1, tzinfo=UTC)
    pod = _pod("p", node="n", ready=(now - timedelta(seconds=30)).isoformat())
    assert is_available(pod, 0, now)
    assert is_available(pod, 30, now)
    assert not is_available(pod, 31, now)
