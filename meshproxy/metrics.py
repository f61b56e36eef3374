"""The proxy's Prometheus metrics, and how they are merged across worker processes.

Names follow Prometheus conventions (``meshproxy_`` prefix, base units, ``_total``
for counters). With several workers, prometheus-client's multiprocess mode is used:
the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, each
worker's values live in memory-mapped files there, and the admin API merges them with
``MultiProcessCollector``; gauges are summed over live processes (``livesum``).

Hot-path cost is kept low: a request adds to a :class:`Tally` (plain integers, one
per route and one per endpoint, label children bound once) and the tallies are
flushed into prometheus-client about once a second and before every scrape
(:meth:`Stats.flush`); pool sizes are sampled by the same periodic sweep. A
prometheus-client update takes a lock (and in multiprocess mode writes an mmap) —
doing six of those per request cost more than parsing the request.
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Request durations: 0.5 ms to 30 s, dense where a sidecar's latencies live.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Tally:
    """Requests by status class and a duration histogram for one label set, counted in
    plain integers and added to the prometheus-client children by :meth:`flush`."""

    __slots__ = ("_bounds", "_codes", "_hist", "buckets", "codes", "total", "totals")

    def __init__(self, codes: dict[int, object], hist: object) -> None:
        self._codes = codes    # status class (1-5) -> Counter child
        self._hist = hist      # Histogram child
        self._bounds = [*DURATION_BUCKETS, float("inf")]
        self.codes = [0] * 6
        self.totals = [0] * 6  # everything ever counted, for /clusters
        self.buckets = [0] * len(self._bounds)
        self.total = 0.0

    def record(self, status: int, seconds: float) -> None:
        cls = status // 100
        self.codes[cls if 0 < cls < 6 else 5] += 1
        self.buckets[bisect_left(self._bounds, seconds)] += 1
        self.total += seconds

    def flush(self) -> None:
        codes = self.codes
        for cls in range(1, 6):
            n = codes[cls]
            if n:
                codes[cls] = 0
                self.totals[cls] += n
                self._codes[cls].inc(n)  # type: ignore[attr-defined]
        if self.total or any(self.buckets):
            # Add whole batches to the histogram child: its per-bucket values and sum
            # (the same objects ``observe`` updates; non-cumulative per bucket).
            hist = self._hist
            for i, n in enumerate(self.buckets):
                if n:
                    hist._buckets[i].inc(n)  # type: ignore[attr-defined]
                    self.buckets[i] = 0
            hist._sum.inc(self.total)  # type: ignore[attr-defined]
            self.total = 0.0

    def count(self, cls: int) -> int:
        return self.totals[cls] + self.codes[cls]


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Stats:
    """Every metric of one proxy process, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.downstream_requests = Counter(
            "meshproxy_downstream_requests_total",
            "Requests answered to downstream clients, by listener, route and status class.",
            ["listener", "route", "code_class"], registry=r)
        self.downstream_duration = Histogram(
            "meshproxy_downstream_request_duration_seconds",
            "Time from the request head's arrival to the last response byte written.",
            ["listener", "route"], buckets=DURATION_BUCKETS, registry=r)
        self.downstream_connections = Gauge(
            "meshproxy_downstream_connections_active",
            "Open downstream connections, by listener (sampled each second).", ["listener"],
            multiprocess_mode="livesum", registry=r)
        self.downstream_connections_total = Counter(
            "meshproxy_downstream_connections_total",
            "Downstream connections accepted, by listener.", ["listener"], registry=r)
        self.bytes_received = Counter(
            "meshproxy_downstream_received_bytes_total",
            "Bytes received from downstream clients, by listener.", ["listener"], registry=r)
        self.bytes_sent = Counter(
            "meshproxy_downstream_sent_bytes_total",
            "Bytes sent to downstream clients, by listener.", ["listener"], registry=r)
        self.local_replies = Counter(
            "meshproxy_local_replies_total",
            "Responses the proxy generated itself, by reason (the x-mesh-reason header).",
            ["listener", "reason", "code"], registry=r)
        self.upstream_requests = Counter(
            "meshproxy_upstream_requests_total",
            "Upstream attempts that got a response, by cluster, endpoint and status class.",
            ["cluster", "endpoint", "code_class"], registry=r)
        self.upstream_errors = Counter(
            "meshproxy_upstream_errors_total",
            "Upstream attempts that failed without a complete response, by reason.",
            ["cluster", "endpoint", "reason"], registry=r)
        self.upstream_duration = Histogram(
            "meshproxy_upstream_request_duration_seconds",
            "Time from sending an upstream request to its last response byte.",
            ["cluster", "endpoint"], buckets=DURATION_BUCKETS, registry=r)
        self.pool_connections = Gauge(
            "meshproxy_upstream_pool_connections",
            "Upstream pool connections by cluster and state (idle, busy), sampled each second.",
            ["cluster", "state"], multiprocess_mode="livesum", registry=r)
        self.tcp_connections = Counter(
            "meshproxy_tcp_connections_total",
            "L4 connections proxied, by listener and outcome.",
            ["listener", "outcome"], registry=r)
        self.config_reloads = Counter(
            "meshproxy_config_reload_total",
            "Config reload attempts by result (success, failure).", ["result"], registry=r)
        self.config_loaded = Gauge(
            "meshproxy_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            multiprocess_mode="max", registry=r)
        self.endpoint_healthy = Gauge(
            "meshproxy_upstream_endpoint_healthy",
            "1 when an endpoint passes active health checks (or has none), else 0.",
            ["cluster", "endpoint"], multiprocess_mode="livemin", registry=r)
        self.lb_panic = Counter(
            "meshproxy_lb_panic_total",
            "Balancer picks made in panic mode (too few healthy endpoints: all are used).",
            ["cluster"], registry=r)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self._tallies: dict[tuple[str, ...], Tally] = {}

    def route_tally(self, listener: str, route: str) -> Tally:
        """The tally of one route (shared by the old and new config on reload)."""
        key = ("route", listener, route)
        t = self._tallies.get(key)
        if t is None:
            t = self._tallies[key] = Tally(
                {i: self.downstream_requests.labels(listener, route, f"{i}xx")
                 for i in range(1, 6)},
                self.downstream_duration.labels(listener, route))
        return t

    def endpoint_tally(self, cluster: str, endpoint: str) -> Tally:
        key = ("endpoint", cluster, endpoint)
        t = self._tallies.get(key)
        if t is None:
            t = self._tallies[key] = Tally(
                {i: self.upstream_requests.labels(cluster, endpoint, f"{i}xx")
                 for i in range(1, 6)},
                self.upstream_duration.labels(cluster, endpoint))
        return t

    def flush(self) -> None:
        """Move every tally's counts into prometheus-client."""
        for t in self._tallies.values():
            t.flush()


def collect_registry(own: CollectorRegistry) -> CollectorRegistry:
    """The registry ``/metrics`` serves: merged over workers in multiprocess mode."""
    if not multiprocess():
        return own
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged
