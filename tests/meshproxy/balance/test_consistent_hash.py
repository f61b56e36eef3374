"""Ring hash and Maglev: stable keys, ~1/N movement on membership change, weights."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.balance import Maglev, PickContext, RingHash
from meshproxy.endpoint import Endpoint

KEYS = [f"user-{i}".encode() for i in range(10_000)]
# A smaller prime table keeps Maglev's Python table build fast in the many-build tests;
# 10007 is still > 100x the endpoints used here, as Maglev's paper asks.
BUILDERS = {
    "ring_hash": lambda eps: RingHash(eps, rng=random.Random(0)),
    "maglev": lambda eps: Maglev(eps, table_size=10007, rng=random.Random(0)),
}


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}", 8080) for i in range(n)]


def assignment(lb, keys=KEYS) -> dict[bytes, str]:
    return {k: lb.pick(PickContext(now=0.0, hash_key=k)).host for k in keys}


@pytest.mark.parametrize("kind", BUILDERS)
def test_same_key_same_endpoint_across_instances(kind: str) -> None:
    """A key maps to the same endpoint on every pick and in every balancer instance
    (every worker and every sidecar agrees: the hash is not per-process salted)."""
    first = assignment(BUILDERS[kind](endpoints(8)))
    again = assignment(BUILDERS[kind](endpoints(8)))
    assert first == again
    assert len(set(first.values())) == 8


@pytest.mark.parametrize("kind", BUILDERS)
def test_removing_one_of_ten_moves_about_a_tenth_of_keys(kind: str) -> None:
    """Removing one endpoint moves its keys and (almost) no others: ~1/N in all."""
    eps = endpoints(10)
    lb = BUILDERS[kind](eps)
    before = assignment(lb)
    gone = eps[3]
    lb.update([e for e in eps if e is not gone])
    after = assignment(lb)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] != gone.host for k in KEYS)
    assert all(k in moved for k in KEYS if before[k] == gone.host)
    assert 0.06 < len(moved) / len(KEYS) < 0.14  # 1/10, with hashing noise
    if kind == "ring_hash":
        # On a ring, only the removed endpoint's keys move, none other.
        assert all(before[k] == gone.host for k in moved)


@pytest.mark.parametrize("kind", BUILDERS)
def test_adding_an_eleventh_moves_about_an_eleventh(kind: str) -> None:
    """Adding one endpoint to ten takes ~1/11 of the keys, all of them to the new one
    on a ring (Maglev may shuffle a few more)."""
    eps = endpoints(11)
    lb = BUILDERS[kind](eps[:10])
    before = assignment(lb)
    lb.update(eps)
    after = assignment(lb)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.05 < len(moved) / len(KEYS) < 0.14
    to_new = sum(1 for k in moved if after[k] == eps[10].host)
    if kind == "ring_hash":
        assert to_new == len(moved)
    else:
        assert to_new > 0.9 * len(moved)


@pytest.mark.parametrize("kind", BUILDERS)
def test_unhealthy_endpoint_keys_spread_over_others_and_come_back(kind: str) -> None:
    """An endpoint failing its health checks loses exactly its own keys, which spread
    over several others; when it recovers, every key is back where it was."""
    eps = endpoints(6)
    lb = BUILDERS[kind](eps)
    before = assignment(lb)
    eps[2].healthy = False
    during = assignment(lb)
    moved = {k for k in KEYS if before[k] != during[k]}
    assert moved == {k for k in KEYS if before[k] == eps[2].host}
    assert len({during[k] for k in moved}) >= 3
    eps[2].healthy = True
    assert assignment(lb) == before


@pytest.mark.parametrize("kind", BUILDERS)
def test_weights_set_the_share_of_keys(kind: str) -> None:
    """An endpoint of weight 3 owns about three times the keys of a weight-1 one."""
    eps = [Endpoint("heavy", 1, 3), Endpoint("b", 1, 1), Endpoint("c", 1, 1)]
    got = Counter(assignment(BUILDERS[kind](eps)).values())
    assert got["heavy"] / len(KEYS) == pytest.approx(0.6, abs=0.05)
    assert got["b"] / len(KEYS) == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize("kind", BUILDERS)
def test_retry_excluding_the_owner_goes_to_a_fixed_other(kind: str) -> None:
    """A retry of the same key that excludes its endpoint goes to another one, the same
    other one each time (still consistent)."""
    eps = endpoints(5)
    lb = BUILDERS[kind](eps)
    key = PickContext(now=0.0, hash_key=b"session-42")
    owner = lb.pick(key)
    second = {lb.pick(key, exclude=[owner]) for _ in range(20)}
    assert len(second) == 1
    assert owner not in second


@pytest.mark.parametrize("kind", BUILDERS)
def test_request_without_key_gets_a_random_endpoint(kind: str) -> None:
    """No hash key (header or cookie missing): Envoy's random pick, not one hot endpoint."""
    lb = BUILDERS[kind](endpoints(4))
    got = Counter(lb.pick(PickContext(now=0.0)).host for _ in range(4_000))
    assert len(got) == 4
    assert min(got.values()) > 800


@pytest.mark.parametrize("kind", BUILDERS)
def test_update_with_same_addresses_keeps_assignment_and_uses_new_objects(kind: str) -> None:
    """A discovery update that sends fresh objects for the same addresses changes no key
    and the balancer hands out the new objects (whose health the engine now sets)."""
    lb = BUILDERS[kind](endpoints(5))
    before = assignment(lb, KEYS[:500])
    fresh = endpoints(5)
    lb.update(fresh)
    picked = {lb.pick(PickContext(now=0.0, hash_key=k)) for k in KEYS[:500]}
    assert picked <= set(fresh)
    assert assignment(lb, KEYS[:500]) == before


def test_maglev_refuses_a_table_size_that_is_not_prime() -> None:
    with pytest.raises(ValueError, match="prime"):
        Maglev(endpoints(2), table_size=10000)


@pytest.mark.parametrize("kind", BUILDERS)
@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=30),
       down=st.sets(st.integers(0, 6), max_size=3))
def test_hashing_is_deterministic_and_never_picks_a_down_endpoint(
        kind: str, keys: list[bytes], down: set[int]) -> None:
    """Property: for any keys and any minority of endpoints down, a pick is a pure
    function of the key and never an unavailable endpoint (no panic at <= 3 of 7)."""
    eps = endpoints(7)
    for i in down:
        eps[i].healthy = False
    lb = BUILDERS[kind](eps)
    for k in keys:
        a = lb.pick(PickContext(now=0.0, hash_key=k))
        assert a is lb.pick(PickContext(now=0.0, hash_key=k))
        assert a.healthy
