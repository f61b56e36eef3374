"""What the scheduler reads from a Pod: resource requests, host ports, placement rules.

Computed once per scheduling attempt from the Pod object (a Kubernetes-shaped dict), so
the plugins compare integers instead of re-parsing quantities for every node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control.quantity import bytes_value, cpu_millis

# Requests assumed for scoring a container that asks for nothing, as kube-scheduler does
# (its DefaultMilliCPURequest / DefaultMemoryRequest): otherwise best-effort Pods would
# all pile onto one node, which looks empty to a scorer that counts only requests.
DEFAULT_CPU_MILLIS = 100
DEFAULT_MEMORY_BYTES = 200 * 2**20


@dataclass(frozen=True, slots=True)
class HostPort:
    port: int
    protocol: str = "TCP"
    ip: str = "0.0.0.0"

    def conflicts(self, other: HostPort) -> bool:
        if self.port != other.port or self.protocol != other.protocol:
            return False
        wild = ("0.0.0.0", "", "::")
        return self.ip in wild or other.ip in wild or self.ip == other.ip


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A Pod as the scheduler sees it."""

    key: str                        # namespace/name
    uid: str
    cpu: int                        # millicores requested
    memory: int                     # bytes requested
    score_cpu: int                  # requests used for scoring (defaults for zero)
    score_memory: int
    host_ports: tuple[HostPort, ...] = ()
    node_selector: dict[str, str] = field(default_factory=dict)
    required_affinity: tuple[tuple[dict[str, Any], ...], ...] = ()  # OR of ANDed exprs
    tolerations: tuple[dict[str, Any], ...] = ()
    owner_uid: str | None = None
    node_name: str | None = None
    tolerates_unschedulable: bool = False  # may go to a cordoned node


UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def _container_requests(c: dict[str, Any]) -> tuple[int, int]:
    res = c.get("resources") or {}
    req = res.get("requests") or {}
    lim = res.get("limits") or {}
    # An unset request defaults to the limit (the API server's defaulting rule).
    cpu = req.get("cpu", lim.get("cpu"))
    mem = req.get("memory", lim.get("memory"))
    return (cpu_millis(cpu) if cpu is not None else 0,
            bytes_value(mem) if mem is not None else 0)


def pod_info(pod: dict[str, Any]) -> PodInfo:
    """Extract the scheduling-relevant facts of ``pod``. Raises ValueError on a bad quantity."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    cpu = mem = score_cpu = score_mem = 0
    ports: list[HostPort] = []
    for c in containers:
        c_cpu, c_mem = _container_requests(c)
        cpu += c_cpu
        mem += c_mem
        score_cpu += c_cpu or DEFAULT_CPU_MILLIS
        score_mem += c_mem or DEFAULT_MEMORY_BYTES
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                ports.append(HostPort(int(p["hostPort"]), p.get("protocol", "TCP"),
                                      p.get("hostIP", "0.0.0.0")))
    # Init containers run one at a time before the app: the Pod needs the larger of
    # their largest request and the sum of the app containers.
    for c in spec.get("initContainers") or []:
        c_cpu, c_mem = _container_requests(c)
        cpu, mem = max(cpu, c_cpu), max(mem, c_mem)
    affinity = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = tuple(tuple(t.get("matchExpressions") or ())
                  for t in affinity.get("nodeSelectorTerms") or ())
    tolerations = tuple(spec.get("tolerations") or ())
    owner = next((o.get("uid") for o in meta.get("ownerReferences") or []
                  if o.get("controller")), None)
    return PodInfo(
        key=f"{meta.get('namespace', 'default')}/{meta.get('name', '')}",
        uid=meta.get("uid", ""),
        cpu=cpu, memory=mem, score_cpu=score_cpu, score_memory=score_mem,
        host_ports=tuple(ports),
        node_selector=dict(spec.get("nodeSelector") or {}),
        required_affinity=terms,
        tolerations=tolerations,
        owner_uid=owner,
        node_name=spec.get("nodeName") or None,
        tolerates_unschedulable=any(t.get("key") == UNSCHEDULABLE_TAINT
                                    and t.get("operator", "Equal") == "Exists"
                                    for t in tolerations),
    )
