"""Scenarios: the resilience objects composed in the order the package docstring
recommends, driven by a simulated upstream on a manual clock.

This is NOT the engine integration (that is the second wave's, through the engine's
layers and real sockets); the ``RequestPath`` below is a test double of the request
path, written only from the public APIs, so that these modules are shown to work
together: which refusal comes first, that outcomes reach the right objects, that state
recovers, and that the event log tells the story.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshproxy.balance import PickContext, RoundRobin
from meshproxy.endpoint import Endpoint
from meshproxy.resilience.breaker import BreakerConfig
from meshproxy.resilience.degrade import AutoTrip, StaticResponse, SwitchConfig, Verdict
from meshproxy.resilience.outlier import OutlierConfig
from meshproxy.resilience.ratelimit import RateLimitConfig
from meshproxy.resilience.runtime import (
    ClusterResilienceConfig,
    ProxyResilienceConfig,
    ResilienceRuntime,
    RouteResilienceConfig,
)
from meshproxy.resilience.shedding import SheddingConfig

Upstream = Callable[[Endpoint, float], tuple[int | None, float]]


@dataclass
class Result:
    status: int
    reason: str


class RequestPath:
    """Rate limit -> switches -> shedding -> cluster limit -> cluster breaker -> pick
    (outlier) -> endpoint breaker -> attempt; outcomes fed back inside out."""

    def __init__(self, rt: ResilienceRuntime, route: str, cluster: str,
                 endpoints: list[Endpoint], upstream: Upstream, clock) -> None:
        self.rt, self.route, self.cluster = rt, route, cluster
        self.rc = rt.routes[route]
        self.cr = rt.clusters[cluster]
        self.switches = rt.switches.applicable(route=route, function=self.rc.function,
                                               cluster=cluster)
        self.lb = RoundRobin(endpoints, panic_threshold=0)
        self.upstream = upstream
        self.clock = clock

    def __call__(self, client: str = "10.0.0.1") -> Result:
        now = self.clock()
        rl = self.rt.rate_limiters.get(self.route)
        if rl is not None and not (d := rl.check(client_address=client, now=now)).allowed:
            return Result(d.status, "rate_limited")
        verdicts = []
        for sw in self.switches:
            v = sw.check(now)
            if v == Verdict.DEGRADE:
                return Result(sw.config.action.status, "degraded")
            verdicts.append((sw, v))
        result, latency = self._below_switches(now)
        # a switch judges the final answer of everything below it, refusals included: a
        # service whose breaker is open *is* failing, and its fallback beats a 503
        for sw, v in verdicts:
            sw.observe(v, result.status < 500, latency, now + latency)
        return result

    def _below_switches(self, now: float) -> tuple[Result, float]:
        shedder = self.rt.shedder
        if shedder is not None and (why := shedder.admit(self.rc.rank)) is not None:
            return Result(503, why), 0.0
        try:
            limits = self.cr.limits.requests
            if not limits.try_acquire():
                return Result(503, limits.code), 0.0
            try:
                token = self.cr.breaker.allow(now) if self.cr.breaker else 1
                if not token:
                    return Result(503, "circuit_open"), 0.0
                ep = self.lb.pick(PickContext(now=now))
                if ep is None:
                    if self.cr.breaker:
                        self.cr.breaker.cancel(token)
                    return Result(503, "no_healthy_upstream"), 0.0
                status, latency = self.upstream(ep, now)
                done = now + latency
                ok = status is not None and status < 500
                if self.cr.outlier:
                    self.cr.outlier.observe(ep, status, latency, done)
                if self.cr.breaker:
                    self.cr.breaker.record(token, ok, done)
                if status is None:
                    return Result(502, "connect_failure"), latency
                return Result(status, "upstream"), latency
            finally:
                limits.release()
        finally:
            if shedder is not None:
                shedder.done(None, now)


def endpoints(n: int = 4) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", 8080 + i) for i in range(n)]


def test_one_bad_replica_is_ejected_and_the_cluster_breaker_stays_closed(clock) -> None:
    """A replica answering 503 costs exactly consecutive_5xx failures, then outlier
    detection takes it out; the interleaved successes keep the cluster breaker closed."""
    eps = endpoints()
    rt = ResilienceRuntime(clock=clock)
    rt.apply(ProxyResilienceConfig(), endpoints={"catalog": eps},
             clusters={"catalog": ClusterResilienceConfig(
                 breaker=BreakerConfig(consecutive_failures=5),
                 outlier=OutlierConfig(consecutive_5xx=5))},
             routes={"get-item": RouteResilienceConfig()})
    path = RequestPath(rt, "get-item", "catalog", eps,
                       lambda ep, now: (503 if ep is eps[3] else 200, 0.01), clock)
    results = []
    for _ in range(400):
        clock.advance(0.01)
        results.append(path())
    assert sum(r.status == 503 for r in results) == 5
    assert rt.clusters["catalog"].breaker.state == "closed"
    ev = rt.events.recent(kind="outlier.eject")
    assert [e.subject for e in ev] == ["127.0.0.1:8083"]


def test_failing_service_trips_breaker_and_switch_then_both_recover(clock) -> None:
    """The whole upstream fails: the breaker opens (fast 503s instead of waiting on a
    dead service), the service switch trips and serves its fallback; when the upstream
    heals, the switch's probes and the breaker's trial bring both back, and the event
    log tells it in order."""
    eps = endpoints(2)
    healthy = [False]
    switch = SwitchConfig(name="catalog-down", level="service", target="catalog",
                          auto=AutoTrip(minimum_requests=10, threshold=0.5, cooldown=20,
                                        probe_ratio=0.5, probe_requests=4),
                          action=StaticResponse(status=200, body="[]"))
    rt = ResilienceRuntime(ProxyResilienceConfig(switches=(switch,)), clock=clock)
    rt.apply(rt.config, endpoints={"catalog": eps},
             clusters={"catalog": ClusterResilienceConfig(
                 breaker=BreakerConfig(consecutive_failures=5, reset_timeout=10))},
             routes={"list": RouteResilienceConfig()})
    path = RequestPath(rt, "list", "catalog", eps,
                       lambda ep, now: (200 if healthy[0] else None, 0.01), clock)

    first = [path().reason for _ in range(12)]
    # 5 real failures open the breaker; 5 fast circuit_open refusals later the switch
    # has its 10 failed requests and trips: the fallback replaces the 503s
    assert first == ["connect_failure"] * 5 + ["circuit_open"] * 5 + ["degraded"] * 2
    assert rt.switches.get("catalog-down").state == "tripped"

    healthy[0] = True
    clock.advance(20)                              # switch cooldown and breaker timeout over
    outcomes = [path() for _ in range(12)]
    assert rt.clusters["catalog"].breaker.state == "closed"
    assert rt.switches.get("catalog-down").state == "normal"
    assert outcomes[-1].status == 200
    kinds = [e.kind for e in rt.events]
    assert kinds.index("breaker.open") < kinds.index("switch.tripped")
    assert kinds[-2:] in (["breaker.closed", "switch.normal"],
                          ["switch.normal", "breaker.closed"])


def test_rate_limit_refuses_before_anything_is_counted(clock) -> None:
    """A client over its rate gets 429 and its refused requests take no capacity and
    leave no outcome with the breaker or switches."""
    eps = endpoints(1)
    rt = ResilienceRuntime(ProxyResilienceConfig(shedding=SheddingConfig(max_requests=10)),
                           clock=clock)
    rt.apply(rt.config, endpoints={"c": eps},
             clusters={"c": ClusterResilienceConfig(breaker=BreakerConfig())},
             routes={"r": RouteResilienceConfig(rate_limit=RateLimitConfig(
                 rate=1, burst=2, key="client_address", backend="local"))})
    path = RequestPath(rt, "r", "c", eps, lambda ep, now: (200, 0.001), clock)
    got = [path("10.0.0.9").status for _ in range(5)]
    assert got == [200, 200, 429, 429, 429]
    assert path("10.0.0.10").status == 200         # another client has its own bucket
    assert rt.shedder.in_flight == 0
    assert rt.clusters["c"].limits.requests.statistics().acquired_total == 3
