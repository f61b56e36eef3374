"""Node and Pod objects (Kubernetes-shaped dicts) and hypothesis strategies for them,
shared by the scheduler's property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

ZONE = "topology.kubernetes.io/zone"


def node(name: str, *, cpu: str = "4", memory: str = "8Gi", pods: int = 110,
         ready: bool = True, unschedulable: bool = False, zone: str | None = None,
         labels: dict[str, str] | None = None,
         taints: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    all_labels = dict(labels or {})
    if zone is not None:
        all_labels[ZONE] = zone
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": str(pods)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, *, cpu: str | None = "100m", memory: str | None = "128Mi",
        owner: str | None = None, node_name: str | None = None,
        host_ports: list[tuple[int, str, str]] = (),  # type: ignore[assignment]
        phase: str = "Pending", **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "controller": True, "kind": "ReplicaSet",
                                    "name": owner}]
    container: dict[str, Any] = {"name": "app", "resources": {"requests": requests}}
    if host_ports:
        container["ports"] = [{"containerPort": port, "hostPort": port, "protocol": proto,
                               "hostIP": ip} for port, proto, ip in host_ports]
    return {"metadata": meta,
            "spec": {"containers": [container],
                     **({"nodeName": node_name} if node_name else {}), **spec},
            "status": {"phase": phase}}


# -- strategies ----------------------------------------------------------------------

TAINTS = [
    {"key": "gpu", "value": "yes", "effect": "NoSchedule"},
    {"key": "drain", "value": "now", "effect": "NoExecute"},
    {"key": "spot", "value": "true", "effect": "PreferNoSchedule"},
    {"key": "old", "effect": "PreferNoSchedule"},
]
TOLERATIONS = [
    {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"},
    {"key": "spot", "operator": "Exists"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"},
    {"operator": "Exists", "effect": "NoExecute"},
]
PORTS = [(8080, "TCP", "0.0.0.0"), (8080, "TCP", "127.0.0.1"), (8080, "TCP", "10.0.0.2"),
         (8080, "UDP", "0.0.0.0"), (9090, "TCP", "")]


@st.composite
def node_specs(draw: st.DrawFn, name: str) -> dict[str, Any]:
    return node(
        name,
        cpu=draw(st.sampled_from(["1", "2", "4"])),
        memory=draw(st.sampled_from(["1Gi", "4Gi"])),
        pods=draw(st.sampled_from([2, 3, 110])),
        ready=draw(st.sampled_from([True, True, True, False])),
        unschedulable=draw(st.sampled_from([False, False, False, True])),
        zone=draw(st.sampled_from([None, "z0", "z1", "z2"])),
        labels=draw(st.sampled_from([{}, {"disk": "ssd"}, {"disk": "hdd"}])),
        taints=draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique_by=str)))


@st.composite
def pod_specs(draw: st.DrawFn, name: str, node_name: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if draw(st.integers(0, 4)) == 0:
        extra["nodeSelector"] = {"disk": draw(st.sampled_from(["ssd", "hdd"]))}
    if draw(st.integers(0, 4)) == 0:
        extra["affinity"] = {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": ZONE, "operator": "In",
                                       "values": draw(st.lists(st.sampled_from(
                                           ["z0", "z1", "z2"]), min_size=1, max_size=2))}]}]}}}
    tolerations = draw(st.lists(st.sampled_from(TOLERATIONS), max_size=2, unique_by=str))
    if tolerations:
        extra["tolerations"] = tolerations
    return pod(
        name,
        cpu=draw(st.sampled_from([None, "100m", "500m", "1"])),
        memory=draw(st.sampled_from([None, "128Mi", "1Gi"])),
        owner=draw(st.sampled_from([None, "rs-a", "rs-b"])),
        node_name=node_name,
        host_ports=draw(st.lists(st.sampled_from(PORTS), max_size=2, unique=True)),
        **extra)
