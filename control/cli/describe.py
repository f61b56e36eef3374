"""``meshctl describe``: one object in readable form, followed by its Events.

``meshctl describe TYPE NAME`` (or ``TYPE/NAME``; ``TYPE`` alone describes every object
of the type in the namespace). The header is kubectl's (Name, Namespace, Labels,
Annotations without the last-applied copy, CreationTimestamp, Controlled By); then a
summary for the kinds people describe most (Pod: node, status, containers and their
states, conditions; Deployment/ReplicaSet: replicas line, selector, strategy,
conditions; Node: conditions, addresses, capacity; Service: selector, ports; HPA:
current / target per metric, replica bounds, conditions) and the
remaining ``spec``/``status`` as an indented tree (a Deployment also lists its
ReplicaSets, a ReplicaSet its Pods by phase); then the object's Events, which the
controllers record with ``involvedObject`` pointing at it (found with a field selector
on ``involvedObject.kind`` and ``involvedObject.name``), oldest first.

Neighbours: :mod:`control.cli.printers` (ages, pod status), :mod:`control.cli.get`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from control.cli import printers
from control.cli.common import OK, add_namespace_flags, client_parent, run_client
from control.cli.common import split_type_and_names as split

if TYPE_CHECKING:
    from control.client.resources import Resource
    from control.client.rest import ApiClient

# kubectl's annotation holding the last applied manifest (control.client.manifests):
# noise in a description.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

Obj = dict[str, Any]
INDENT = "  "


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", parents=[client_parent()],
                       help="show an object with its status and Events",
                       description="Show an object in detail, with its Events.")
    p.add_argument("words", nargs="+", metavar="TYPE[/NAME]",
                   help="a type then names (deploy web), or TYPE/NAME words")
    add_namespace_flags(p)
    p.set_defaults(handler=lambda args: run_client(args, describe_verb))


async def describe_verb(api: ApiClient, args: argparse.Namespace) -> int:
    from control.client.resources import lookup

    kind, names = split(args.words)
    res = lookup(kind)
    ns = args.namespace if res.namespaced else None
    if names:
        objs = [await api.get(res, n, namespace=ns) for n in names]
    else:
        objs, _ = await api.list_all(res, namespace=ns)
    now = time.time()
    for i, obj in enumerate(objs):
        events = await events_for(api, res, obj=obj)
        related = await dependents_for(api, res, obj=obj)
        if i:
            sys.stdout.write("\n\n")
        sys.stdout.write(describe(res, obj, events=events, now=now, related=related))
    sys.stdout.flush()
    return OK


async def events_for(api: ApiClient, res: Resource, *, obj: Obj) -> list[Obj]:
    """The Events whose involvedObject is ``obj`` (by kind and name, and uid when both
    sides have one), oldest first."""
    meta = obj.get("metadata") or {}
    fields = f"involvedObject.kind={res.kind},involvedObject.name={meta.get('name')}"
    items, _ = await api.list_all("events", namespace=meta.get("namespace"),
                                  field_selector=fields)
    uid = meta.get("uid")
    items = [e for e in items
             if not (uid and (e.get("involvedObject") or {}).get("uid"))
             or e["involvedObject"]["uid"] == uid]
    return sorted(items, key=_event_time)


async def dependents_for(api: ApiClient, res: Resource, *,
                         obj: Obj) -> list[tuple[str, str]]:
    """Lines about what ``obj`` controls: a Deployment's ReplicaSets (kubectl's
    NewReplicaSet/OldReplicaSets in one line), a ReplicaSet's Pods by phase."""
    meta = obj.get("metadata") or {}
    uid, ns = meta.get("uid"), meta.get("namespace")
    if not uid or res.plural not in ("deployments", "replicasets"):
        return []
    kind = "replicasets" if res.plural == "deployments" else "pods"
    items, _ = await api.list_all(kind, namespace=ns)
    owned = [o for o in items if any(r.get("uid") == uid and r.get("controller")
                                     for r in (o.get("metadata") or {}).get("ownerReferences")
                                     or [])]
    if kind == "replicasets":
        parts = [f"{rs['metadata']['name']} ({(rs.get('status') or {}).get('readyReplicas', 0)}"
                 f"/{(rs.get('spec') or {}).get('replicas', 0)} ready)"
                 for rs in sorted(owned, key=lambda o: o["metadata"].get("creationTimestamp", ""),
                                  reverse=True)]
        return [("ReplicaSets", ", ".join(parts) or "<none>")]
    phases = [(p.get("status") or {}).get("phase", "Pending") for p in owned]
    return [("Pods Status", f"{phases.count('Running')} Running / "
                            f"{phases.count('Pending')} Waiting / "
                            f"{phases.count('Succeeded')} Succeeded / "
                            f"{phases.count('Failed')} Failed")]


