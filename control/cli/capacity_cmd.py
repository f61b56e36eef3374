"""``meshctl capacity SERVICE``: the capacity report of ``control/autoscaler/capacity.py``.

Gathers the inputs through the API: the Service's selector → its Pods; the Deployments
whose Pod template the selector matches → current replicas, and the HPAs scaling them →
maximum replicas (a Deployment without an HPA counts its current replicas as its
maximum) and the latency target (an HPA's ``mesh_latency_p99_seconds`` target, else
``--latency-target``); the metrics API's history of those Pods (``?history=true``) →
the mesh observations; their latest samples (unless stale) → the load now. Prints the
report; exits 0 whether or not there was enough data for an estimate (the report says
which).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from control.autoscaler.capacity import Observation, estimate, render
from control.autoscaler.source import MESH_P99
from control.cli.common import OK, UsageError, add_namespace_flags, client_parent, run_client
from control.quantity import parse_quantity

if TYPE_CHECKING:
    from control.client.rest import ApiClient

Obj = dict[str, Any]
DEFAULT_LATENCY_TARGET = 0.25  # s; used only when no HPA names a p99 target


def _seconds(text: str) -> float:
    t = text.strip()
    try:
        value = float(t[:-2]) / 1000 if t.endswith("ms") else float(t.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--latency-target must be like 250ms or 0.25s, "
                                         f"got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--latency-target must be positive, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capacity", parents=[client_parent()],
                       help="estimate a service's capacity and headroom",
                       description="Estimate from observed per-replica throughput at the "
                                   "latency target how many requests/s a Service can take "
                                   "at its current and maximum replicas, and its headroom.")
    p.add_argument("service", help="the Service's name")
    p.add_argument("--latency-target", type=_seconds, default=None, metavar="DURATION",
                   help="p99 latency target (e.g. 250ms); default: the HPA's "
                        f"{MESH_P99} target, else {DEFAULT_LATENCY_TARGET * 1000:g}ms")
    add_namespace_flags(p)
    p.set_defaults(handler=lambda args: run_client(args, capacity_verb))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _hpa_latency_target(hpa: Obj) -> float | None:
    for m in (hpa.get("spec") or {}).get("metrics") or ():
        body = m.get("pods") or {}
        if m.get("type") == "Pods" and (body.get("metric") or {}).get("name") == MESH_P99:
            raw = (body.get("target") or {}).get("averageValue")
            if raw is not None:
                return float(parse_quantity(raw))
    return None


async def capacity_verb(api: ApiClient, args: argparse.Namespace) -> int:
    ns = args.namespace
    svc = await api.get("services", args.service, namespace=ns)
    selector = (svc.get("spec") or {}).get("selector") or {}
    if not selector:
        raise UsageError(f"service {args.service!r} has no selector: its pods are not known")
    label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods, _ = await api.list_all("pods", namespace=ns, label_selector=label_selector)
    names = {p["metadata"]["name"] for p in pods}
    deployments, _ = await api.list_all("deployments", namespace=ns)
    hpas, _ = await api.list_all("horizontalpodautoscalers", namespace=ns)
    current = maximum = 0
    target, target_source, sources = None, "", []
    for d in deployments:
        labels = ((d.get("spec") or {}).get("template") or {}).get("metadata", {}).get(
            "labels") or {}
        if not _matches(selector, labels):
            continue
        replicas = int((d.get("spec") or {}).get("replicas", 1))
        current += replicas
        name = d["metadata"]["name"]
        hpa = next((h for h in hpas if (h["spec"].get("scaleTargetRef") or {}).get("kind")
                    == "Deployment" and h["spec"]["scaleTargetRef"].get("name") == name), None)
        if hpa is None:
            maximum += replicas
            sources.append(f"deployment {name}, no autoscaler")
            continue
        maximum += max(int(hpa["spec"]["maxReplicas"]), replicas)
        sources.append(f"deployment {name}, autoscaler {hpa['metadata']['name']}")
        hpa_target = _hpa_latency_target(hpa)
        if hpa_target is not None and target is None:
            target, target_source = hpa_target, f"autoscaler {hpa['metadata']['name']}"
    if not sources:
        current = maximum = len(pods)
        sources.append("pods of the service; no deployment matches")
    if args.latency_target is not None:
        target, target_source = args.latency_target, "--latency-target"
    elif target is None:
        target, target_source = DEFAULT_LATENCY_TARGET, "default; no autoscaler sets one"
    metrics = await api.request("GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods",
                                params={"history": "true"})
    observations, load = [], 0.0
    for item in metrics.get("items") or ():
        name = item["metadata"]["name"]
        if name not in names:
            continue
        if not item.get("stale"):
            load += float((item.get("mesh") or {}).get("requestsPerSecond") or 0.0)
        for h in item.get("history") or ():
            m = h.get("mesh")
            if m:
                observations.append(Observation(name, float(h["timestamp"]),
                                                float(m["requestsPerSecond"]),
                                                m.get("latencyP99Seconds"),
                                                int(m.get("requests") or 0)))
    report = estimate(observations, latency_target=target, current_replicas=current,
                      max_replicas=maximum, current_rps=load)
    print(render(report, service=f"{ns}/{args.service}", target_source=target_source,
                 replicas_source="; ".join(sources)), end="")
    return OK
