"""Per-kind rules (defaults, validation, immutability, initial status), by kind.

``strategy_for(resource)`` is what the handlers use; one module per API group holds the
strategies (``core``, ``workloads``, ``autoscaling``, ``mesh``) on the seam in ``base``.
"""

from __future__ import annotations

from control.api.kinds.autoscaling import HorizontalPodAutoscalerStrategy
from control.api.kinds.base import Strategy, spec_part
from control.api.kinds.core import (
    EndpointsStrategy,
    EventStrategy,
    NamespaceStrategy,
    NodeStrategy,
    PodStrategy,
    ServiceStrategy,
)
from control.api.kinds.mesh import TrafficPolicyStrategy
from control.api.kinds.workloads import DeploymentStrategy, ReplicaSetStrategy
from control.api.resources import Resource

_STRATEGIES: dict[str, Strategy] = {
    "Namespace": NamespaceStrategy(),
    "Node": NodeStrategy(),
    "Pod": PodStrategy(),
    "Service": ServiceStrategy(),
    "Endpoints": EndpointsStrategy(),
    "Event": EventStrategy(),
    "Deployment": DeploymentStrategy(),
    "ReplicaSet": ReplicaSetStrategy(),
    "HorizontalPodAutoscaler": HorizontalPodAutoscalerStrategy(),
    "TrafficPolicy": TrafficPolicyStrategy(),
}


def strategy_for(resource: Resource) -> Strategy:
    return _STRATEGIES[resource.kind]


__all__ = ["Strategy", "spec_part", "strategy_for"]