def _event_time(e: Obj) -> float:
    for k in ("lastTimestamp", "eventTime", "firstTimestamp"):
        t = printers.parse_time(e.get(k))
        if t is not None:
            return t
    return printers.parse_time((e.get("metadata") or {}).get("creationTimestamp")) or 0.0


def describe(res: Resource, obj: Obj, *, events: list[Obj], now: float,
             related: list[tuple[str, str]] | None = None) -> str:
    """The text of ``meshctl describe`` for one object (``related``: extra summary lines
    such as a Deployment's ReplicaSets)."""
    lines: list[str] = []
    meta = obj.get("metadata") or {}
    _kv(lines, "Name", meta.get("name"))
    if res.namespaced:
        _kv(lines, "Namespace", meta.get("namespace"))
    _kv(lines, "Labels", _pairs(meta.get("labels")))
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    _kv(lines, "Annotations", _pairs(annotations))
    _kv(lines, "CreationTimestamp", meta.get("creationTimestamp"))
    owners = [f"{o.get('kind')}/{o.get('name')}" for o in meta.get("ownerReferences") or []
              if o.get("controller")]
    if owners:
        _kv(lines, "Controlled By", ", ".join(owners))
    if meta.get("deletionTimestamp"):
        _kv(lines, "Terminating Since", meta["deletionTimestamp"])
    summary = SUMMARIES.get(res.plural)
    shown: set[str] = set()
    if summary:
        shown = summary(obj, lines)
    for key, value in related or ():
        _kv(lines, key, value)
    for section in ("spec", "status"):
        rest = {k: v for k, v in (obj.get(section) or {}).items() if k not in shown}
        if rest:
            lines.append(f"{section.capitalize()}:")
            _tree(lines, rest, 1)
    for key in sorted(set(obj) - {"apiVersion", "kind", "metadata", "spec", "status"}):
        if not (res.plural == "endpoints" and key == "subsets"):  # shown as Addresses
            lines.append(f"{key}:")
            _tree(lines, obj[key], 1)
    if res.plural == "endpoints":
        lines.append(f"Addresses:  {printers.endpoints_summary(obj, now)}")
    lines.append(_events_block(events, now))
    return "\n".join(lines) + "\n"


def _events_block(events: list[Obj], now: float) -> str:
    if not events:
        return "Events:  <none>"
    rows = [["Type", "Reason", "Age", "From", "Message"],
            ["----", "------", "----", "----", "-------"]]
    for e in events:
        count = int(e.get("count") or 1)
        seen = printers.age(e.get("lastTimestamp") or e.get("eventTime")
                            or (e.get("metadata") or {}).get("creationTimestamp"), now)
        if count > 1:
            seen = f"{seen} (x{count})"
        source = e.get("source") or {}
        rows.append([str(e.get("type", "")), str(e.get("reason", "")), seen,
                     str(source.get("component") or e.get("reportingComponent") or ""),
                     str(e.get("message", ""))])
    table = printers.render_table(None, rows)
    return "Events:\n" + "".join(INDENT + line + "\n" for line in table.splitlines()).rstrip("\n")


def _kv(lines: list[str], key: str, value: Any, level: int = 0) -> None:
    lines.append(f"{INDENT * level}{key + ':':<19} {'<none>' if value in (None, '') else value}")


def _pairs(d: dict[str, str] | None) -> str:
    if not d:
        return "<none>"
    return "\n".join(("" if i == 0 else " " * 20) + f"{k}={v}"
                     for i, (k, v) in enumerate(sorted(d.items())))


def _tree(lines: list[str], value: Any, level: int) -> None:
    pad = INDENT * level
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:")
                _tree(lines, v, level + 1)
            else:
                lines.append(f"{pad}{k}:  {_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}-")
                _tree(lines, item, level + 1)
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")


def _scalar(v: Any) -> str:
    if v is None or v == {} or v == []:
        return "<none>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _conditions(lines: list[str], conds: list[Obj] | None) -> None:
    if not conds:
        return
    rows = [["Type", "Status", "Reason", "Message"], ["----", "------", "------", "-------"]]
    rows += [[str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")),
              str(c.get("message", ""))] for c in conds]
    lines.append("Conditions:")
    lines += [INDENT + line for line in printers.render_table(None, rows).splitlines()]


