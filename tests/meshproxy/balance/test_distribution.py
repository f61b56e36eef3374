"""Each policy spreads picks the way it promises, over thousands of seeded picks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshproxy.balance import (
    LeastRequest,
    PickContext,
    Random,
    RoundRobin,
    WeightedRandom,
    make_balancer,
)
from meshproxy.endpoint import Endpoint

from .sim import FakeClock, simulate

NOW = PickContext(now=0.0)


def shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def test_random_is_uniform_and_ignores_weights() -> None:
    """'random' gives each candidate the same share whatever the weights (seed's policy)."""
    eps = [Endpoint("a", 1, 5), Endpoint("b", 1, 1), Endpoint("c", 1, 1), Endpoint("d", 1, 1)]
    lb = Random(eps, rng=random.Random(1))
    got = shares(Counter(lb.pick(NOW).host for _ in range(20_000)))
    for host in "abcd":
        assert got[host] == pytest.approx(0.25, abs=0.02)


def test_weighted_random_follows_weights() -> None:
    """'weighted_random' picks each endpoint in proportion to its weight."""
    eps = [Endpoint("a", 1, 6), Endpoint("b", 1, 3), Endpoint("c", 1, 1)]
    lb = WeightedRandom(eps, rng=random.Random(2))
    got = shares(Counter(lb.pick(NOW).host for _ in range(20_000)))
    assert got["a"] == pytest.approx(0.6, abs=0.02)
    assert got["b"] == pytest.approx(0.3, abs=0.02)
    assert got["c"] == pytest.approx(0.1, abs=0.02)


def test_weighted_random_sees_a_weight_changed_by_update() -> None:
    """An update that only changes a weight takes effect (the cached table is refreshed)."""
    a, b = Endpoint("a", 1, 1), Endpoint("b", 1, 1)
    lb = WeightedRandom([a, b], rng=random.Random(3))
    Counter(lb.pick(NOW).host for _ in range(100))
    a.weight = 9
    lb.update([a, b])
    got = shares(Counter(lb.pick(NOW).host for _ in range(20_000)))
    assert got["a"] == pytest.approx(0.9, abs=0.02)


def test_weighted_random_skips_unhealthy_and_keeps_weights_among_the_rest() -> None:
    """With one endpoint down, the others keep their relative weights."""
    eps = [Endpoint("a", 1, 2), Endpoint("b", 1, 1), Endpoint("c", 1, 5)]
    eps[2].healthy = False
    lb = WeightedRandom(eps, rng=random.Random(4))
    got = shares(Counter(lb.pick(NOW).host for _ in range(15_000)))
    assert set(got) == {"a", "b"}
    assert got["a"] == pytest.approx(2 / 3, abs=0.02)


def test_least_request_without_load_is_exact_weighted_round_robin() -> None:
    """Differing weights and no requests in flight: Envoy's schedule is plain WRR."""
    eps = [Endpoint("a", 1, 3), Endpoint("b", 1, 2), Endpoint("c", 1, 1)]
    lb = LeastRequest(eps, rng=random.Random(5))
    assert Counter(lb.pick(NOW).host for _ in range(600)) == {"a": 300, "b": 200, "c": 100}


def test_least_request_equal_weights_no_load_is_uniform() -> None:
    """Equal weights, all idle: two random choices tie, so picks are uniform."""
    eps = [Endpoint(h, 1) for h in "abcde"]
    lb = LeastRequest(eps, rng=random.Random(6))
    got = shares(Counter(lb.pick(NOW).host for _ in range(20_000)))
    for host in "abcde":
        assert got[host] == pytest.approx(0.2, abs=0.02)


def test_least_request_p2c_avoids_the_endpoint_with_most_in_flight() -> None:
    """P2C never picks the most loaded endpoint: it always loses its comparison."""
    eps = [Endpoint(h, 1) for h in "abcd"]
    eps[0].active_requests = 10
    lb = LeastRequest(eps, rng=random.Random(7))
    got = Counter(lb.pick(NOW).host for _ in range(5_000))
    assert got["a"] == 0
    assert set(got) == {"b", "c", "d"}


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
def test_latency_aware_policies_send_less_to_a_slowed_endpoint(policy: str) -> None:
    """One of four endpoints answers 10x slower: least request and peak EWMA give it
    measurably less than its fair quarter, while round robin (the control) cannot."""
    def run(name: str) -> dict[str, float]:
        eps = [Endpoint(h, 1) for h in "abcd"]
        clock = FakeClock()
        lb = make_balancer(name, eps, rng=random.Random(8), clock=clock)
        counts = simulate(lb, clock, requests=4_000, rate=100.0,
                          latency=lambda e: 0.200 if e.host == "a" else 0.020)
        return shares(counts)

    control = run("round_robin")
    assert control["a"] == pytest.approx(0.25, abs=0.01)
    got = run(policy)
    assert got["a"] < 0.10  # measured: least_request ~0.07, peak_ewma ~0.001
    for host in "bcd":
        assert got[host] > 0.28


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
def test_latency_aware_policies_give_heavier_endpoints_more_under_load(policy: str) -> None:
    """Weights still count under load: weight 3 carries clearly more than weight 1."""
    eps = [Endpoint("a", 1, 3), Endpoint("b", 1, 1)]
    clock = FakeClock()
    lb = make_balancer(policy, eps, rng=random.Random(9), clock=clock)
    got = shares(simulate(lb, clock, requests=4_000, rate=100.0, latency=lambda e: 0.050))
    assert got["a"] > 0.6


def test_round_robin_weights_exact_under_panic_free_health_changes() -> None:
    """Smooth WRR stays exact per cycle after an endpoint comes back."""
    eps = [Endpoint("a", 1, 2), Endpoint("b", 1, 1), Endpoint("c", 1, 1)]
    lb = RoundRobin(eps)
    eps[2].healthy = False
    assert Counter(lb.pick(NOW).host for _ in range(300)) == {"a": 200, "b": 100}
    eps[2].healthy = True
    assert Counter(lb.pick(NOW).host for _ in range(400)) == {"a": 200, "b": 100, "c": 100}
