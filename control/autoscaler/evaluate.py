"""One HPA metric spec → a replica proposal, the ``currentMetrics`` entry and words.

Pure: given the metric spec, the Pods of the target (ready / not ready, their requests)
and the Pods' current values, :func:`evaluate` calls ``algorithm.propose`` the way
Kubernetes' replica calculator does for that metric type:

- ``Resource`` ``cpu``/``memory`` with ``Utilization``: usage as a percentage of the
  Pods' requests (every container must request the resource, else the metric is
  invalid, as in Kubernetes); not-yet-ready Pods count as zero when scaling up on CPU;
- ``Resource`` with ``AverageValue``: usage per Pod against a quantity;
- ``Pods`` with ``AverageValue``: one of the mesh metrics (``source.MESH_METRICS``) per
  Pod against a quantity (``"250m"`` seconds of p99 latency, ``"20"`` requests/s).

Anything else (``Object``, ``External``, ``ContainerResource``, unknown Pods metrics) is
reported invalid with a reason instead of being guessed at. A metric for which no ready
Pod has a value is invalid too ("missing"), never a silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control.autoscaler.algorithm import DEFAULT_TOLERANCE, Proposal, propose
from control.autoscaler.source import MESH_METRICS, PodValues
from control.quantity import bytes_value, cpu_millis, parse_quantity

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A valid proposal (with its status entry and description) or an invalid metric."""

    proposal: Proposal | None
    current: Obj | None          # the HPA's status.currentMetrics entry
    description: str             # "cpu resource utilization (percentage of request)"
    error: str | None = None     # why there is no proposal
    error_reason: str = ""       # FailedGetResourceMetric / FailedGetPodsMetric / ...

    def summary(self) -> str:
        """The numbers in words, for Events: '<what> 180% (target 80%) over 2 pods → 5'."""
        if self.proposal is None:
            return f"{self.description}: {self.error}"
        return f"{self.description}: {self.proposal.reason} → {self.proposal.replicas}"


@dataclass(frozen=True, slots=True)
class PodSet:
    ready: Sequence[str]
    unready: Sequence[str]
    requests: Mapping[str, Mapping[str, float | None]]   # resource -> pod -> request|None


def pod_requests(pod: Obj) -> dict[str, float | None]:
    """Summed container requests of a Pod: cpu in millicores, memory in bytes; None when
    some container does not request that resource."""
    out: dict[str, float | None] = {"cpu": 0.0, "memory": 0.0}
    for c in (pod.get("spec") or {}).get("containers") or ():
        req = (c.get("resources") or {}).get("requests") or {}
        for res, conv in (("cpu", cpu_millis), ("memory", bytes_value)):
            if out[res] is None:
                continue
            if res not in req:
                out[res] = None
            else:
                out[res] = float(out[res] or 0.0) + conv(req[res])
    return out


def _fmt_quantity(value: float, *, resource: str | None = None) -> str:
    if resource == "cpu":
        return f"{math.ceil(value)}m"
    if resource == "memory":
        return f"{math.ceil(value / 2**20)}Mi"
    if value == int(value):
        return str(int(value))
    return f"{math.ceil(value * 1000)}m"


def evaluate(metric: Obj, current_replicas: int, pods: PodSet,
             values: Mapping[str, PodValues], *,
             tolerance: float = DEFAULT_TOLERANCE) -> Evaluation:
    mtype = metric.get("type")
    if mtype == "Resource":
        return _resource(metric["resource"], current_replicas, pods, values, tolerance)
    if mtype == "Pods":
        return _pods(metric["pods"], current_replicas, pods, values, tolerance)
    return Evaluation(None, None, f"{mtype} metric",
                      f"metric type {mtype} is not supported by this autoscaler "
                      f"(Resource and Pods are)", "InvalidMetricSourceType")


