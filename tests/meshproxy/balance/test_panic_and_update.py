"""Every policy: panic threshold, exclusion, and updates in place of the endpoint set."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.balance import LoadBalancerConfig, PickContext, make_balancer
from meshproxy.balance.config import POLICIES, HashOn, MaglevSettings
from meshproxy.endpoint import Endpoint

from .sim import FakeClock


def build(policy: str, eps: list[Endpoint], *, panic_percent: float = 50.0):
    hash_on = HashOn(source="header", name="x-user") \
        if policy in ("ring_hash", "maglev") else None
    cfg = LoadBalancerConfig(policy=policy, panic_threshold_percent=panic_percent,
                             hash_on=hash_on, maglev=MaglevSettings(table_size=1009))
    return make_balancer(cfg, eps, rng=random.Random(11), clock=FakeClock())


def ctx(i: int) -> PickContext:
    return PickContext(now=100.0, hash_key=f"k{i}".encode())


@pytest.mark.parametrize("policy", POLICIES)
def test_above_threshold_unavailable_endpoints_are_never_picked(policy: str) -> None:
    """6 of 10 available (60% >= 50%): unhealthy and ejected endpoints get nothing and
    the panic counter stays at zero."""
    eps = [Endpoint(f"h{i}", 80) for i in range(10)]
    for e in eps[:2]:
        e.healthy = False
    for e in eps[2:4]:
        e.ejected_until = 200.0  # outlier detection, still ejected at now=100
    lb = build(policy, eps)
    picked = Counter(lb.pick(ctx(i)).host for i in range(2_000))
    assert set(picked) == {f"h{i}" for i in range(4, 10)}
    assert lb.panic_total == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_below_threshold_balances_across_all_and_counts_each_pick(policy: str) -> None:
    """4 of 10 available (40% < 50%): panic spreads load over all ten endpoints (Envoy's
    behaviour) and every pick made in panic is counted."""
    eps = [Endpoint(f"h{i}", 80) for i in range(10)]
    for e in eps[:6]:
        e.healthy = False
    lb = build(policy, eps)
    picked = Counter(lb.pick(ctx(i)).host for i in range(2_000))
    assert len(picked) == 10
    assert sum(picked[f"h{i}"] for i in range(6)) > 800  # the unhealthy six got ~60%
    assert lb.panic_total == 2_000


@pytest.mark.parametrize("policy", POLICIES)
def test_panic_disabled_with_nothing_available_returns_none(policy: str) -> None:
    """Threshold 0 turns panic off: with every endpoint down there is no pick (the
    engine answers 503) and nothing is counted."""
    eps = [Endpoint(f"h{i}", 80) for i in range(3)]
    for e in eps:
        e.healthy = False
    lb = build(policy, eps, panic_percent=0.0)
    assert lb.pick(ctx(1)) is None
    assert lb.panic_total == 0
    eps[1].healthy = True
    assert lb.pick(ctx(1)) is eps[1]


@pytest.mark.parametrize("policy", POLICIES)
def test_exclude_avoids_tried_endpoints_then_falls_back_to_them(policy: str) -> None:
    """A retry excluding tried endpoints gets an untried available one; when all
    available ones were tried it gets one of those, never an unhealthy one."""
    eps = [Endpoint(f"h{i}", 80) for i in range(4)]
    eps[3].healthy = False
    lb = build(policy, eps)
    for i in range(200):
        assert lb.pick(ctx(i), exclude=[eps[0], eps[1]]) is eps[2]
    for i in range(200):
        assert lb.pick(ctx(i), exclude=eps[:3]) in eps[:3]


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_cluster_picks_nothing(policy: str) -> None:
    lb = build(policy, [])
    assert lb.pick(ctx(0)) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_update_refuses_bad_endpoint_sets_and_keeps_the_old_one(policy: str) -> None:
    """A duplicate address or a zero weight is refused with the address named, and the
    balancer keeps serving the previous set."""
    a, b = Endpoint("a", 1), Endpoint("b", 1)
    lb = build(policy, [a, b])
    with pytest.raises(ValueError, match="b:1 appears twice"):
        lb.update([a, b, Endpoint("b", 1)])
    with pytest.raises(ValueError, match="weight must be >= 1"):
        lb.update([a, Endpoint("c", 1, 0)])
    assert {lb.pick(ctx(i)).host for i in range(200)} == {"a", "b"}


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=25, deadline=None)
@given(steps=st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.sets(st.integers(0, 7), max_size=8)),
        st.tuples(st.just("health"), st.integers(0, 7)),
        st.tuples(st.just("pick"), st.sets(st.integers(0, 7), max_size=3)),
    ), min_size=1, max_size=40))
def test_any_sequence_of_updates_health_flips_and_picks_stays_consistent(
        policy: str, steps: list) -> None:
    """Property: whatever the order of endpoint-set updates, health flips and picks
    (with exclusions), a pick is a member of the current set, available whenever the
    set is out of panic, and untried whenever an untried available one exists. This is
    "no request fails because the set changed under it"."""
    pool = [Endpoint(f"h{i}", 80, weight=1 + i % 3) for i in range(8)]
    current = pool[:4]
    lb = build(policy, current)
    n = 0
    for op, arg in steps:
        if op == "update":
            current = [pool[i] for i in sorted(arg)]
            lb.update(current)
        elif op == "health":
            pool[arg].healthy = not pool[arg].healthy
        else:
            n += 1
            excluded = [pool[i] for i in arg]
            got = lb.pick(ctx(n), exclude=excluded)
            available = [e for e in current if e.healthy]
            if not current:
                assert got is None
                continue
            assert got in current
            if len(available) >= 0.5 * len(current):
                assert got.healthy
                if any(e not in excluded for e in available):
                    assert got not in excluded
            lb.observe(got, 0.01, True)


def test_pool_reports_panic_without_counting_and_validates_threshold() -> None:
    """``in_panic`` lets the engine export a panic gauge without inflating the counter;
    a threshold outside [0, 1] is refused with the value named."""
    from meshproxy.balance import EndpointPool

    eps = [Endpoint(f"h{i}", 80) for i in range(4)]
    pool = EndpointPool(eps, panic_threshold=0.5)
    assert not pool.in_panic(0.0)
    eps[0].healthy = eps[1].healthy = False
    assert not pool.in_panic(0.0)  # 2 of 4 is exactly the threshold: not below it
    eps[2].ejected_until = 10.0
    assert pool.in_panic(0.0)
    assert not pool.in_panic(10.0)  # the ejection has run out by then
    assert pool.panic_total == 0
    with pytest.raises(ValueError, match=r"between 0 and 1, got 1\.5"):
        EndpointPool(eps, panic_threshold=1.5)