def _pod(obj: Obj, lines: list[str]) -> set[str]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    state, ready, total, _ = printers.pod_status(obj)
    _kv(lines, "Node", spec.get("nodeName"))
    _kv(lines, "Status", state)
    _kv(lines, "Ready", f"{ready}/{total}")
    _kv(lines, "IP", status.get("podIP"))
    statuses = {c.get("name"): c for c in status.get("containerStatuses") or []}
    lines.append("Containers:")
    for c in spec.get("containers") or []:
        lines.append(f"{INDENT}{c.get('name')}:")
        _kv(lines, "Image", c.get("image"), 2)
        ports = ",".join(f"{p.get('containerPort')}/{p.get('protocol', 'TCP')}"
                         for p in c.get("ports") or [])
        _kv(lines, "Ports", ports, 2)
        cs = statuses.get(c.get("name")) or {}
        for sname, sval in (cs.get("state") or {}).items():
            detail = ", ".join(f"{k}={v}" for k, v in (sval or {}).items())
            _kv(lines, "State", f"{sname.capitalize()}" + (f" ({detail})" if detail else ""), 2)
        _kv(lines, "Ready", str(bool(cs.get("ready"))).lower(), 2)
        _kv(lines, "Restart Count", cs.get("restartCount", 0), 2)
    _conditions(lines, status.get("conditions"))
    return {"nodeName", "containers", "containerStatuses", "conditions", "podIP", "phase"}


def _workload(obj: Obj, lines: list[str]) -> set[str]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    _kv(lines, "Selector", printers.selector_string(spec.get("selector")))
    desired = spec.get("replicas", 0)
    _kv(lines, "Replicas",
        f"{desired} desired | {status.get('updatedReplicas', 0)} updated | "
        f"{status.get('replicas', 0)} total | {status.get('availableReplicas', 0)} available | "
        f"{status.get('unavailableReplicas', 0)} unavailable")
    strategy = spec.get("strategy") or {}
    if strategy:
        _kv(lines, "StrategyType", strategy.get("type"))
        ru = strategy.get("rollingUpdate") or {}
        if ru:
            _kv(lines, "RollingUpdateStrategy",
                f"{ru.get('maxUnavailable', '25%')} max unavailable, "
                f"{ru.get('maxSurge', '25%')} max surge")
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    _kv(lines, "Images", ",".join(str(c.get("image")) for c in containers))
    _conditions(lines, status.get("conditions"))
    return {"selector", "replicas", "strategy", "updatedReplicas", "availableReplicas",
            "unavailableReplicas", "conditions"}


def _node(obj: Obj, lines: list[str]) -> set[str]:
    status = obj.get("status") or {}
    _kv(lines, "Status", printers.node_status(obj))
    _kv(lines, "Addresses", ", ".join(f"{a.get('type')}={a.get('address')}"
                                      for a in status.get("addresses") or []))
    for key in ("capacity", "allocatable"):
        _kv(lines, key.capitalize(), ", ".join(f"{k}={v}"
                                               for k, v in (status.get(key) or {}).items()))
    _conditions(lines, status.get("conditions"))
    return {"addresses", "capacity", "allocatable", "conditions"}


def _service(obj: Obj, lines: list[str]) -> set[str]:
    spec = obj.get("spec") or {}
    _kv(lines, "Selector", printers.selector_string(spec.get("selector")))
    _kv(lines, "Type", spec.get("type", "ClusterIP"))
    _kv(lines, "Ports", printers.service_ports(obj, 0.0))
    return {"selector", "type", "ports"}


def _hpa(obj: Obj, lines: list[str]) -> set[str]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ref = spec.get("scaleTargetRef") or {}
    _kv(lines, "Reference", f"{ref.get('kind', '')}/{ref.get('name', '')}")
    lines.append("Metrics:            ( current / target )")
    for name, cur, target in printers.hpa_metrics(obj):
        lines.append(f"{INDENT}{name + ':':<32} {cur} / {target}")
    _kv(lines, "Min replicas", spec.get("minReplicas", 1))
    _kv(lines, "Max replicas", spec.get("maxReplicas"))
    _kv(lines, "Replicas", f"{status.get('currentReplicas', 0)} current / "
                           f"{status.get('desiredReplicas', 0)} desired")
    _conditions(lines, status.get("conditions"))
    return {"scaleTargetRef", "metrics", "minReplicas", "maxReplicas", "currentMetrics",
            "currentReplicas", "desiredReplicas", "conditions"}


SUMMARIES = {"pods": _pod, "deployments": _workload, "replicasets": _workload,
             "nodes": _node, "services": _service, "horizontalpodautoscalers": _hpa}
