"""Per-node accounting of bound Pods: what the filters and scorers read.

The cache is fed from the Node and Pod informers. When the scheduler binds a Pod it
*assumes* the binding at once (so the next Pod in the same burst sees the node fuller,
without waiting for the watch event); the Pod's own update confirms it later, and a
failed bind forgets it. A Pod is counted on at most one node at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from control.quantity import bytes_value, cpu_millis
from control.scheduler.podinfo import PodInfo, pod_info

ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(slots=True)
class NodeInfo:
    """A node and the sum of what is bound to it."""

    name: str
    labels: dict[str, str]
    taints: tuple[dict[str, Any], ...]
    ready: bool
    unschedulable: bool
    cpu: int                   # allocatable millicores
    memory: int                # allocatable bytes
    max_pods: int
    requested_cpu: int = 0
    requested_memory: int = 0
    score_cpu: int = 0         # requests with non-zero defaults, for scoring
    score_memory: int = 0
    pods: dict[str, PodInfo] = field(default_factory=dict)   # by pod uid
    owners: Counter[str] = field(default_factory=Counter)    # controller uid -> pods here

    @property
    def zone(self) -> str | None:
        return self.labels.get(ZONE_LABEL)

    def add(self, p: PodInfo) -> None:
        self.pods[p.uid] = p
        self.requested_cpu += p.cpu
        self.requested_memory += p.memory
        self.score_cpu += p.score_cpu
        self.score_memory += p.score_memory
        if p.owner_uid:
            self.owners[p.owner_uid] += 1

    def remove(self, uid: str) -> None:
        p = self.pods.pop(uid, None)
        if p is None:
            return
        self.requested_cpu -= p.cpu
        self.requested_memory -= p.memory
        self.score_cpu -= p.score_cpu
        self.score_memory -= p.score_memory
        if p.owner_uid:
            self.owners[p.owner_uid] -= 1
            if self.owners[p.owner_uid] <= 0:
                del self.owners[p.owner_uid]


def _node_fields(node: dict[str, Any]) -> dict[str, Any]:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    return dict(
        labels=dict(meta.get("labels") or {}),
        taints=tuple(spec.get("taints") or ()),
        ready=ready,
        unschedulable=bool(spec.get("unschedulable")),
        cpu=cpu_millis(alloc.get("cpu", 0)),
        memory=bytes_value(alloc.get("memory", 0)),
        max_pods=int(bytes_value(alloc.get("pods", 110))),
    )


class SchedulerCache:
    """Nodes and the Pods bound (or assumed bound) to them."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._pod_node: dict[str, str] = {}   # pod uid -> node name
        self._orphans: dict[str, PodInfo] = {}  # bound to a node not (yet) known

    def set_node(self, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        fields = _node_fields(node)
        info = self.nodes.get(name)
        if info is None:
            info = NodeInfo(name=name, **fields)
            self.nodes[name] = info
            for uid, p in list(self._orphans.items()):
                if p.node_name == name:
                    info.add(p)
                    del self._orphans[uid]
        else:
            for k, v in fields.items():
                setattr(info, k, v)

    def remove_node(self, name: str) -> None:
        info = self.nodes.pop(name, None)
        if info is None:
            return
        for uid, p in info.pods.items():
            self._orphans[uid] = p
            self._pod_node.pop(uid, None)

    def set_pod(self, pod: dict[str, Any]) -> None:
        """Account a Pod from the informer: counted on its node when bound and live."""
        p = pod_info(pod)
        phase = (pod.get("status") or {}).get("phase")
        if not p.node_name or phase in ("Succeeded", "Failed"):
            self.remove_pod(p.uid)
            return
        self._place(p, p.node_name)

    def assume(self, p: PodInfo, node_name: str) -> None:
        """Count ``p`` on ``node_name`` now, before the binding is confirmed."""
        self._place(p, node_name)

    def remove_pod(self, uid: str) -> None:
        node = self._pod_node.pop(uid, None)
        if node is not None and node in self.nodes:
            self.nodes[node].remove(uid)
        self._orphans.pop(uid, None)

    forget = remove_pod

    def node_of(self, uid: str) -> str | None:
        return self._pod_node.get(uid)

    def _place(self, p: PodInfo, node_name: str) -> None:
        current = self._pod_node.get(p.uid)
        if current is not None and current in self.nodes:
            self.nodes[current].remove(p.uid)
        self._orphans.pop(p.uid, None)
        info = self.nodes.get(node_name)
        if info is None:
            self._orphans[p.uid] = p
            self._pod_node.pop(p.uid, None)
            return
        info.add(p)
        self._pod_node[p.uid] = node_name
