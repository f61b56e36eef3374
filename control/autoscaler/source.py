"""Where the HPA controller gets its numbers: the metrics API, read into plain values.

:class:`MetricsSource` is the seam; :class:`ApiMetricsSource` is the real one, reading
``/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods`` (``control/api/metrics_api.py``)
through the controller's REST client, as Kubernetes' HPA reads metrics-server. A Pod
the API does not list has no sample (it is *missing*: silent for longer than the API's
TTL, or never collected), which the algorithm handles conservatively.

Mesh metric names an HPA can target with ``type: Pods`` (values per Pod, averaged):

- ``mesh_requests_per_second``: inbound requests answered per second;
- ``mesh_latency_p99_seconds``: p99 of the inbound request duration over the window
  (a Pod that answered no request in the window has no value for it);
- ``mesh_in_flight_requests``: requests the sidecar is waiting on the app for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from control.client.rest import ApiClient
from control.quantity import bytes_value, parse_quantity

METRICS_PATH = "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"

MESH_RPS = "mesh_requests_per_second"
MESH_P99 = "mesh_latency_p99_seconds"
MESH_IN_FLIGHT = "mesh_in_flight_requests"
MESH_METRICS = (MESH_RPS, MESH_P99, MESH_IN_FLIGHT)


@dataclass(frozen=True, slots=True)
class PodValues:
    """One Pod's current figures as the HPA uses them."""

    cpu_millis: float | None     # None: no container usage in the sample (mesh only)
    memory_bytes: float | None
    mesh: dict[str, float]       # MESH_* name -> value (absent when unknown)


class MetricsSource(Protocol):
    async def pod_values(self, namespace: str) -> dict[str, PodValues]: ...


def values_from_list(body: dict[str, Any]) -> dict[str, PodValues]:
    """A ``PodMetricsList`` body → Pod name → values (malformed items are skipped)."""
    out: dict[str, PodValues] = {}
    for item in body.get("items") or ():
        try:
            name = item["metadata"]["name"]
            cpu = sum(float(parse_quantity(c["usage"]["cpu"])) * 1000
                      for c in item.get("containers") or ())
            mem = sum(bytes_value(c["usage"]["memory"]) for c in item.get("containers") or ())
        except (KeyError, TypeError, ValueError):
            continue
        mesh: dict[str, float] = {}
        m = item.get("mesh") or {}
        if m.get("requestsPerSecond") is not None:
            mesh[MESH_RPS] = float(m["requestsPerSecond"])
        if m.get("latencyP99Seconds") is not None:
            mesh[MESH_P99] = float(m["latencyP99Seconds"])
        if m.get("inFlight") is not None:
            mesh[MESH_IN_FLIGHT] = float(m["inFlight"])
        has_usage = bool(item.get("containers"))
        out[name] = PodValues(cpu if has_usage else None,
                              float(mem) if has_usage else None, mesh)
    return out


class ApiMetricsSource:
    """The metrics API through the controller's client."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def pod_values(self, namespace: str) -> dict[str, PodValues]:
        return values_from_list(await self.api.request("GET", METRICS_PATH.format(ns=namespace)))
