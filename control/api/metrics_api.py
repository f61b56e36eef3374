"""The metrics API: ``metrics.k8s.io/v1beta1`` (Pods and Nodes) plus the mesh's numbers.

Kubernetes serves resource metrics from metrics-server behind an aggregated API; here the
API server itself holds them, in memory (:class:`~control.metrics.window.MetricsWindow`,
never in the store: samples are seconds-old measurements, not desired state). The
collector in the controller manager (``control/metrics/collector.py``) pushes them:

- ``POST /apis/metrics.k8s.io/v1beta1/samples`` with ``{"pods": [...], "nodes": [...]}``
  (the wire format of ``window.py``). Allowed to ``admin``, and to a ``node`` user for
  its own Node and the Pods bound to it (so an agent could push its own figures). The
  whole body is validated before anything is kept; a bad field is a 422 naming it.

and everybody who may read the cluster (``admin``, ``viewer``) reads them:

- ``GET /apis/metrics.k8s.io/v1beta1/pods``, ``.../namespaces/{ns}/pods`` and
  ``.../namespaces/{ns}/pods/{name}`` → ``PodMetricsList`` / ``PodMetrics``: per container
  ``usage.cpu`` (millicores, ``"250m"``) and ``usage.memory`` (``"65536Ki"``), as
  Kubernetes' metrics API has them, plus for meshed Pods a ``mesh`` object
  (``requestsPerSecond``, ``latencyP99Seconds``, ``inFlight``, ``requests``). Only Pods
  sampled within the TTL are listed (a silent Pod is *missing*, not stale); with
  ``?history=true`` every Pod with retained samples is listed, each with its samples
  (``history``) and ``stale: true`` when its latest is older than the TTL (what the
  capacity report reads);
- ``GET /apis/metrics.k8s.io/v1beta1/nodes`` and ``.../nodes/{name}`` → ``NodeMetrics``;
- discovery: ``/apis/metrics.k8s.io`` and ``/apis/metrics.k8s.io/v1beta1``.

``add_routes`` must run before the generic ``/apis/{group}/...`` routes (``server.py``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from control.api.auth import USER, User
from control.api.codec import json_response, read_body
from control.api.errors import ApiError, forbidden
from control.api.handlers import API
from control.api.resources import by_path
from control.metrics.window import (
    MetricsWindow,
    NodeSample,
    PodSample,
    SampleError,
    mesh_to_json,
    parse_push,
)

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
PREFIX = f"/apis/{GROUP}/{VERSION}"
WINDOW = web.AppKey("metrics_window", MetricsWindow)
READERS = frozenset({"admin", "viewer"})


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usage(cpu_millis: float, memory_bytes: int) -> dict[str, str]:
    return {"cpu": f"{math.ceil(cpu_millis)}m", "memory": f"{math.ceil(memory_bytes / 1024)}Ki"}


def pod_metrics(s: PodSample, *, history: list[PodSample] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "PodMetrics", "apiVersion": f"{GROUP}/{VERSION}",
        "metadata": {"name": s.name, "namespace": s.namespace,
                     "creationTimestamp": _stamp(s.timestamp)},
        "timestamp": _stamp(s.timestamp), "window": f"{s.window:g}s",
        "containers": [{"name": c.name, "usage": _usage(c.cpu_millis, c.memory_bytes)}
                       for c in s.containers]}
    if s.node:
        out["node"] = s.node
    if s.mesh is not None:
        out["mesh"] = mesh_to_json(s.mesh)
    if history is not None:
        out["history"] = [{"timestamp": h.timestamp, "window": h.window,
                           "cpuMillicores": h.cpu_millis, "memoryBytes": h.memory_bytes,
                           **({"mesh": mesh_to_json(h.mesh)} if h.mesh else {})}
                          for h in history]
    return out


def node_metrics(s: NodeSample) -> dict[str, Any]:
    return {"kind": "NodeMetrics", "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {"name": s.name, "creationTimestamp": _stamp(s.timestamp)},
            "timestamp": _stamp(s.timestamp), "window": f"{s.window:g}s",
            "usage": _usage(s.cpu_millis, s.memory_bytes)}


def _require_reader(user: User, what: str) -> None:
    if not user.roles & READERS:
        raise forbidden(user.name, "get", what, GROUP,
                        why=f"roles {sorted(user.roles)} do not allow reading metrics")


def _list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": f"{GROUP}/{VERSION}", "metadata": {}, "items": items}


def add_routes(app: web.Application, *, window: MetricsWindow | None = None,
               clock: Callable[[], float] = time.time) -> None:
    """Serve the metrics API from ``window`` (a new one by default) on ``app``."""
    app[WINDOW] = window if window is not None else MetricsWindow()

    def win(request: web.Request) -> MetricsWindow:
        return request.app[WINDOW]

    async def discovery_group(request: web.Request) -> web.Response:
        gv = {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
        return json_response({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
                              "versions": [gv], "preferredVersion": gv})

    async def discovery_version(request: web.Request) -> web.Response:
        res = [{"name": n, "singularName": "", "namespaced": ns, "kind": k,
                "verbs": ["get", "list"]}
               for n, ns, k in (("pods", True, "PodMetrics"), ("nodes", False, "NodeMetrics"))]
        return json_response({"kind": "APIResourceList", "apiVersion": "v1",
                              "groupVersion": f"{GROUP}/{VERSION}", "resources": res})

    async def push(request: web.Request) -> web.Response:
        user: User = request[USER]
        if not user.roles & {"admin", "node"}:
            raise forbidden(user.name, "create", "samples", GROUP,
                            why=f"roles {sorted(user.roles)} may not push metrics")
        raw = await read_body(request, request.app[API].body_limit)
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {e}") from e
        try:
            pods, nodes = parse_push(body)
        except SampleError as e:
            raise ApiError(422, "Invalid", f"metrics samples are invalid: {e}") from e
        if "admin" not in user.roles:
            await _check_node_push(request, user, pods, nodes)
        win(request).add(pods, nodes, clock())
        return json_response({"kind": "Status", "apiVersion": "v1", "status": "Success",
                              "message": f"kept {len(pods)} pod and {len(nodes)} node samples"},
                             201)

    def history_wanted(request: web.Request) -> bool:
        return request.query.get("history", "").lower() in ("true", "1")

    async def list_pods(request: web.Request) -> web.Response:
        _require_reader(request[USER], "pods.metrics")
        ns = request.match_info.get("namespace")
        w = win(request)
        now = clock()
        if not history_wanted(request):
            items = [pod_metrics(s) for s in w.current_pods(now, ns)]
        else:  # every Pod with retained samples; a silent one is marked stale
            items = []
            for pns, name in w.pods_in(ns):
                hist = w.pod_history(pns, name)
                item = pod_metrics(hist[-1], history=hist)
                item["stale"] = hist[-1].timestamp < now - w.ttl
                items.append(item)
        return json_response(_list("PodMetricsList", items))

    async def get_pod(request: web.Request) -> web.Response:
        _require_reader(request[USER], "pods.metrics")
        ns, name = request.match_info["namespace"], request.match_info["name"]
        w = win(request)
        found = [s for s in w.current_pods(clock(), ns) if s.name == name]
        if not found:
            raise ApiError(404, "NotFound", f'podmetrics.{GROUP} "{name}" not found in '
                                            f'namespace "{ns}" (no sample in the last '
                                            f'{w.ttl:g}s)')
        return json_response(pod_metrics(found[0], history=w.pod_history(ns, name)
                                          if history_wanted(request) else None))

    async def list_nodes(request: web.Request) -> web.Response:
        _require_reader(request[USER], "nodes.metrics")
        return json_response(_list("NodeMetricsList",
                                   [node_metrics(s) for s in win(request).current_nodes(clock())]))

    async def get_node(request: web.Request) -> web.Response:
        _require_reader(request[USER], "nodes.metrics")
        name = request.match_info["name"]
        found = [s for s in win(request).current_nodes(clock()) if s.name == name]
        if not found:
            raise ApiError(404, "NotFound", f'nodemetrics.{GROUP} "{name}" not found')
        return json_response(node_metrics(found[0]))

    r = app.router
    r.add_get(f"/apis/{GROUP}", discovery_group)
    r.add_get(PREFIX, discovery_version)
    r.add_post(f"{PREFIX}/samples", push)
    r.add_get(f"{PREFIX}/pods", list_pods)
    r.add_get(f"{PREFIX}/namespaces/{{namespace}}/pods", list_pods)
    r.add_get(f"{PREFIX}/namespaces/{{namespace}}/pods/{{name}}", get_pod)
    r.add_get(f"{PREFIX}/nodes", list_nodes)
    r.add_get(f"{PREFIX}/nodes/{{name}}", get_node)


async def _check_node_push(request: web.Request, user: User, pods: list[PodSample],
                           nodes: list[NodeSample]) -> None:
    """A node may report only itself and the Pods bound to it (checked in the store)."""
    mine = user.node_name
    for n in nodes:
        if n.name != mine:
            raise forbidden(user.name, "create", "samples", GROUP,
                            why=f"node {mine!r} may not report node {n.name!r}")
    objects = request.app[API].objects
    pods_res = by_path("", "v1", "pods")
    for p in pods:
        try:
            obj, _ = await objects.storage.get(pods_res, p.namespace, p.name)
        except ApiError:
            obj = {}
        if (obj.get("spec") or {}).get("nodeName") != mine:
            raise forbidden(user.name, "create", "samples", GROUP,
                            why=f"pod {p.namespace}/{p.name} is not bound to node {mine!r}")
