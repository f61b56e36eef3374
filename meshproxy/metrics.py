"""The proxy's Prometheus metrics, and how they are merged across worker processes.

Names follow Prometheus conventions (``meshproxy_`` prefix, base units, ``_total``
for counters). With several workers, prometheus-client's multiprocess mode is used:
the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, each
worker's values live in memory-mapped files there, and the admin API merges them with
``MultiProcessCollector``; gauges are summed over live processes (``livesum``).

Hot-path cost is kept low by binding label values once: routes, clusters and pools
hold their label children (``.labels(...)`` is a dict lookup under a lock), and pool
sizes are sampled by the periodic sweep instead of updated per request.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Request durations: 0.5 ms to 30 s, dense where a sidecar's latencies live.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


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
            "Open downstream connections, by listener.", ["listener"],
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
        for result in ("success", "failure"):
            self.config_reloads.labels(result)


def collect_registry(own: CollectorRegistry) -> CollectorRegistry:
    """The registry ``/metrics`` serves: merged over workers in multiprocess mode."""
    if not multiprocess():
        return own
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged
