"""The metrics pipeline's samples and the short in-memory window that keeps them.

A :class:`PodSample` is one Pod's usage over a short window ending at ``timestamp``:
CPU in millicores and memory in bytes per container (from the node agent's
``/stats/summary``), and for meshed Pods a :class:`MeshSample` (requests per second,
p99 latency and in-flight requests from the sidecar's ``/metrics``). The collector
(``collector.py``) computes them; the API server keeps them in a :class:`MetricsWindow`
and serves them (``control/api/metrics_api.py``); the HPA controller, ``meshctl top`` and
the capacity report read them back. Samples are not stored in the cluster's store:
like Kubernetes' metrics-server, the window lives in memory only and refills within a
collection interval after a restart.

The window keeps, per Pod and per Node, the samples of the last ``retention`` seconds
(bounded in count too); a sample older than ``ttl`` is history, not a current value, so
a Pod whose collector went quiet reads as *missing* (the HPA treats missing metrics
conservatively) instead of forever showing its last load.

This module is pure (no I/O, no imports from the rest of ``control`` but
``quantity``), so the API server can hold it without depending on higher layers. The
wire format (``to_json``/``pod_from_json``) is the body of the collector's push; bad
input raises :class:`SampleError` naming the field.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_RETENTION = 900.0  # s of history per Pod: enough for the capacity report
DEFAULT_TTL = 60.0         # s after which a Pod's latest sample no longer counts as current
MAX_SAMPLES = 1024         # per Pod/Node, whatever the push rate


class SampleError(ValueError):
    """A pushed sample is malformed; the message names the field."""


@dataclass(frozen=True, slots=True)
class MeshSample:
    """What a Pod's sidecar saw over the sample's window."""

    requests_per_second: float
    latency_p99: float | None   # seconds; None when no request finished in the window
    in_flight: float            # requests being served at the end of the window
    requests: int = 0           # requests finished in the window (how much p99 rests on)


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    name: str
    cpu_millis: float
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class PodSample:
    namespace: str
    name: str
    timestamp: float            # unix seconds at the end of the window
    window: float               # seconds the rates were measured over
    containers: tuple[ContainerUsage, ...] = ()
    node: str = ""
    mesh: MeshSample | None = None

    @property
    def cpu_millis(self) -> float:
        return sum(c.cpu_millis for c in self.containers)

    @property
    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.containers)


@dataclass(frozen=True, slots=True)
class NodeSample:
    name: str
    timestamp: float
    window: float
    cpu_millis: float
    memory_bytes: int


@dataclass
class MetricsWindow:
    """Per-Pod and per-Node sample history; see the module docstring."""

    retention: float = DEFAULT_RETENTION
    ttl: float = DEFAULT_TTL
    _pods: dict[tuple[str, str], deque[PodSample]] = field(default_factory=dict)
    _nodes: dict[str, deque[NodeSample]] = field(default_factory=dict)

    def add(self, pods: Iterable[PodSample], nodes: Iterable[NodeSample], now: float) -> None:
        """Keep one push's samples (a repeated or late sample is ignored: each history is
        ordered by time), then drop what is older than the retention."""
        for p in pods:
            q = self._pods.setdefault((p.namespace, p.name), deque(maxlen=MAX_SAMPLES))
            if not q or p.timestamp > q[-1].timestamp:
                q.append(p)
        for n in nodes:
            qn = self._nodes.setdefault(n.name, deque(maxlen=MAX_SAMPLES))
            if not qn or n.timestamp > qn[-1].timestamp:
                qn.append(n)
        self.expire(now)

    def expire(self, now: float) -> None:
        for table in (self._pods, self._nodes):
            for key in list(table):
                q = table[key]
                while q and q[0].timestamp < now - self.retention:
                    q.popleft()
                if not q:
                    del table[key]

    def current_pods(self, now: float, namespace: str | None = None) -> list[PodSample]:
        """The latest sample of every Pod (of ``namespace``) younger than the TTL."""
        return [q[-1] for (ns, _), q in sorted(self._pods.items())
                if (namespace is None or ns == namespace) and q[-1].timestamp >= now - self.ttl]

    def current_nodes(self, now: float) -> list[NodeSample]:
        return [q[-1] for _, q in sorted(self._nodes.items())
                if q[-1].timestamp >= now - self.ttl]

    def pod_history(self, namespace: str, name: str) -> list[PodSample]:
        return list(self._pods.get((namespace, name), ()))

    def pods_in(self, namespace: str | None) -> list[tuple[str, str]]:
        return [k for k in sorted(self._pods) if namespace is None or k[0] == namespace]


# -- wire format (the collector's push body) -------------------------------------------


def pod_to_json(s: PodSample) -> dict[str, Any]:
    out: dict[str, Any] = {
        "namespace": s.namespace, "name": s.name, "node": s.node,
        "timestamp": s.timestamp, "window": s.window,
        "containers": [{"name": c.name, "cpuMillicores": c.cpu_millis,
                        "memoryBytes": c.memory_bytes} for c in s.containers]}
    if s.mesh is not None:
        out["mesh"] = mesh_to_json(s.mesh)
    return out


def mesh_to_json(m: MeshSample) -> dict[str, Any]:
    return {"requestsPerSecond": m.requests_per_second, "latencyP99Seconds": m.latency_p99,
            "inFlight": m.in_flight, "requests": m.requests}


def node_to_json(s: NodeSample) -> dict[str, Any]:
    return {"name": s.name, "timestamp": s.timestamp, "window": s.window,
            "cpuMillicores": s.cpu_millis, "memoryBytes": s.memory_bytes}


def _num(obj: Mapping[str, Any], key: str, path: str, *, minimum: float = 0.0) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or value < minimum:
        raise SampleError(f"{path}.{key} must be a finite number >= {minimum:g}, "
                          f"got {value!r}")
    return float(value)


def _opt_num(obj: Mapping[str, Any], key: str, path: str) -> float | None:
    return None if obj.get(key) is None else _num(obj, key, path)


def _str(obj: Mapping[str, Any], key: str, path: str, *, optional: bool = False) -> str:
    value = obj.get(key, "" if optional else None)
    if not isinstance(value, str) or (not optional and not value):
        raise SampleError(f"{path}.{key} must be a non-empty string, got {value!r}")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SampleError(f"{path} must be an object, got {type(value).__name__}")
    return value


def _list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise SampleError(f"{path}.{key} must be a list")
    return value


def pod_from_json(raw: Any, path: str = "pods[0]") -> PodSample:
    obj = _mapping(raw, path)
    containers = []
    for i, c in enumerate(_list(obj, "containers", path)):
        cp = f"{path}.containers[{i}]"
        c = _mapping(c, cp)
        containers.append(ContainerUsage(_str(c, "name", cp), _num(c, "cpuMillicores", cp),
                                         int(_num(c, "memoryBytes", cp))))
    mesh = None
    if obj.get("mesh") is not None:
        mp = f"{path}.mesh"
        m = _mapping(obj["mesh"], mp)
        mesh = MeshSample(_num(m, "requestsPerSecond", mp),
                          _opt_num(m, "latencyP99Seconds", mp),
                          _num(m, "inFlight", mp),
                          int(_opt_num(m, "requests", mp) or 0))
    return PodSample(namespace=_str(obj, "namespace", path), name=_str(obj, "name", path),
                     timestamp=_num(obj, "timestamp", path),
                     window=_num(obj, "window", path, minimum=1e-3),
                     containers=tuple(containers), node=_str(obj, "node", path, optional=True),
                     mesh=mesh)


def node_from_json(raw: Any, path: str = "nodes[0]") -> NodeSample:
    obj = _mapping(raw, path)
    return NodeSample(_str(obj, "name", path), _num(obj, "timestamp", path),
                      _num(obj, "window", path, minimum=1e-3),
                      _num(obj, "cpuMillicores", path),
                      int(_num(obj, "memoryBytes", path)))


def parse_push(raw: Any) -> tuple[list[PodSample], list[NodeSample]]:
    """The whole push body, validated before anything is stored."""
    body = _mapping(raw, "body")
    pods = [pod_from_json(p, f"pods[{i}]") for i, p in enumerate(_list(body, "pods", "body"))]
    nodes = [node_from_json(n, f"nodes[{i}]")
             for i, n in enumerate(_list(body, "nodes", "body"))]
    return pods, nodes


def push_body(pods: Iterable[PodSample], nodes: Iterable[NodeSample] = ()) -> dict[str, Any]:
    return {"kind": "MetricsSamples", "apiVersion": "metrics.k8s.io/v1beta1",
            "pods": [pod_to_json(p) for p in pods], "nodes": [node_to_json(n) for n in nodes]}
