"""Reading a sidecar's Prometheus ``/metrics`` and turning two readings into rates.

A scrape is cumulative: requests answered so far, the duration histogram's cumulative
buckets, and a gauge for the requests in flight. :func:`parse_sidecar` keeps only the
sidecar's *inbound* traffic (the listener named ``inbound`` that fronts the app, see
``control/agent/sidecar.py``), so requests the Pod makes to others never count as its
load. :func:`mesh_between` turns an older and a newer scrape into a
:class:`~control.metrics.window.MeshSample`: the request rate over the span between
them, and the p99 of the requests that finished in that span, computed from the
*difference* of the histogram buckets with Prometheus' ``histogram_quantile`` linear
interpolation (so the percentile is of the window, not of the process' whole life).

In-flight requests: meshproxy exports no per-listener in-flight gauge; the busy
connections of its upstream pools (``meshproxy_upstream_pool_connections{state="busy"}``,
sampled each second) of its ``local-app`` cluster are the requests it is waiting on the
app for: the Pod's in-flight work (its outbound clusters' connections are not). A proxy
restart (counters going down) yields no sample for that span rather than a negative rate.

Metric names are meshproxy's (``meshproxy/metrics.py``); this module does not import
``meshproxy`` (the data plane and the control plane stay apart) and parses the text with
prometheus-client's parser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from control.metrics.window import MeshSample

REQUESTS = "meshproxy_downstream_requests"           # counter family (without _total)
DURATION = "meshproxy_downstream_request_duration_seconds"
POOL = "meshproxy_upstream_pool_connections"
INBOUND_LISTENER = "inbound"
APP_CLUSTER = "local-app"   # the sidecar's cluster for its own app (control/agent/sidecar.py)


@dataclass(frozen=True, slots=True)
class SidecarScrape:
    """One reading of a sidecar's cumulative inbound counters."""

    at: float                                  # when it was taken (collector's clock)
    requests: float                            # answered so far
    buckets: Mapping[float, float] = field(default_factory=dict)  # le -> cumulative count
    in_flight: float = 0.0


def parse_sidecar(text: str, at: float, *, listener: str = INBOUND_LISTENER) -> SidecarScrape:
    """The inbound counters of one ``/metrics`` body; ValueError on unparsable text."""
    requests = 0.0
    buckets: dict[float, float] = {}
    in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == REQUESTS + "_total" and s.labels.get("listener") == listener:
                requests += s.value
            elif s.name == DURATION + "_bucket" and s.labels.get("listener") == listener:
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == POOL and s.labels.get("state") == "busy" and \
                    s.labels.get("cluster") == APP_CLUSTER:
                in_flight += s.value
    return SidecarScrape(at, requests, buckets, in_flight)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``le -> count`` buckets: the
    bucket holding the rank, linear inside it; the +Inf bucket answers with the highest
    finite bound. None when the histogram is empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                finite = [x for x in bounds if not math.isinf(x)]
                return finite[-1] if finite else None
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / in_bucket
        prev_bound, prev_count = b, count
    return bounds[-1]


def mesh_between(old: SidecarScrape, new: SidecarScrape) -> MeshSample | None:
    """The sample for the span ``old.at .. new.at``; None if there is no span or the
    counters went backwards (the proxy restarted in between)."""
    span = new.at - old.at
    done = new.requests - old.requests
    if span <= 0 or done < 0:
        return None
    delta = {le: new.buckets.get(le, 0.0) - old.buckets.get(le, 0.0) for le in new.buckets}
    if any(v < 0 for v in delta.values()):
        return None
    return MeshSample(requests_per_second=done / span,
                      latency_p99=histogram_quantile(0.99, delta) if done else None,
                      in_flight=new.in_flight, requests=int(done))
