"""Endpoints: for each Service, where its ready Pods can be reached.

Pods here are reached on their node's address through ports the agent publishes, not
on a pod network: the agent records in ``status.portMappings`` which host port serves
each container port (the sidecar's inbound port when the Pod is meshed), and
``status.podIP`` is the address those host ports listen on. A Service's ``targetPort``
(a number or a container port name) is resolved per Pod through that mapping, so the
Endpoints group addresses that share the same resolved ports into subsets, as
Kubernetes' Endpoints do. Ready Pods go to ``addresses``, the others to
``notReadyAddresses``; terminating and finished Pods are left out. Output is sorted so
an unchanged cluster yields a byte-identical object and no write.
"""

from __future__ import annotations

from typing import Any

from control.controllers.podutil import is_active, is_ready

Obj = dict[str, Any]


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container_ports(pod: Obj) -> dict[str | int, int]:
    """Container port names and numbers -> container port number."""
    out: dict[str | int, int] = {}
    for c in (pod.get("spec") or {}).get("containers") or ():
        for p in c.get("ports") or ():
            num = int(p["containerPort"])
            out[num] = num
            if p.get("name"):
                out[p["name"]] = num
    return out


def _published(pod: Obj) -> dict[tuple[int, str], int]:
    """(container port, protocol) -> host port, from the agent's status."""
    return {(int(m["containerPort"]), m.get("protocol", "TCP")): int(m["hostPort"])
            for m in (pod.get("status") or {}).get("portMappings") or ()
            if m.get("hostPort")}


def resolve_ports(service: Obj, pod: Obj) -> tuple[tuple[str, int, str], ...] | None:
    """The Pod's reachable (name, port, protocol) for each Service port, or None when a
    port cannot be resolved (the Pod is not an endpoint of the Service yet)."""
    names = _container_ports(pod)
    published = _published(pod)
    out = []
    for sp in (service.get("spec") or {}).get("ports") or ():
        target = sp.get("targetPort", sp.get("port"))
        proto = sp.get("protocol", "TCP")
        if isinstance(target, str) and not target.isdigit():
            container_port = names.get(target)
            if container_port is None:
                return None
        else:
            container_port = int(target)
        host_port = published.get((container_port, proto))
        if host_port is None:
            return None
        out.append((sp.get("name", ""), host_port, proto))
    return tuple(out)


def compute_subsets(service: Obj, pods: list[Obj]) -> list[Obj]:
    """The ``subsets`` of the Service's Endpoints object."""
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return []  # a Service without selector has manually managed endpoints
    ns = (service.get("metadata") or {}).get("namespace", "default")
    groups: dict[tuple, dict[str, list[Obj]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("namespace", "default") != ns or not is_active(pod):
            continue
        if not selector_matches(selector, meta.get("labels") or {}):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        ports = resolve_ports(service, pod)
        if not ip or ports is None:
            continue
        address = {"ip": ip, "nodeName": (pod.get("spec") or {}).get("nodeName", ""),
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": meta.get("name"),
                                 "uid": meta.get("uid", "")}}
        bucket = groups.setdefault(ports, {"addresses": [], "notReadyAddresses": []})
        bucket["addresses" if is_ready(pod) else "notReadyAddresses"].append(address)
    subsets = []
    for ports, bucket in sorted(groups.items()):
        subset: Obj = {}
        for field in ("addresses", "notReadyAddresses"):
            if bucket[field]:
                # One address per Pod; sorted and de-duplicated for stable output.
                seen = {(a["ip"], a["targetRef"]["name"]): a for a in bucket[field]}
                subset[field] = [seen[k] for k in sorted(seen)]
        subset["ports"] = [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]
        subsets.append(subset)
    return subsets
