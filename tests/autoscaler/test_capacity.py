"""The capacity estimate: the highest per-pod rate seen with p99 within the target, times
the current and maximum replicas, headroom against the load now; a lower bound when the
pods were never pushed past the target; and a plain refusal with too little data or
when no loaded sample met the target."""

from __future__ import annotations

import pytest

from control.autoscaler.capacity import Observation, estimate, render


def obs(rps: float, p99: float | None, requests: int = 600, pod: str = "web-0") -> Observation:
    return Observation(pod, 0.0, rps, p99, requests)


def test_capacity_from_the_best_rate_within_the_latency_target() -> None:
    """Rates up to 40/s met a 250 ms p99, from 55/s they did not: 40/s per replica, 80/s
    with 2 replicas, 400/s with 10; 50/s now leaves 30/s (38%)."""
    samples = [obs(r, 0.05) for r in (10, 20, 30, 35, 40)] + \
              [obs(r, 0.4) for r in (55, 60, 70, 80, 90)] + \
              [obs(500, 0.01, requests=10)]           # too few requests to count
    report = estimate(samples, latency_target=0.25, current_replicas=2, max_replicas=10,
                      current_rps=50.0)
    assert report.reason is None
    assert report.loaded == 10
    assert report.per_replica_rps == 40
    assert not report.lower_bound
    assert report.saturated_at_rps == 55
    assert report.capacity_now == 80
    assert report.capacity_max == 400
    assert report.headroom_rps == 30
    assert report.headroom_share == pytest.approx(0.375)
    text = render(report, service="default/web", target_source="autoscaler web",
                  replicas_source="deployment web, autoscaler web")
    assert "Per replica:      40.0 requests/s with p99 <= 250 ms" in text
    assert "Capacity at max:  400.0 requests/s (10 x 40.0)" in text
    assert "Headroom now:     30.0 requests/s (38% of capacity)" in text


def test_never_saturated_is_reported_as_a_lower_bound() -> None:
    samples = [obs(r, 0.02) for r in range(10, 22)]
    report = estimate(samples, latency_target=0.25, current_replicas=3, max_replicas=3,
                      current_rps=30.0)
    assert report.per_replica_rps == 21
    assert report.lower_bound
    text = render(report, service="default/web", target_source="x", replicas_source="y")
    assert "Capacity now:     at least 63.0 requests/s" in text
    assert "capacity may be higher" in text


def test_too_little_data_is_said_plainly() -> None:
    """Fewer than 10 loaded samples: no numbers, a reason with the counts."""
    samples = [obs(5, 0.02) for _ in range(4)] + [obs(1, 0.02, requests=3) for _ in range(20)]
    report = estimate(samples, latency_target=0.25, current_replicas=2, max_replicas=4,
                      current_rps=2.0)
    assert report.per_replica_rps is None
    assert report.capacity_now is None
    assert report.reason is not None
    assert report.reason.startswith("too little data: 4 of 24 samples were under load")
    assert "Estimate:         none: too little data" in render(
        report, service="default/web", target_source="x", replicas_source="y")


def test_no_loaded_sample_within_the_target_gives_no_estimate() -> None:
    samples = [obs(r, 0.9) for r in range(20, 32)]
    report = estimate(samples, latency_target=0.25, current_replicas=2, max_replicas=4,
                      current_rps=60.0)
    assert report.per_replica_rps is None
    assert report.reason is not None
    assert "p99 exceeded the target of 250 ms in every one of the 12 loaded samples " \
           "(from 20.0 requests/s per pod up)" in report.reason


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="latency target must be positive"):
        estimate([], latency_target=0, current_replicas=1, max_replicas=1, current_rps=0)
    with pytest.raises(ValueError, match="0 <= current <= max"):
        estimate([], latency_target=1, current_replicas=3, max_replicas=2, current_rps=0)
