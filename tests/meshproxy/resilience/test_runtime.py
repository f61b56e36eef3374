"""The per-process resilience runtime: building from config, and reloads that keep the
state of everything whose config did not change (or that can be resized in place)."""

from __future__ import annotations

import asyncio

import pytest

from meshproxy.endpoint import Endpoint
from meshproxy.resilience.breaker import BreakerConfig
from meshproxy.resilience.concurrency import ConcurrencyConfig
from meshproxy.resilience.degrade import SwitchConfig
from meshproxy.resilience.outlier import OutlierConfig
from meshproxy.resilience.ratelimit import LocalBackend, RateLimitConfig
from meshproxy.resilience.runtime import (
    ClusterResilienceConfig,
    ProxyResilienceConfig,
    ResilienceRuntime,
    RouteResilienceConfig,
)
from meshproxy.resilience.shedding import SheddingConfig


def eps() -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 9000 + i) for i in range(4)]


def base(**cluster) -> dict:
    return {"clusters": {"catalog": ClusterResilienceConfig(**cluster)},
            "routes": {"get-item": RouteResilienceConfig(
                priority="high", function="browse",
                rate_limit=RateLimitConfig(rate=1, burst=1))}}


def test_reload_keeps_open_breakers_ejections_and_buckets(clock) -> None:
    rt = ResilienceRuntime(clock=clock)
    e = eps()
    cfg = base(breaker=BreakerConfig(consecutive_failures=1),
               outlier=OutlierConfig(consecutive_5xx=1))
    rt.apply(ProxyResilienceConfig(), endpoints={"catalog": e}, **cfg)
    c = rt.clusters["catalog"]
    b = c.breaker
    b.record(b.allow(clock()), False, clock())
    c.outlier.observe(e[0], 500, 0.0, clock())
    assert rt.rate_limiters["get-item"].check().allowed
    limiter = rt.rate_limiters["get-item"]

    rt.apply(ProxyResilienceConfig(), endpoints={"catalog": e}, **cfg)   # same config
    assert rt.clusters["catalog"] is c
    assert c.breaker is b
    assert b.state == "open"
    assert not e[0].available(clock())
    assert rt.rate_limiters["get-item"] is limiter
    assert not limiter.check().allowed              # the bucket stayed empty


def test_changed_cluster_config_resizes_in_place(clock) -> None:
    rt = ResilienceRuntime(clock=clock)
    rt.apply(ProxyResilienceConfig(), **base(breaker=BreakerConfig(consecutive_failures=1),
                                             limits=ConcurrencyConfig(max_requests=5)))
    c = rt.clusters["catalog"]
    b = c.breaker
    b.record(b.allow(clock()), False, clock())
    assert c.limits.requests.try_acquire()
    rt.apply(ProxyResilienceConfig(), **base(
        breaker=BreakerConfig(consecutive_failures=3, reset_timeout=60),
        limits=ConcurrencyConfig(max_requests=1)))
    assert rt.clusters["catalog"] is c
    assert c.breaker is b
    assert b.state == "open"                        # new thresholds, same state
    assert b.config.reset_timeout == 60
    assert c.limits.requests.in_use == 1
    assert not c.limits.requests.try_acquire()


def test_parts_switched_off_are_dropped_and_clusters_removed(clock) -> None:
    rt = ResilienceRuntime(clock=clock)
    rt.apply(ProxyResilienceConfig(), **base(breaker=BreakerConfig()))
    assert rt.clusters["catalog"].breaker is not None
    rt.apply(ProxyResilienceConfig(), **base())
    assert rt.clusters["catalog"].breaker is None
    rt.apply(ProxyResilienceConfig(), clusters={}, routes={})
    assert rt.clusters == {}
    assert rt.rate_limiters == {}


def test_endpoint_changes_reach_outlier_and_per_endpoint_parts(clock) -> None:
    rt = ResilienceRuntime(clock=clock)
    e = eps()
    rt.apply(ProxyResilienceConfig(), endpoints={"catalog": e},
             **base(outlier=OutlierConfig(consecutive_5xx=2),
                    endpoint_breaker=BreakerConfig(),
                    endpoint_limits=ConcurrencyConfig(max_requests=1)))
    c = rt.clusters["catalog"]
    c.endpoint_breakers.get(e[3].address)
    c.endpoint_limits.get(e[3].address)
    c.set_endpoints(e[:3])
    assert len(c.endpoint_breakers) == 0
    assert len(c.endpoint_limits) == 0
    c.outlier.observe(e[0], 500, 0.0, clock())
    c.outlier.observe(e[0], 500, 0.0, clock())
    assert not e[0].available(clock())