def _resource(spec: Obj, current: int, pods: PodSet, values: Mapping[str, PodValues],
              tolerance: float) -> Evaluation:
    name = spec.get("name")
    target = spec.get("target") or {}
    if name not in ("cpu", "memory"):
        return Evaluation(None, None, f"{name} resource",
                          f"resource {name!r} is not measured (cpu and memory are)",
                          "FailedGetResourceMetric")
    samples = {p: (v.cpu_millis if name == "cpu" else v.memory_bytes)
               for p, v in values.items()}
    samples = {p: s for p, s in samples.items() if s is not None
               and (p in pods.ready or p in pods.unready)}
    if target.get("type") == "Utilization":
        desc = f"{name} resource utilization (percentage of request)"
        goal = float(target["averageUtilization"])
        reqs = pods.requests.get(name, {})
        lacking = sorted(p for p in (*pods.ready, *pods.unready) if reqs.get(p) is None)
        if lacking:
            return Evaluation(None, None, desc, f"missing request for {name} in pods "
                              f"{', '.join(lacking)}", "FailedGetResourceMetric")
        if not any(p in samples for p in pods.ready):
            return Evaluation(None, None, desc, f"no {name} metrics for any ready pod "
                              f"of {len(pods.ready)}", "FailedGetResourceMetric")
        prop = propose(current, samples, target=goal, ready=pods.ready, unready=pods.unready,
                       requests={p: float(r) for p, r in reqs.items() if r is not None},
                       tolerance=tolerance, unready_counts_as_zero=name == "cpu")
        avg = sum(samples[p] for p in pods.ready if p in samples) / \
            max(1, sum(1 for p in pods.ready if p in samples))
        cur = {"type": "Resource", "resource": {"name": name, "current": {
            "averageUtilization": round(prop.current),
            "averageValue": _fmt_quantity(avg, resource=name)}}}
        return Evaluation(_described(prop, f"{prop.current:.0f}% (target {goal:.0f}%)"),
                          cur, desc)
    desc = f"{name} resource"
    raw = target.get("averageValue")
    if target.get("type") != "AverageValue" or raw is None:
        return Evaluation(None, None, desc, f"target type {target.get('type')} is not "
                          "supported for resource metrics", "InvalidMetricSourceType")
    goal = float(cpu_millis(raw)) if name == "cpu" else float(bytes_value(raw))
    if not any(p in samples for p in pods.ready):
        return Evaluation(None, None, desc, f"no {name} metrics for any ready pod of "
                          f"{len(pods.ready)}", "FailedGetResourceMetric")
    prop = propose(current, samples, target=goal, ready=pods.ready, unready=pods.unready,
                   tolerance=tolerance, unready_counts_as_zero=name == "cpu")
    cur = {"type": "Resource", "resource": {"name": name, "current": {
        "averageValue": _fmt_quantity(prop.current, resource=name)}}}
    return Evaluation(_described(prop, f"{_fmt_quantity(prop.current, resource=name)} per pod "
                                       f"(target {raw})"), cur, desc)


def _pods(spec: Obj, current: int, pods: PodSet, values: Mapping[str, PodValues],
          tolerance: float) -> Evaluation:
    name = (spec.get("metric") or {}).get("name", "")
    target = spec.get("target") or {}
    desc = f"pods metric {name}"
    if name not in MESH_METRICS:
        return Evaluation(None, None, desc, f"unknown pods metric {name!r} (known: "
                          f"{', '.join(MESH_METRICS)})", "FailedGetPodsMetric")
    raw = target.get("averageValue")
    if target.get("type") != "AverageValue" or raw is None:
        return Evaluation(None, None, desc, "pods metrics need an AverageValue target",
                          "InvalidMetricSourceType")
    goal = float(parse_quantity(raw))
    samples = {p: v.mesh[name] for p, v in values.items()
               if name in v.mesh and (p in pods.ready or p in pods.unready)}
    if not any(p in samples for p in pods.ready):
        return Evaluation(None, None, desc, f"no {name} from the mesh for any ready pod of "
                          f"{len(pods.ready)} (not meshed, or no sample yet)",
                          "FailedGetPodsMetric")
    prop = propose(current, samples, target=goal, ready=pods.ready, unready=pods.unready,
                   tolerance=tolerance)
    cur = {"type": "Pods", "pods": {"metric": {"name": name},
                                    "current": {"averageValue": _fmt_quantity(prop.current)}}}
    return Evaluation(_described(prop, f"{prop.current:.3g} per pod (target {raw})"), cur, desc)


def _described(prop: Proposal, numbers: str) -> Proposal:
    return Proposal(prop.replicas, prop.ratio, prop.current, f"{numbers}, {prop.reason}")
