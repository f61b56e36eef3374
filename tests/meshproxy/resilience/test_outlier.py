"""Outlier detection: consecutive failures, success-rate and latency outliers, growing
ejection times, the max-ejection cap, returns, and explanations with numbers."""

from __future__ import annotations

import asyncio

import pytest

from meshproxy.endpoint import Endpoint
from meshproxy.resilience.outlier import OutlierConfig, OutlierDetector
from meshproxy.schema import SchemaError, parse


def cluster(n: int) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 8080 + i) for i in range(n)]


def make(eps, clock, events, **cfg) -> OutlierDetector:
    return OutlierDetector("catalog", OutlierConfig(**cfg), clock=clock, events=events,
                           endpoints=eps)


def test_consecutive_5xx_ejects_at_once_and_a_success_resets_the_count(clock, events) -> None:
    eps = cluster(4)
    od = make(eps, clock, events, consecutive_5xx=3)
    for status in (500, 500, 200, 500, 500):
        od.observe(eps[0], status, 0.01, clock())
    assert eps[0].available(clock())
    od.observe(eps[0], 503, 0.01, clock())
    assert not eps[0].available(clock())
    assert eps[0].ejected_until == pytest.approx(clock() + 30)
    ev = events.recent(kind="outlier.eject")[-1]
    assert ev.subject == "127.0.0.1:8080"
    assert "3 consecutive 5xx" in ev.message


def test_local_failures_count_as_gateway_failures(clock, events) -> None:
    """Connect failures / resets (status None) trip the gateway rule; a plain 500 breaks
    a run of gateway failures."""
    eps = cluster(4)
    od = make(eps, clock, events, consecutive_5xx=None, consecutive_gateway_failure=3)
    for status in (None, 502, 500, None, 504):
        od.observe(eps[1], status, 0.0, clock())
    assert eps[1].available(clock())
    od.observe(eps[1], None, 0.0, clock())
    assert not eps[1].available(clock())
    assert od.statistics().ejections_total == {"consecutive_gateway_failure": 1}


def test_ejection_time_grows_with_repeats_and_is_capped(clock, events) -> None:
    eps = cluster(2)
    od = make(eps, clock, events, consecutive_5xx=1, base_ejection_time=10,
              max_ejection_time=25)
    durations = []
    for _ in range(3):
        od.observe(eps[0], 500, 0.0, clock())
        durations.append(eps[0].ejected_until - clock())
        clock.now = eps[0].ejected_until          # served its time; nothing ticked between
    assert durations == [10, 20, 25]


def test_multiplier_decays_after_intervals_in_service(clock, events) -> None:
    eps = cluster(2)
    od = make(eps, clock, events, consecutive_5xx=1, base_ejection_time=10, interval=10)
    od.observe(eps[0], 500, 0.0, clock())
    clock.advance(10)
    od.observe(eps[0], 500, 0.0, clock())          # second ejection: 20 s
    assert eps[0].ejected_until - clock() == 20
    clock.advance(20)
    od.tick()                                      # returns; the interval had an ejection
    od.tick()                                      # a clean interval: multiplier 2 -> 1
    od.observe(eps[0], 500, 0.0, clock())
    assert eps[0].ejected_until - clock() == 20    # multiplier back to 1, +1 for this one
    assert [e.kind for e in events].count("outlier.return") == 2  # one noted by observe


def test_never_ejects_more_than_max_ejection_percent(clock, events) -> None:
    """With 4 endpoints and 50%, two may be ejected; a third failing one is not, and the
    refusal is explained once per interval, not once per failure."""
    eps = cluster(4)
    od = make(eps, clock, events, consecutive_5xx=1, max_ejection_percent=50)
    for ep in eps[:3]:
        for _ in range(5):
            od.observe(ep, 500, 0.0, clock())
    assert [ep.available(clock()) for ep in eps] == [False, False, True, True]
    skipped = events.recent(kind="outlier.eject_skipped")
    assert len(skipped) == 1
    assert "2 of 4 already ejected" in skipped[0].message
    assert od.statistics().ejections_skipped_total == 5


def test_ejected_endpoint_returns_after_its_time(clock, events) -> None:
    eps = cluster(3)
    od = make(eps, clock, events, consecutive_5xx=1, base_ejection_time=30)
    od.observe(eps[2], 500, 0.0, clock())
    clock.advance(29)
    od.tick()
    assert od.statistics().ejected == ["127.0.0.1:8082"]
    clock.advance(1)
    assert eps[2].available(clock())               # balancers need no action
    od.tick()
    assert od.statistics().ejected == []
    assert events.recent(kind="outlier.return")[-1].subject == "127.0.0.1:8082"