def test_reload_that_changes_the_endpoint_breaker_keeps_each_breaker_and_its_state(
        clock) -> None:
    """A reload with other per-endpoint breaker settings reconfigures the breakers in
    place: an open one stays open, a closed one trips by the new threshold. (It used to
    raise AttributeError mid-reload, leaving the breakers half reconfigured.)"""
    rt = ResilienceRuntime(clock=clock)
    e = eps()
    rt.apply(ProxyResilienceConfig(), endpoints={"catalog": e},
             **base(endpoint_breaker=BreakerConfig(consecutive_failures=3)))
    group = rt.clusters["catalog"].endpoint_breakers
    tripped, other = group.get(e[0].address), group.get(e[1].address)
    for _ in range(3):
        tripped.record(tripped.allow(clock()), False, clock())
    assert tripped.state == "open"
    other.record(other.allow(clock()), False, clock())
    assert other.state == "closed"  # one failure of three

    rt.apply(ProxyResilienceConfig(), endpoints={"catalog": e},
             **base(endpoint_breaker=BreakerConfig(consecutive_failures=2)))
    assert rt.clusters["catalog"].endpoint_breakers is group
    assert group.get(e[0].address) is tripped
    assert tripped.state == "open"
    other.record(other.allow(clock()), False, clock())
    assert other.state == "open"  # the second failure trips it under the new threshold
    assert group.config.consecutive_failures == 2


def test_switch_admin_mode_survives_an_unchanged_reload(clock) -> None:
    sw = SwitchConfig(name="recs", level="function", target="browse")
    rt = ResilienceRuntime(ProxyResilienceConfig(switches=(sw,)), clock=clock)
    rt.switches.flip("recs", "on")
    rt.apply(ProxyResilienceConfig(switches=(sw,)), clusters={}, routes={})
    assert rt.switches.get("recs").mode == "on"
    with pytest.raises(ValueError, match="duplicate degradation switch names"):
        rt.apply(ProxyResilienceConfig(switches=(sw, sw)), clusters={}, routes={})
    assert rt.switches.get("recs").mode == "on"     # the refused config changed nothing


def test_shared_rate_limits_use_the_shared_table_when_given(clock) -> None:
    shared = LocalBackend()          # stands for the shared-memory table: same protocol
    rt = ResilienceRuntime(clock=clock, shared_buckets=shared)
    rt.apply(ProxyResilienceConfig(), clusters={}, routes={
        "a": RouteResilienceConfig(rate_limit=RateLimitConfig(rate=1)),
        "b": RouteResilienceConfig(rate_limit=RateLimitConfig(rate=1, backend="local"))})
    rt.rate_limiters["a"].check()
    rt.rate_limiters["b"].check()
    assert len(shared) == 1                          # only route a's bucket lives there


def test_shedder_keeps_in_flight_across_reload(clock) -> None:
    rt = ResilienceRuntime(ProxyResilienceConfig(shedding=SheddingConfig(max_requests=10)),
                           clock=clock)
    sh = rt.shedder
    sh.admit(2)
    rt.apply(ProxyResilienceConfig(shedding=SheddingConfig(max_requests=20)),
             clusters={}, routes={})
    assert rt.shedder is sh
    assert sh.in_flight == 1
    assert sh.capacity == 20


async def test_start_and_stop_run_and_cancel_the_timers() -> None:
    """Outlier sweeps and loop-lag sampling run as loop timers while started; stop
    cancels them all."""
    loop = asyncio.get_running_loop()
    rt = ResilienceRuntime(ProxyResilienceConfig(shedding=SheddingConfig(lag_interval=0.01)),
                           clock=loop.time)
    e = eps()
    rt.apply(rt.config, endpoints={"catalog": e}, routes={}, clusters={
        "catalog": ClusterResilienceConfig(outlier=OutlierConfig(
            interval=0.01, consecutive_5xx=1, base_ejection_time=0.02))})
    rt.start(loop)
    rt.clusters["catalog"].outlier.observe(e[0], 500, 0.0, loop.time())
    for _ in range(500):
        if rt.events.recent(kind="outlier.return"):
            break
        await asyncio.sleep(0.01)
    assert rt.events.recent(kind="outlier.return")
    assert rt.lag is not None
    assert rt.lag.samples > 0
    rt.stop()
    assert rt.clusters["catalog"].outlier._timer is None
    assert rt.lag._handle is None


async def test_turning_shedding_off_stops_the_lag_timer() -> None:
    loop = asyncio.get_running_loop()
    rt = ResilienceRuntime(ProxyResilienceConfig(shedding=SheddingConfig()), clock=loop.time)
    rt.start(loop)
    lag = rt.lag
    rt.apply(ProxyResilienceConfig(), clusters={}, routes={})
    assert rt.shedder is None
    assert rt.lag is None
    assert lag._handle is None
    rt.stop()
