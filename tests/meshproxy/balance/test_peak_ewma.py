"""Peak EWMA: peak sensitivity, decay with time, priors for new and failing endpoints."""

from __future__ import annotations

import math
import random

import pytest

from meshproxy.balance import PeakEwma, PickContext
from meshproxy.endpoint import Endpoint

from .sim import FakeClock


def make(eps: list[Endpoint], clock: FakeClock, **kw) -> PeakEwma:
    return PeakEwma(eps, clock=clock, rng=random.Random(3), **kw)


def test_a_slow_answer_raises_the_estimate_at_once() -> None:
    """Above the estimate, one observation replaces it (the peak), no averaging."""
    a = Endpoint("a", 1)
    clock = FakeClock()
    lb = make([a], clock)
    assert lb.estimate(a) == pytest.approx(0.030)  # the new-endpoint prior
    lb.observe(a, 0.500, True)
    assert lb.estimate(a) == pytest.approx(0.500)


def test_fast_answers_blend_in_by_elapsed_time() -> None:
    """Below the estimate, a sample is blended with weight 1 - exp(-elapsed/decay)."""
    a = Endpoint("a", 1)
    clock = FakeClock()
    lb = make([a], clock, decay_s=10.0)
    lb.observe(a, 0.400, True)
    clock.now += 5.0
    lb.observe(a, 0.100, True)
    w = math.exp(-0.5)
    assert lb.estimate(a) == pytest.approx(0.400 * w + 0.100 * (1 - w))


def test_estimate_decays_towards_zero_without_traffic() -> None:
    """An avoided endpoint's estimate decays so that it is eventually tried again."""
    a = Endpoint("a", 1)
    clock = FakeClock()
    lb = make([a], clock, decay_s=10.0)
    lb.observe(a, 1.0, True)
    clock.now += 20.0
    assert lb.estimate(a) == pytest.approx(math.exp(-2.0))


def test_cost_multiplies_latency_by_queue_and_divides_by_weight() -> None:
    a, b = Endpoint("a", 1, weight=2), Endpoint("b", 1)
    clock = FakeClock()
    lb = make([a, b], clock)
    a.active_requests = 3
    assert lb.cost(a) == pytest.approx(0.030 * 4 / 2)
    assert lb.cost(b) == pytest.approx(0.030)


def test_failure_counts_as_the_penalty_so_a_dead_fast_endpoint_is_avoided() -> None:
    """A connection refused in 1 ms must not look like the fastest endpoint: it counts
    as the failure penalty, and picks go to the working one until it decays."""
    dead, good = Endpoint("dead", 1), Endpoint("good", 1)
    clock = FakeClock()
    lb = make([dead, good], clock, failure_penalty_s=1.0)
    lb.observe(good, 0.050, True)
    lb.observe(dead, 0.001, False)
    assert lb.estimate(dead) == pytest.approx(1.0)
    assert all(lb.pick(PickContext(now=clock.now)) is good for _ in range(200))
    clock.now += 60.0  # 1 s * e^-6 ~ 2.5 ms, below good's decayed 50 ms estimate
    lb.observe(good, 0.050, True)
    assert lb.pick(PickContext(now=clock.now)) is dead


def test_new_endpoint_starts_at_the_default_rtt_not_zero() -> None:
    """A new endpoint is not flooded: it competes at the prior, not at zero cost."""
    old = Endpoint("old", 1)
    clock = FakeClock()
    lb = make([old], clock, default_rtt_s=0.030)
    clock.now += 5.0
    lb.observe(old, 0.020, True)
    new = Endpoint("new", 1)
    lb.update([old, new])
    assert lb.estimate(new) == pytest.approx(0.030)
    assert lb.estimate(old) < 0.030
    assert lb.pick(PickContext(now=clock.now)) is old


def test_estimates_survive_an_update_and_late_observations_are_ignored() -> None:
    """Learned latency is kept across endpoint updates; an attempt that finishes after
    its endpoint was removed is dropped without error."""
    a, b = Endpoint("a", 1), Endpoint("b", 1)
    clock = FakeClock()
    lb = make([a, b], clock)
    lb.observe(a, 0.700, True)
    lb.update([a])
    lb.update([a, b])
    assert lb.estimate(a) == pytest.approx(0.700)
    lb.update([a])
    lb.observe(b, 5.0, False)  # b is gone: no effect, no error
    lb.update([a, b])
    assert lb.estimate(b) == pytest.approx(0.030)


def test_bad_settings_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="decay_s"):
        PeakEwma([], decay_s=0)
    with pytest.raises(ValueError, match="failure_penalty_s"):
        PeakEwma([], failure_penalty_s=-1)
    lb = PeakEwma([a := Endpoint("a", 1)])
    with pytest.raises(ValueError, match="latency"):
        lb.observe(a, -0.1, True)
