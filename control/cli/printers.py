"""How ``meshctl get`` prints objects: kubectl-like tables per kind, YAML, JSON, names.

Each kind has a list of :class:`Column` (header, cell function, wide-only flag),
modelled on kubectl's printers (``READY``, ``STATUS``, ``RESTARTS`` for Pods, ``READY
UP-TO-DATE AVAILABLE`` for Deployments, ...); kinds without a table get ``NAME AGE``.
``-A`` adds a ``NAMESPACE`` column, ``-o wide`` the wide-only columns. Cells are
computed from the object alone plus ``now`` (ages), so tests pin the output exactly.

Neighbours: :mod:`control.cli.get` (uses these), :mod:`control.cli.describe`.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:
    from control.client.resources import Resource

Obj = dict[str, Any]
OutputFormat = Literal["table", "wide", "yaml", "json", "name"]
NONE = "<none>"


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    cell: Callable[[Obj, float], str]
    wide_only: bool = False


# -- small helpers -------------------------------------------------------------------

def _meta(o: Obj) -> Obj:
    return o.get("metadata") or {}


def _dig(o: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(o, dict):
            return default
        o = o.get(p)
    return default if o is None else o


def parse_time(ts: str | None) -> float | None:
    """RFC 3339 (``2026-11-26T20:23:18Z``, fractional seconds allowed) -> epoch seconds."""
    if not ts:
        return None
    try:
        base = ts.rstrip("Z").split(".")[0].split("+")[0]
        return float(calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's ``HumanDuration``: 45s, 3m12s, 2h5m, 3d4h, 400d, 2y10d."""
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    y = d // 365
    if d < 365 * 8:
        return f"{y}y{d % 365}d" if d % 365 else f"{y}y"
    return f"{y}y"


def age(ts: str | None, now: float) -> str:
    t = parse_time(ts)
    return "<unknown>" if t is None else human_duration(now - t)


def _name(o: Obj, _now: float) -> str:
    return str(_meta(o).get("name", ""))


def _age(o: Obj, now: float) -> str:
    return age(_meta(o).get("creationTimestamp"), now)


