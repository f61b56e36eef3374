"""Adaptive (gradient) concurrency: min-RTT measurement at pinned concurrency, growth near
the min RTT, shrinking under queueing, convergence against a simulated queueing upstream,
periodic re-measurement, shadow mode."""

from __future__ import annotations

import random

import pytest

from meshproxy.resilience.adaptive import AdaptiveConfig, GradientLimit, percentile


def make(clock, events, **cfg) -> GradientLimit:
    c = AdaptiveConfig(**{"min_rtt_requests": 10, "update_interval": 0.1, **cfg})
    return GradientLimit("catalog", c, now=clock(), events=events, rng=random.Random(1))


def feed(g: GradientLimit, clock, rtt: float, n: int, step: float = 0.01) -> None:
    for _ in range(n):
        clock.advance(step)
        g.sample(rtt, clock())


def test_starts_pinned_and_learns_min_rtt(clock, events) -> None:
    g = make(clock, events, min_concurrency=4)
    assert g.measuring_min_rtt
    assert g.limit == 4
    feed(g, clock, 0.010, 10)
    assert not g.measuring_min_rtt
    assert g.min_rtt == pytest.approx(0.010)
    assert "min RTT 10.0 ms" in events.recent(kind="adaptive.min_rtt")[-1].message


def test_limit_grows_while_latency_stays_near_min_rtt_up_to_the_max(clock, events) -> None:
    g = make(clock, events, max_concurrency=200)
    feed(g, clock, 0.010, 10)
    limits = []
    for _ in range(40):
        feed(g, clock, 0.011, 10)         # one update window each
        limits.append(g.limit)
    assert limits == sorted(limits)
    assert limits[-1] == 200


def test_limit_shrinks_when_requests_queue(clock, events) -> None:
    g = make(clock, events, max_concurrency=500, min_concurrency=3)
    feed(g, clock, 0.010, 10)
    for _ in range(30):
        feed(g, clock, 0.010, 10)
    high = g.limit
    for _ in range(30):
        feed(g, clock, 0.100, 10)         # 10x the min RTT: a queue
    assert g.limit < high / 4
    assert events.recent(kind="adaptive.decrease")


def test_converges_near_the_capacity_of_a_queueing_upstream(clock, events) -> None:
    """Simulated upstream serving 20 at once at 10 ms; above that, RTT grows in
    proportion (a queue). The limit settles near (1 + buffer) x 20 + headroom (~30),
    never at the 1000 ceiling nor the floor."""
    g = make(clock, events, max_concurrency=1000)
    capacity, base = 20, 0.010
    feed(g, clock, base, 10)
    seen = []
    for _ in range(300):
        rtt = base * max(1.0, g.limit / capacity)   # saturated demand: in flight = limit
        feed(g, clock, rtt, 10)
        seen.append(g.limit)
    tail = seen[-50:]
    assert min(tail) >= 20
    assert max(tail) <= 40


def test_min_rtt_is_remeasured_after_its_interval(clock, events) -> None:
    g = make(clock, events, min_rtt_interval=5, min_rtt_jitter=0.0)
    feed(g, clock, 0.010, 10)
    feed(g, clock, 0.010, 4, step=1.0)
    assert not g.measuring_min_rtt
    feed(g, clock, 0.010, 2, step=1.0)           # past 5 s: pinned again
    assert g.measuring_min_rtt
    assert g.limit == g.config.min_concurrency
    feed(g, clock, 0.020, 10)
    assert not g.measuring_min_rtt
    assert g.min_rtt == pytest.approx(0.020)


def test_enforce_refuses_and_shadow_counts(clock, events) -> None:
    g = make(clock, events, min_concurrency=2)
    assert g.try_acquire()
    assert g.try_acquire()
    assert not g.try_acquire()
    assert g.statistics().refused_total == 1
    g.release(0.01, clock())
    assert g.try_acquire()

    s = make(clock, events, min_concurrency=2, mode="shadow")
    assert all(s.try_acquire() for _ in range(5))
    assert s.statistics().shadow_refused_total == 3


def test_reconfigure_keeps_learned_state_within_new_bounds(clock, events) -> None:
    g = make(clock, events, max_concurrency=1000)
    feed(g, clock, 0.010, 10)
    for _ in range(20):
        feed(g, clock, 0.010, 10)
    assert g.limit > 50
    assert g.reconfigure(AdaptiveConfig(min_rtt_requests=10, max_concurrency=50))
    assert g.limit == 50
    assert g.min_rtt == pytest.approx(0.010)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([1.0, 2.0], 100) == 2.0
    assert percentile([7.0], 1) == 7.0


def test_config_checks_bounds() -> None:
    with pytest.raises(ValueError, match="exceeds max_concurrency"):
        AdaptiveConfig(min_concurrency=10, max_concurrency=5)
