"""Node lifecycle decisions on a controllable clock: NotReady after the grace period,
eviction after the timeout and rate-limited, no eviction in a mass outage."""

from __future__ import annotations

import itertools

from control.controllers.nodehealth import NodeHealth, NodeHealthConfig

CFG = NodeHealthConfig(grace_period=40, eviction_timeout=300, eviction_rate=0.1)


def cluster(n: int, cfg: NodeHealthConfig = CFG) -> NodeHealth:
    h = NodeHealth(cfg)
    for i in range(n):
        h.heartbeat(f"n{i}", 0.0)
    return h


def test_silent_node_goes_not_ready_then_evicted_once() -> None:
    h = cluster(5)
    t = 0.0
    decisions = []
    while t <= 400:
        for i in range(1, 5):
            h.heartbeat(f"n{i}", t)
        decisions.append((t, h.evaluate(t)))
        t += 10
    not_ready = [t for t, d in decisions if "n0" in d.mark_not_ready]
    evicted = [t for t, d in decisions if "n0" in d.evict]
    assert not_ready == [50.0]          # first evaluation past 40 s of silence
    assert evicted == [350.0]           # 300 s after NotReady, and only once


def test_recovered_node_is_marked_ready_and_not_evicted() -> None:
    h = cluster(3)
    h.heartbeat("n1", 100)
    h.heartbeat("n2", 100)
    assert h.evaluate(100).mark_not_ready == ["n0"]
    h.heartbeat("n0", 150)
    d = h.evaluate(150)
    assert d.mark_ready == ["n0"]
    assert h.evaluate(1000).evict == []  # all silent now -> full disruption, no eviction


def test_eviction_is_rate_limited() -> None:
    h = cluster(20)
    # Three nodes die at once; the other 17 keep beating.
    evictions: list[tuple[float, str]] = []
    for step in range(0, 700):
        t = float(step)
        for i in range(3, 20):
            h.heartbeat(f"n{i}", t)
        evictions += [(t, n) for n in h.evaluate(t).evict]
    times = [t for t, _ in evictions]
    assert sorted(n for _, n in evictions) == ["n0", "n1", "n2"]
    # 0.1 nodes/s: at least 10 s between evictions.
    assert all(b - a >= 10 for a, b in itertools.pairwise(times))


def test_mass_outage_stops_eviction() -> None:
    h = cluster(10)
    for step in range(0, 1000, 5):
        t = float(step)
        for i in range(6, 10):  # 6 of 10 nodes silent: 60% >= 55%
            h.heartbeat(f"n{i}", t)
        d = h.evaluate(t)
        assert d.evict == []
    assert d.state == "PartialDisruption"
    assert sorted(d.waiting_for_eviction) == [f"n{i}" for i in range(6)]


def test_large_cluster_partial_disruption_evicts_slowly() -> None:
    cfg = NodeHealthConfig(grace_period=40, eviction_timeout=300, eviction_rate=0.1,
                           secondary_eviction_rate=0.01, large_cluster_size=50)
    h = cluster(60, cfg)
    evicted: list[float] = []
    for step in range(0, 800):
        t = float(step)
        for i in range(35, 60):  # 35 of 60 silent: 58% >= 55%
            h.heartbeat(f"n{i}", t)
        evicted += [t] * len(h.evaluate(t).evict)
    assert 1 <= len(evicted) <= 6  # ~0.01/s over ~460 s of eligibility
