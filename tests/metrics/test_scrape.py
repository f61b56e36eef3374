"""Reading sidecar metrics: Prometheus' histogram_quantile arithmetic, the inbound
listener's counters out of a real meshproxy registry's text, and rates between two
readings (including a proxy restart, which must give no sample rather than a negative
rate)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.exposition import generate_latest

from control.metrics.scrape import SidecarScrape, histogram_quantile, mesh_between, parse_sidecar
from meshproxy.metrics import Stats

INF = math.inf


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    # 100 requests, all in (0.1, 0.25]: p99 interpolates 99% of the way through it.
    (0.99, {0.1: 0, 0.25: 100, INF: 100}, 0.1 + 0.15 * 0.99),
    # Half in the first bucket (from 0), half in the second: p50 is the first bound.
    (0.5, {0.1: 50, 0.2: 100, INF: 100}, 0.1),
    # The rank lands in +Inf: the highest finite bound, as Prometheus answers.
    (0.99, {0.1: 10, 0.2: 20, INF: 100}, 0.2),
    # Nothing observed: no quantile.
    (0.99, {0.1: 0, INF: 0}, None),
])
def test_histogram_quantile_follows_prometheus(q: float, buckets: dict, expected: float | None
                                               ) -> None:
    got = histogram_quantile(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def _registry_text(stats: Stats) -> str:
    return generate_latest(stats.registry).decode()


def test_parse_sidecar_keeps_only_the_inbound_listener() -> None:
    """Requests of another listener (the Pod's outbound calls) are not the Pod's load;
    busy connections to the local app are the in-flight requests (not those to upstreams)."""
    stats = Stats()
    stats.downstream_requests.labels("inbound", "app", "2xx").inc(90)
    stats.downstream_requests.labels("inbound", "app", "5xx").inc(10)
    stats.downstream_requests.labels("outbound-catalog", "r", "2xx").inc(1000)
    for _ in range(100):
        stats.downstream_duration.labels("inbound", "app").observe(0.03)
    stats.downstream_duration.labels("outbound-catalog", "r").observe(9.0)
    stats.pool_connections.labels("local-app", "busy").set(3)
    stats.pool_connections.labels("local-app", "idle").set(7)
    stats.pool_connections.labels("catalog", "busy").set(50)   # the Pod's own calls out
    scrape = parse_sidecar(_registry_text(stats), at=5.0)
    assert scrape.requests == 100
    assert scrape.in_flight == 3
    assert scrape.buckets[0.025] == 0
    assert scrape.buckets[0.05] == 100
    assert scrape.buckets[INF] == 100


def test_rates_and_p99_are_of_the_window_only() -> None:
    """p99 over the window comes from the buckets' difference: slow requests before the
    window do not count."""
    old = SidecarScrape(10.0, 1000, {0.01: 0, 1.0: 1000, INF: 1000})   # all slow before
    new = SidecarScrape(20.0, 1200, {0.01: 200, 1.0: 1200, INF: 1200}, in_flight=2)
    sample = mesh_between(old, new)
    assert sample is not None
    assert sample.requests_per_second == pytest.approx(20.0)
    assert sample.latency_p99 == pytest.approx(0.0099)
    assert sample.in_flight == 2
    assert sample.requests == 200


def test_no_sample_across_a_proxy_restart_or_without_requests() -> None:
    """Counters going down mean a restart: no sample for that span. A quiet window has a
    rate of 0 and no p99."""
    old = SidecarScrape(10.0, 500, {1.0: 500, INF: 500})
    assert mesh_between(old, SidecarScrape(20.0, 3, {1.0: 3, INF: 3})) is None
    assert mesh_between(old, SidecarScrape(10.0, 500, {1.0: 500, INF: 500})) is None
    quiet = mesh_between(old, SidecarScrape(20.0, 500, {1.0: 500, INF: 500}))
    assert quiet is not None
    assert quiet.requests_per_second == 0
    assert quiet.latency_p99 is None
