"""Load shedding: lowest priorities refused first as concurrency rises, loop lag sheds by
priority (never critical), shadow mode, explanations, and a real loop-lag measurement."""

from __future__ import annotations

import asyncio
import time

import pytest

from meshproxy.resilience.adaptive import AdaptiveConfig
from meshproxy.resilience.shedding import (
    RANK,
    SHED_CONCURRENCY,
    SHED_LOOP_LAG,
    LoadShedder,
    LoopLagMonitor,
    SheddingConfig,
)


def test_lowest_priorities_are_shed_first_as_load_rises(clock, events) -> None:
    """Capacity 100: best effort stops at 50 in flight, low at 70, normal at 85, high at
    95, critical at 100."""
    def refused_at(priority: str) -> int:
        sh = LoadShedder(SheddingConfig(max_requests=100, lag_threshold_ms=None),
                         clock=clock, events=events)
        while sh.admit(RANK[priority]) is None:
            pass                                 # each admission stays in flight
        return sh.in_flight

    got = {p: refused_at(p) for p in ("best_effort", "low", "normal", "high", "critical")}
    assert got == {"best_effort": 50, "low": 70, "normal": 85, "high": 95, "critical": 100}


def test_shed_reason_and_explanation(clock, events) -> None:
    sh = LoadShedder(SheddingConfig(max_requests=10, lag_threshold_ms=None,
                                    event_interval=5), clock=clock, events=events)
    for _ in range(5):
        assert sh.admit(RANK["critical"]) is None
    assert sh.admit(RANK["best_effort"]) == SHED_CONCURRENCY
    assert sh.admit(RANK["best_effort"]) == SHED_CONCURRENCY
    ev = events.recent(kind="shed.start")
    assert len(ev) == 1                          # once per event_interval
    assert ev[0].message == ("shedding best_effort requests: 5 in flight of capacity 10 "
                             "(best_effort may use 50%)")
    clock.advance(5)
    sh.admit(RANK["best_effort"])
    assert len(events.recent(kind="shed.start")) == 2
    assert sh.statistics().shed_total["best_effort"] == 3


def test_loop_lag_sheds_by_priority_but_never_critical(clock, events) -> None:
    lag = [0.0]
    sh = LoadShedder(SheddingConfig(lag_threshold_ms=50), clock=clock,
                     lag=lambda: lag[0], events=events)

    def shed_set() -> list[str]:
        out = []
        for p in ("critical", "high", "normal", "low", "best_effort"):
            if sh.admit(RANK[p]) == SHED_LOOP_LAG:
                out.append(p)
            else:
                sh.done(None, clock())
        return out

    assert shed_set() == []
    lag[0] = 0.060
    assert shed_set() == ["best_effort"]
    lag[0] = 0.120
    assert shed_set() == ["low", "best_effort"]
    lag[0] = 0.250
    assert shed_set() == ["normal", "low", "best_effort"]
    lag[0] = 10.0
    assert shed_set() == ["high", "normal", "low", "best_effort"]
    assert "event-loop lag 10000 ms" in events.recent(kind="shed.start")[-1].message


def test_shadow_mode_admits_and_counts(clock, events) -> None:
    sh = LoadShedder(SheddingConfig(max_requests=2, mode="shadow", lag_threshold_ms=None),
                     clock=clock, events=events)
    assert all(sh.admit(RANK["best_effort"]) is None for _ in range(4))
    st = sh.statistics()
    assert st.in_flight == 4
    assert st.shadow_shed_total["best_effort"] == 3
    assert st.shed_total["best_effort"] == 0
    assert "shadow mode" in events.recent(kind="shed.start")[-1].message


def test_capacity_follows_the_adaptive_limit(clock, events) -> None:
    sh = LoadShedder(SheddingConfig(adaptive=AdaptiveConfig(min_concurrency=4,
                                                            min_rtt_requests=5),
                                    lag_threshold_ms=None), clock=clock, events=events)
    assert sh.capacity == 4
    for _ in range(5):
        assert sh.admit(RANK["critical"]) is None
        clock.advance(0.01)
        sh.done(0.01, clock())
    for _ in range(20):                          # latency at the minimum: it grows
        clock.advance(0.1)
        sh.admit(RANK["critical"])
        sh.done(0.01, clock())
    assert sh.capacity > 4


def test_reconfigure_keeps_in_flight(clock, events) -> None:
    sh = LoadShedder(SheddingConfig(max_requests=10), clock=clock, events=events)
    sh.admit(RANK["normal"])
    assert sh.reconfigure(SheddingConfig(max_requests=1))
    assert sh.in_flight == 1
    assert sh.admit(RANK["critical"]) == SHED_CONCURRENCY
    assert not sh.reconfigure(SheddingConfig(adaptive=AdaptiveConfig()))


def test_shares_must_be_complete_and_ordered() -> None:
    with pytest.raises(ValueError, match="missing"):
        SheddingConfig(shares={"critical": 1.0})
    with pytest.raises(ValueError, match="must not grow"):
        SheddingConfig(shares={"critical": 1.0, "high": 0.5, "normal": 0.9, "low": 0.4,
                               "best_effort": 0.3})


def test_lag_rises_at_once_and_decays_gradually() -> None:
    m = LoopLagMonitor(interval=0.1)
    m.feed(0.200)
    assert m.lag == pytest.approx(0.200)
    m.feed(0.0)
    assert m.lag == pytest.approx(0.100)
    m.feed(-0.001)                               # a timer never fires early; clamp anyway
    assert m.lag == pytest.approx(0.050)
    assert m.max_lag == pytest.approx(0.200)


async def test_monitor_sees_a_blocked_loop() -> None:
    """Blocking the loop (the thing measured, not a wait for a timeout) shows as lag."""
    loop = asyncio.get_running_loop()
    m = LoopLagMonitor(interval=0.01)
    m.start(loop)
    try:
        await asyncio.sleep(0.05)
        end = time.monotonic() + 0.2             # a CPU-bound stall of the loop
        while time.monotonic() < end:
            pass
        await asyncio.sleep(0.05)
        assert m.max_lag >= 0.1
    finally:
        m.stop()
