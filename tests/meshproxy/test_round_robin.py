"""Smooth weighted round robin: weights respected exactly, interleaved, unavailable skipped."""

from __future__ import annotations

from collections import Counter

from meshproxy.balance import PickContext, RoundRobin
from meshproxy.endpoint import Endpoint


def test_smooth_wrr_interleaves_like_nginx() -> None:
    a, b, c = Endpoint("a", 1, 5), Endpoint("b", 1, 1), Endpoint("c", 1, 1)
    rr = RoundRobin([a, b, c])
    seq = [rr.pick(PickContext(now=0.0)).host for _ in range(7)]
    assert seq == ["a", "a", "b", "a", "c", "a", "a"]


def test_weights_are_exact_over_a_cycle_and_unavailable_is_skipped() -> None:
    eps = [Endpoint("a", 1, 3), Endpoint("b", 1, 2), Endpoint("c", 1, 1)]
    eps[2].healthy = False
    rr = RoundRobin(eps)
    counts = Counter(rr.pick(PickContext(now=0.0)).host for _ in range(500))
    assert counts == {"a": 300, "b": 200}


def test_exclude_picks_another_and_all_excluded_falls_back() -> None:
    a, b = Endpoint("a", 1), Endpoint("b", 1)
    rr = RoundRobin([a, b])
    assert all(rr.pick(PickContext(now=0.0), exclude=[a]) is b for _ in range(5))
    assert rr.pick(PickContext(now=0.0), exclude=[a, b]) in (a, b)
    assert RoundRobin([]).pick(PickContext(now=0.0)) is None
