"""Per-node accounting of bound Pods: what the filters and scorers read.

The cache is fed from the Node and Pod informers. When the scheduler binds a Pod it
*assumes* the binding at once (so the next Pod in the same burst sees the node fuller,
without waiting for the watch event); the Pod's own update confirms it later, and a
failed bind forgets it. A Pod is counted on at most one node at a time.

Everything a decision reads is kept **incrementally**, as kube-scheduler's ``NodeInfo``
is: each Pod added to or removed from a node adjusts that node's requested resources,
its per-owner Pod counts and its multiset of host ports in use, so a filter or scorer
reads a few integers instead of walking the node's Pods. Node-level facts that never
depend on the Pod (zone, hard and soft taints) are derived once per Node update.
:meth:`SchedulerCache.ordered` is the order in which nodes are examined, interleaved
across zones like kube-scheduler's ``NodeTree``, so a search that stops early
(``percentageOfNodesToScore``, see ``framework.py``) still sees every zone.

Neighbours: ``podinfo.py`` (what a Pod asks for), ``plugins.py`` (the readers),
``framework.py``; ``tests/scheduler/test_scheduler_cache_incremental.py`` checks the incremental
state against a recomputation from scratch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from control.quantity import bytes_value, cpu_millis
from control.scheduler.podinfo import PodInfo, pod_info

ZONE_LABEL = "topology.kubernetes.io/zone"
HARD_EFFECTS = ("NoSchedule", "NoExecute")
PortKey = tuple[str, int]   # (protocol, host port)


@dataclass(slots=True, eq=False)
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
    # (protocol, port) -> host IPs bound by the Pods here, counted (two Pods may share
    # a port on different IPs; removing one must leave the other).
    ports: dict[PortKey, Counter[str]] = field(default_factory=dict)
    # Derived from labels and taints by refresh(): read on every decision.
    zone: str | None = None
    hard_taints: tuple[dict[str, Any], ...] = ()   # NoSchedule / NoExecute
    soft_taints: tuple[dict[str, Any], ...] = ()   # PreferNoSchedule

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Re-derive the node-level facts after labels or taints changed."""
        self.zone = self.labels.get(ZONE_LABEL)
        self.hard_taints = tuple(t for t in self.taints if t.get("effect") in HARD_EFFECTS)
        self.soft_taints = tuple(t for t in self.taints
                                 if t.get("effect") == "PreferNoSchedule")

    def add(self, p: PodInfo) -> None:
        self.pods[p.uid] = p
        self.requested_cpu += p.cpu
        self.requested_memory += p.memory
        self.score_cpu += p.score_cpu
        self.score_memory += p.score_memory
        if p.owner_uid:
            self.owners[p.owner_uid] += 1
        for hp in p.host_ports:
            self.ports.setdefault((hp.protocol, hp.port), Counter())[hp.ip] += 1

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
        for hp in p.host_ports:
            key = (hp.protocol, hp.port)
            ips = self.ports[key]
            ips[hp.ip] -= 1
            if ips[hp.ip] <= 0:
                del ips[hp.ip]
                if not ips:
                    del self.ports[key]


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
        # uid -> (Pod, node name): bound to a node the cache does not know (yet)
        self._orphans: dict[str, tuple[PodInfo, str]] = {}
        self._order: list[NodeInfo] | None = None  # ordered(), rebuilt when nodes change

    def set_node(self, node: dict[str, Any]) -> None:
        """Add or update a Node. Raises ValueError on a bad quantity, changing nothing."""
        name = node["metadata"]["name"]
        fields = _node_fields(node)
        info = self.nodes.get(name)
        if info is None:
            info = NodeInfo(name=name, **fields)
            self.nodes[name] = info
            self._order = None
            for uid, (p, bound_to) in list(self._orphans.items()):
                if bound_to == name:
                    info.add(p)
                    self._pod_node[uid] = name
                    del self._orphans[uid]
        else:
            zone = info.zone
            for k, v in fields.items():
                setattr(info, k, v)
            info.refresh()
            if info.zone != zone:
                self._order = None

    def remove_node(self, name: str) -> None:
        info = self.nodes.pop(name, None)
        if info is None:
            return
        self._order = None
        for uid, p in info.pods.items():
            # Remembered with the node it was bound to, so it is counted again if a
            # Node of that name comes back before the Pod is deleted.
            self._orphans[uid] = (p, name)
            self._pod_node.pop(uid, None)

    def ordered(self) -> list[NodeInfo]:
        """Every node once, zones interleaved (kube-scheduler's ``NodeTree``): the first
        node of each zone, then the second of each, ... Zones keep the order in which
        their first node appeared; nodes without a zone form one more group."""
        if self._order is None:
            zones: dict[str | None, list[NodeInfo]] = {}
            for n in self.nodes.values():
                zones.setdefault(n.zone, []).append(n)
            groups = list(zones.values())
            order: list[NodeInfo] = []
            for i in range(max((len(g) for g in groups), default=0)):
                order.extend(g[i] for g in groups if i < len(g))
            self._order = order
        return self._order

    def set_pod(self, pod: dict[str, Any]) -> None:
        """Account a Pod from the informer: counted on its node when bound and live.
        Raises ValueError on a bad quantity, changing nothing."""
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

    def orphans(self) -> dict[str, str]:
        """Pods bound to a node the cache does not know (yet): uid -> node name."""
        return {uid: node for uid, (_, node) in self._orphans.items()}

    def _place(self, p: PodInfo, node_name: str) -> None:
        current = self._pod_node.get(p.uid)
        if current is not None and current in self.nodes:
            self.nodes[current].remove(p.uid)
        self._orphans.pop(p.uid, None)
        info = self.nodes.get(node_name)
        if info is None:
            self._orphans[p.uid] = (p, node_name)
            self._pod_node.pop(p.uid, None)
            return
        info.add(p)
        self._pod_node[p.uid] = node_name