def selector_string(sel: Any) -> str:
    if not isinstance(sel, dict) or not sel:
        return NONE
    match = sel.get("matchLabels") if "matchLabels" in sel or "matchExpressions" in sel else sel
    parts = [f"{k}={v}" for k, v in sorted((match or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        parts.append(f"{expr.get('key')} {str(expr.get('operator', '')).lower()} "
                     f"({','.join(expr.get('values') or [])})")
    return ",".join(parts) or NONE


def _containers(o: Obj) -> list[Obj]:
    return _dig(o, "spec", "template", "spec", "containers", default=[]) or []


# -- per kind ------------------------------------------------------------------------

def pod_status(pod: Obj) -> tuple[str, int, int, int]:
    """(STATUS, ready containers, total containers, restarts) as kubectl computes them."""
    status = pod.get("status") or {}
    containers = _dig(pod, "spec", "containers", default=[]) or []
    reason = status.get("reason") or status.get("phase") or "Pending"
    ready = restarts = 0
    for cs in status.get("containerStatuses") or []:
        restarts += int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated and terminated.get("reason"):
            reason = terminated["reason"]
        elif terminated:
            sig = terminated.get("signal")
            reason = f"Signal:{sig}" if sig else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif cs.get("ready") and "running" in state:
            ready += 1
    if _meta(pod).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    # The agent reports injected containers (the mesh sidecar) that the spec does not
    # list: count what runs, as kubectl shows an injected Istio sidecar as 2/2.
    total = max(len(containers), len(status.get("containerStatuses") or []))
    return reason, ready, total, restarts


def _pod_ready(o: Obj, _n: float) -> str:
    _, ready, total, _ = pod_status(o)
    return f"{ready}/{total}"


def _pod_restarts(o: Obj, _n: float) -> str:
    return str(pod_status(o)[3])


def service_ports(o: Obj, _n: float) -> str:
    out = []
    for p in _dig(o, "spec", "ports", default=[]) or []:
        port = f"{p.get('port')}:{p['nodePort']}" if p.get("nodePort") else f"{p.get('port')}"
        out.append(f"{port}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or NONE


def endpoints_summary(o: Obj, _n: float) -> str:
    addrs = []
    for subset in o.get("subsets") or []:
        ports = subset.get("ports") or [{}]
        for a in subset.get("addresses") or []:
            for p in ports:
                addrs.append(f"{a.get('ip')}:{p['port']}" if p.get("port") else str(a.get("ip")))
    if not addrs:
        return NONE
    shown = ",".join(addrs[:3])
    return f"{shown} + {len(addrs) - 3} more..." if len(addrs) > 3 else shown


def node_status(o: Obj) -> str:
    conds = {c.get("type"): c.get("status") for c in _dig(o, "status", "conditions",
                                                           default=[]) or []}
    ready = conds.get("Ready")
    out = "Ready" if ready == "True" else "NotReady" if ready == "False" else "Unknown"
    if _dig(o, "spec", "unschedulable"):
        out += ",SchedulingDisabled"
    return out


def _node_roles(o: Obj, _n: float) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix):] for k in (_meta(o).get("labels") or {})
                   if k.startswith(prefix))
    return ",".join(roles) or NONE


def _node_ip(o: Obj, _n: float) -> str:
    for a in _dig(o, "status", "addresses", default=[]) or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address"))
    return NONE


def _event_object(o: Obj, _n: float) -> str:
    io = o.get("involvedObject") or {}
    return f"{str(io.get('kind', '')).lower()}/{io.get('name', '')}"


def _event_last_seen(o: Obj, now: float) -> str:
    ts = o.get("lastTimestamp") or o.get("eventTime") or o.get("firstTimestamp") \
        or _meta(o).get("creationTimestamp")
    return age(ts, now)


def hpa_metrics(o: Obj) -> list[tuple[str, str, str]]:
    """(metric name, current, target) per metric of an HPA's spec, current from status."""
    current = {(_metric_name(m)): m for m in _dig(o, "status", "currentMetrics", default=[])
               or []}
    out = []
    for m in _dig(o, "spec", "metrics", default=[]) or []:
        name = _metric_name(m)
        cur = _metric_value(current[name], "current") if name in current else "<unknown>"
        out.append((name, cur, _metric_value(m, "target")))
    return out


def hpa_targets(o: Obj) -> str:
    return ", ".join(f"{name}: {cur}/{target}" for name, cur, target in hpa_metrics(o)) or NONE


def _metric_name(m: Obj) -> str:
    kind = m.get("type", "")
    body = m.get(str(kind)[:1].lower() + str(kind)[1:]) or {}
    return str(body.get("name") or _dig(body, "metric", "name") or kind)


def _metric_value(m: Obj, which: str) -> str:
    kind = m.get("type", "")
    body = m.get(str(kind)[:1].lower() + str(kind)[1:]) or {}
    t = body.get(which) or {}
    if "averageUtilization" in t:
        return f"{t['averageUtilization']}%"
    for k in ("averageValue", "value"):
        if k in t:
            return str(t[k])
    return "<unknown>"


def _c(header: str, cell: Callable[[Obj, float], str], wide: bool = False) -> Column:
    return Column(header, cell, wide)


def _field(*path: str, default: str = "0") -> Callable[[Obj, float], str]:
    return lambda o, _n: str(_dig(o, *path, default=default))


TABLES: dict[str, list[Column]] = {
    "pods": [
        _c("NAME", _name), _c("READY", _pod_ready),
        _c("STATUS", lambda o, _n: pod_status(o)[0]), _c("RESTARTS", _pod_restarts),
        _c("AGE", _age),
        _c("IP", _field("status", "podIP", default=NONE), True),
        _c("NODE", _field("spec", "nodeName", default=NONE), True),
    ],
    "deployments": [
        _c("NAME", _name),
        _c("READY", lambda o, _n: f"{_dig(o, 'status', 'readyReplicas', default=0)}/"
                                  f"{_dig(o, 'spec', 'replicas', default=0)}"),
        _c("UP-TO-DATE", _field("status", "updatedReplicas")),
        _c("AVAILABLE", _field("status", "availableReplicas")), _c("AGE", _age),
        _c("CONTAINERS", lambda o, _n: ",".join(c.get("name", "") for c in _containers(o)),
           True),
        _c("IMAGES", lambda o, _n: ",".join(c.get("image", "") for c in _containers(o)), True),
        _c("SELECTOR", lambda o, _n: selector_string(_dig(o, "spec", "selector")), True),
    ],
    "replicasets": [
        _c("NAME", _name), _c("DESIRED", _field("spec", "replicas")),
        _c("CURRENT", _field("status", "replicas")),
        _c("READY", _field("status", "readyReplicas")), _c("AGE", _age),
        _c("CONTAINERS", lambda o, _n: ",".join(c.get("name", "") for c in _containers(o)),
           True),
        _c("IMAGES", lambda o, _n: ",".join(c.get("image", "") for c in _containers(o)), True),
        _c("SELECTOR", lambda o, _n: selector_string(_dig(o, "spec", "selector")), True),
    ],
    "services": [
        _c("NAME", _name), _c("TYPE", _field("spec", "type", default="ClusterIP")),
        _c("CLUSTER-IP", _field("spec", "clusterIP", default=NONE)),
        _c("EXTERNAL-IP", lambda o, _n: ",".join(_dig(o, "spec", "externalIPs", default=[]))
           or NONE),
        _c("PORT(S)", service_ports), _c("AGE", _age),
        _c("SELECTOR", lambda o, _n: selector_string(_dig(o, "spec", "selector")), True),
    ],
    "endpoints": [_c("NAME", _name), _c("ENDPOINTS", endpoints_summary), _c("AGE", _age)],
    "nodes": [
        _c("NAME", _name), _c("STATUS", lambda o, _n: node_status(o)),
        _c("ROLES", _node_roles), _c("AGE", _age),
        _c("VERSION", _field("status", "nodeInfo", "kubeletVersion", default=NONE)),
        _c("INTERNAL-IP", _node_ip, True),
        _c("CONTAINER-RUNTIME",
           _field("status", "nodeInfo", "containerRuntimeVersion", default=NONE), True),
    ],
    "namespaces": [_c("NAME", _name), _c("STATUS", _field("status", "phase", default=NONE)),
                   _c("AGE", _age)],
    "events": [
        _c("LAST SEEN", _event_last_seen), _c("TYPE", _field("type", default=NONE)),
        _c("REASON", _field("reason", default=NONE)), _c("OBJECT", _event_object),
        _c("MESSAGE", _field("message", default="")),
    ],
    "horizontalpodautoscalers": [
        _c("NAME", _name),
        _c("REFERENCE", lambda o, _n: f"{_dig(o, 'spec', 'scaleTargetRef', 'kind', default='')}"
                                      f"/{_dig(o, 'spec', 'scaleTargetRef', 'name', default='')}"),
        _c("TARGETS", lambda o, _n: hpa_targets(o)),
        _c("MINPODS", _field("spec", "minReplicas", default="1")),
        _c("MAXPODS", _field("spec", "maxReplicas")),
        _c("REPLICAS", _field("status", "currentReplicas")), _c("AGE", _age),
    ],
    "trafficpolicies": [
        _c("NAME", _name), _c("SERVICE", _field("spec", "service", default=NONE)),
        _c("SECTIONS", lambda o, _n: ",".join(k for k in (o.get("spec") or {})
                                              if k != "service") or NONE),
        _c("AGE", _age),
    ],
}
DEFAULT_TABLE = [_c("NAME", _name), _c("AGE", _age)]


def columns_for(res: Resource, *, wide: bool = False, namespaces: bool = False) -> list[Column]:
    cols = [c for c in TABLES.get(res.plural, DEFAULT_TABLE) if wide or not c.wide_only]
    if namespaces and res.namespaced:
        cols.insert(0, Column("NAMESPACE", lambda o, _n: str(_meta(o).get("namespace", ""))))
    return cols


def table_rows(res: Resource, objs: Iterable[Obj], *, now: float, wide: bool = False,
               namespaces: bool = False) -> tuple[list[str], list[list[str]]]:
    cols = columns_for(res, wide=wide, namespaces=namespaces)
    return [c.header for c in cols], [[c.cell(o, now) for c in cols] for o in objs]


def render_table(header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell plus three spaces (kubectl's tabwriter)."""
    lines = ([list(header)] if header else []) + [list(r) for r in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) if i < len(line) - 1 else cell
                 for i, cell in enumerate(line)]
        out.append("   ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def as_list(res: Resource, objs: Sequence[Obj]) -> Obj:
    """The ``kind: List`` document ``-o yaml|json`` prints for several objects."""
    return {"apiVersion": "v1", "kind": "List", "items": list(objs), "metadata": {}}


def dump(data: Obj, fmt: Literal["yaml", "json"]) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def object_name(res: Resource, obj: Obj) -> str:
    """``-o name``: ``deployment.apps/web``."""
    kind = res.kind.lower()
    prefix = f"{kind}.{res.group}" if res.group else kind
    return f"{prefix}/{_meta(obj).get('name', '')}"
