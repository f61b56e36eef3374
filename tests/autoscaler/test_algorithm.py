"""HPA arithmetic as Kubernetes defines it: tolerance, conservative handling of missing
and unready Pods, stabilisation windows and rate policies, on a controllable clock."""

from __future__ import annotations

import pytest

from control.autoscaler.algorithm import (
    Normalizer,
    Policy,
    Rules,
    propose,
)

PODS = [f"p{i}" for i in range(4)]
REQ = dict.fromkeys(PODS, 100.0)  # 100m each


def test_utilisation_scales_to_bring_load_back_to_target() -> None:
    # 4 pods at 90% of requests, target 60%: ceil(4 * 1.5) = 6.
    p = propose(4, dict.fromkeys(PODS, 90.0), target=60, ready=PODS, requests=REQ)
    assert p.replicas == 6
    assert p.current == pytest.approx(90.0)


def test_within_tolerance_nothing_changes() -> None:
    p = propose(4, dict.fromkeys(PODS, 65.0), target=60, ready=PODS, requests=REQ)
    assert p.replicas == 4
    assert "tolerance" in p.reason


def test_average_value_metric() -> None:
    # 3 pods serving 300 req/s each, target 100 per pod -> 9.
    pods = ["a", "b", "c"]
    assert propose(3, dict.fromkeys(pods, 300.0), target=100, ready=pods).replicas == 9


def test_missing_pod_counts_as_zero_when_scaling_up() -> None:
    # 3 of 4 report 120 (ratio 2 vs 60); the silent one counts as 0 -> (360/400)/0.6=1.5.
    samples = {"p0": 120.0, "p1": 120.0, "p2": 120.0}
    p = propose(4, samples, target=60, ready=PODS, requests=REQ)
    assert p.replicas == 6


def test_missing_pod_counts_as_target_when_scaling_down() -> None:
    samples = {"p0": 10.0, "p1": 10.0, "p2": 10.0}   # the fourth is silent
    p = propose(4, samples, target=50, ready=PODS, requests=REQ)
    # (10+10+10+50)/400 = 20% -> ratio 0.4 -> ceil(0.4*4) = 2 (not ceil(0.2*3)=1)
    assert p.replicas == 2


def test_unready_pods_block_a_scale_up_that_they_would_absorb() -> None:
    ready = ["p0", "p1"]
    samples = {"p0": 70.0, "p1": 70.0}
    # Without the unready rule: ratio 70/60=1.17 -> 3. Counting two unready pods at 0:
    # 140/400 = 35% -> ratio 0.58, direction flips -> unchanged.
    p = propose(4, samples, target=60, ready=ready, unready=["p2", "p3"], requests=REQ,
                unready_counts_as_zero=True)
    assert p.replicas == 4


def test_bad_target_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        propose(1, {"a": 1.0}, target=0, ready=["a"])


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    n = Normalizer()  # defaults: down window 300 s
    assert n.decide(0, 10, 10, 1, 20).replicas == 10
    for t in range(15, 300, 15):
        assert n.decide(t, 10, 2, 1, 20).replicas == 10  # the high one is still in window
    d = n.decide(301, 10, 2, 1, 20)
    assert d.replicas == 2


def test_scale_up_rate_is_limited_by_policies() -> None:
    n = Normalizer()  # up: max(100%, 4 pods) per 15 s
    d = n.decide(0, 2, 50, 1, 100)
    assert d.replicas == 6          # 2 + max(2, 4)
    assert "scale-up policy" in d.reason
    n.record_scale(0, 4)
    d = n.decide(5, 6, 50, 1, 100)
    assert d.replicas == 6          # within the same 15 s period: 2 -> limit 6 already
    d = n.decide(16, 6, 50, 1, 100)
    assert d.replicas == 12         # new period from 6: +100%


def test_select_min_and_disabled_policies() -> None:
    n = Normalizer(up=Rules(0, (Policy("Percent", 100, 60), Policy("Pods", 1, 60)), "Min"))
    assert n.decide(0, 4, 40, 1, 100).replicas == 5
    n = Normalizer(down=Rules(0, (Policy("Pods", 1, 60),), "Disabled"))
    assert n.decide(0, 4, 1, 1, 100).replicas == 4


def test_min_and_max_replicas_clamp() -> None:
    n = Normalizer(up=Rules(0, (Policy("Percent", 1000, 15),)))
    d = n.decide(0, 3, 50, 1, 10)
    assert d.replicas == 10
    assert "maxReplicas" in d.reason
    n = Normalizer(down=Rules(0, (Policy("Percent", 100, 15),)))
    assert n.decide(0, 3, 0, 2, 10).replicas == 2
