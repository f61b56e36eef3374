"""``meshctl top pods|nodes``: current usage from the metrics API, as ``kubectl top`` prints it.

- ``meshctl top pods [-n NS | -A] [-l SELECTOR]``: NAME, CPU(cores) in millicores,
  MEMORY(bytes) in Mi, and the mesh's view of each meshed Pod: RPS (inbound requests per
  second), P99 (latency over the collector's window), IN-FLIGHT; ``-`` for a Pod without
  a sidecar (or without requests in the window, for P99);
- ``meshctl top nodes``: NAME, CPU(cores), CPU%, MEMORY(bytes), MEMORY% (of the Node's
  allocatable). A Node's usage is the sum of its Pods' (what the agents report).

Figures come from ``/apis/metrics.k8s.io/v1beta1`` (``control/api/metrics_api.py``), fed
by the collector in the controller manager; with no samples yet the command says so and
exits 1, as kubectl does.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from control.cli.common import OK, add_namespace_flags, client_parent, run_client
from control.cli.printers import render_table
from control.quantity import bytes_value, cpu_millis

if TYPE_CHECKING:
    from control.client.rest import ApiClient

Obj = dict[str, Any]
PREFIX = "/apis/metrics.k8s.io/v1beta1"
NOT_AVAILABLE = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="show pod or node CPU, memory and mesh traffic",
                       description="Show current CPU, memory and mesh traffic from the "
                                   "metrics API.")
    what = p.add_subparsers(dest="what", metavar="pods|nodes", required=True)
    pods = what.add_parser("pods", aliases=["pod", "po"], parents=[client_parent()],
                           help="usage per pod (and its sidecar's traffic)")
    add_namespace_flags(pods, all_namespaces=True)
    pods.add_argument("-l", "--selector", help="label selector of the pods to show")
    pods.set_defaults(handler=lambda args: run_client(args, top_pods))
    nodes = what.add_parser("nodes", aliases=["node", "no"], parents=[client_parent()],
                            help="usage per node")
    nodes.set_defaults(handler=lambda args: run_client(args, top_nodes))


def _cpu(millis: float) -> str:
    return f"{math.ceil(millis)}m"


def _mem(n: float) -> str:
    return f"{math.ceil(n / 2**20)}Mi"


def pod_usage(item: Obj) -> tuple[float, float]:
    cs = item.get("containers") or ()
    return (sum(cpu_millis(c["usage"]["cpu"]) for c in cs),
            sum(bytes_value(c["usage"]["memory"]) for c in cs))


def pod_row(item: Obj, *, namespaces: bool) -> list[str]:
    cpu, mem = pod_usage(item)
    mesh = item.get("mesh")
    if mesh:
        p99 = mesh.get("latencyP99Seconds")
        traffic = [f"{mesh['requestsPerSecond']:.1f}",
                   "-" if p99 is None else f"{p99 * 1000:.0f}ms", f"{mesh['inFlight']:g}"]
    else:
        traffic = ["-", "-", "-"]
    md = item["metadata"]
    return [*([md["namespace"]] if namespaces else []), md["name"], _cpu(cpu), _mem(mem),
            *traffic]


async def top_pods(api: ApiClient, args: argparse.Namespace) -> int:
    everywhere = getattr(args, "all_namespaces", False)
    url = f"{PREFIX}/pods" if everywhere else f"{PREFIX}/namespaces/{args.namespace}/pods"
    items = (await api.request("GET", url)).get("items") or []
    if args.selector:
        pods, _ = await api.list_all("pods", namespace=None if everywhere else args.namespace,
                                     label_selector=args.selector)
        wanted = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}
        items = [i for i in items
                 if (i["metadata"]["namespace"], i["metadata"]["name"]) in wanted]
    if not items:
        where = "any namespace" if everywhere else f"namespace {args.namespace!r}"
        print(f"error: metrics not available yet: no pod in {where} has been sampled "
              f"recently (the collector runs in the controller manager)")
        return NOT_AVAILABLE
    header = [*(["NAMESPACE"] if everywhere else []), "NAME", "CPU(cores)", "MEMORY(bytes)",
              "RPS", "P99", "IN-FLIGHT"]
    print(render_table(header, [pod_row(i, namespaces=everywhere) for i in items]), end="")
    return OK


async def top_nodes(api: ApiClient, args: argparse.Namespace) -> int:
    items = (await api.request("GET", f"{PREFIX}/nodes")).get("items") or []
    if not items:
        print("error: metrics not available yet: no node has been sampled recently")
        return NOT_AVAILABLE
    nodes, _ = await api.list_all("nodes")
    allocatable = {n["metadata"]["name"]: (n.get("status") or {}).get("allocatable") or {}
                   for n in nodes}
    rows = []
    for i in items:
        name = i["metadata"]["name"]
        cpu, mem = cpu_millis(i["usage"]["cpu"]), bytes_value(i["usage"]["memory"])
        alloc = allocatable.get(name, {})
        cpu_pct = f"{100 * cpu / cpu_millis(alloc['cpu']):.0f}%" if alloc.get("cpu") else \
            "<unknown>"
        mem_pct = f"{100 * mem / bytes_value(alloc['memory']):.0f}%" if alloc.get("memory") \
            else "<unknown>"
        rows.append([name, _cpu(cpu), cpu_pct, _mem(mem), mem_pct])
    print(render_table(["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"], rows),
          end="")
    return OK