def test_success_rate_outlier_is_ejected_with_its_numbers(clock, events) -> None:
    """Envoy's stdev rule: five hosts at ~99%, one at 70%: the 70% one goes."""
    eps = cluster(6)
    od = make(eps, clock, events, consecutive_5xx=None, consecutive_gateway_failure=None,
              success_rate_request_volume=100, success_rate_minimum_hosts=5)
    for i, ep in enumerate(eps):
        bad = 30 if i == 5 else i % 2           # 0 or 1 failures for the good ones
        for k in range(100):
            od.observe(ep, 500 if k < bad else 200, 0.01, clock())
    od.tick()
    assert [ep.available(clock()) for ep in eps] == [True] * 5 + [False]
    ev = events.recent(kind="outlier.eject")[-1]
    assert "success rate 70.0%" in ev.message
    assert "over 100 requests" in ev.message
    assert ev.numbers["success_rate"] == pytest.approx(0.7)


def test_success_rate_rule_needs_enough_hosts_with_volume(clock, events) -> None:
    eps = cluster(6)
    od = make(eps, clock, events, consecutive_5xx=None, consecutive_gateway_failure=None)
    for i, ep in enumerate(eps):
        n = 100 if i < 4 else 99                  # only 4 hosts reach the volume
        for k in range(n):
            od.observe(ep, 500 if (i == 0 and k < 50) else 200, 0.01, clock())
    od.tick()
    assert all(ep.available(clock()) for ep in eps)


def test_latency_outlier_is_ejected_and_explained(clock, events) -> None:
    """The example from the brief: p50 480 ms vs a 12 ms cluster over 200 requests."""
    eps = cluster(4)
    od = make(eps, clock, events, consecutive_5xx=None, latency_request_volume=50)
    for i, ep in enumerate(eps):
        for k in range(200):
            latency = 0.480 if i == 3 else 0.010 + (k % 5) * 0.001   # p50 12 ms
            od.observe(ep, 200, latency, clock())
    od.tick()
    assert [ep.available(clock()) for ep in eps] == [True, True, True, False]
    msg = events.recent(kind="outlier.eject")[-1].message
    assert msg.startswith("ejected 127.0.0.1:8083: p50 480 ms vs cluster 12 ms over 200 "
                          "requests")


def test_latency_rule_ignores_small_absolute_differences_and_low_volume(clock, events) -> None:
    eps = cluster(4)
    od = make(eps, clock, events, consecutive_5xx=None, latency_request_volume=50,
              latency_min_delta_ms=50)
    for i, ep in enumerate(eps):
        n = 49 if i == 2 else 60
        for _ in range(n):
            # 8 ms vs 1 ms: 8x, but only 7 ms slower; host 2 is 1 s but too few requests
            od.observe(ep, 200, {0: 0.001, 1: 0.001, 2: 1.0, 3: 0.008}[i], clock())
    od.tick()
    assert all(ep.available(clock()) for ep in eps)


def test_interval_counts_restart_after_each_tick(clock, events) -> None:
    eps = cluster(4)
    od = make(eps, clock, events, consecutive_5xx=None, latency_request_volume=50)
    for i, ep in enumerate(eps):
        for _ in range(30):
            od.observe(ep, 200, 0.5 if i == 0 else 0.01, clock())
    od.tick()
    for i, ep in enumerate(eps):
        for _ in range(30):
            od.observe(ep, 200, 0.5 if i == 0 else 0.01, clock())
    od.tick()                                      # 30 + 30 across intervals is not 50
    assert all(ep.available(clock()) for ep in eps)


def test_endpoint_update_keeps_state_of_remaining_endpoints(clock, events) -> None:
    eps = cluster(3)
    od = make(eps, clock, events, consecutive_5xx=2)
    od.observe(eps[0], 500, 0.0, clock())
    new = [eps[0], Endpoint("127.0.0.1", 9000)]
    od.update(new)
    od.observe(eps[0], 500, 0.0, clock())
    assert not eps[0].available(clock())           # the first 500 still counted
    od.observe(eps[1], 500, 0.0, clock())          # departed endpoint: ignored


async def test_start_runs_ticks_on_the_loop_timer(events) -> None:
    """``start`` schedules the sweep with call_later; ``stop`` cancels it (no task left)."""
    loop = asyncio.get_running_loop()
    eps = cluster(2)
    od = OutlierDetector("c", OutlierConfig(interval=0.01, consecutive_5xx=1,
                                            base_ejection_time=0.02),
                         clock=loop.time, events=events, endpoints=eps)
    od.start(loop)
    od.observe(eps[0], 500, 0.0, loop.time())
    for _ in range(500):
        if events.recent(kind="outlier.return"):
            break
        await asyncio.sleep(0.01)
    od.stop()
    assert events.recent(kind="outlier.return")


def test_config_rejects_bad_values() -> None:
    with pytest.raises(SchemaError, match="max_ejection_percent: Expected `float` <= 100"):
        parse({"max_ejection_percent": 150}, OutlierConfig)
    with pytest.raises(SchemaError, match="latency_factor: Expected `float` > 1"):
        parse({"latency_factor": 0.5}, OutlierConfig)
