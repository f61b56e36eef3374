"""Strategy of the mesh's own kind: ``TrafficPolicy`` in ``mesh.io/v1alpha1``.

A TrafficPolicy names the Service it governs (``spec.service``) and carries the
resilience sections the sidecars apply to traffic towards that Service. The proxies
read it through list/watch and apply it through the same validated, atomic path as a
config file reload, so the API server must refuse exactly what a proxy would refuse:
every spec check goes through the one function :func:`validate_policy_spec`, the
place to point at the proxy's own policy schema (``meshproxy`` models) once it exists.
Until then it checks the envelope: ``service`` (required, a DNS-1123 label), only known
section names, each section an object. The sections' contents are not yet checked.
"""

from __future__ import annotations

from typing import Any

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.validation import FieldErrors

# The sections a policy may carry, as the proxy's resilience layers are named.
POLICY_SECTIONS = ("loadBalancer", "timeouts", "retries", "hedging", "healthCheck",
                   "circuitBreaker", "outlierDetection", "rateLimit", "concurrencyLimit",
                   "degradation")


def validate_policy_spec(spec: dict[str, Any], path: str, errs: FieldErrors) -> None:
    """The single check of a TrafficPolicy spec (see the module docstring)."""
    service = v.string(spec, "service", f"{path}.service", errs, required=True)
    if service:
        v.dns_label(service, f"{path}.service", errs)
    for key, value in spec.items():
        if key == "service":
            continue
        if key not in POLICY_SECTIONS:
            errs.not_supported(f"{path}.{key}", key, ("service", *POLICY_SECTIONS))
        elif not isinstance(value, dict):
            errs.invalid(f"{path}.{key}", value, "must be an object")


class TrafficPolicyStrategy(Strategy):
    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = v.mapping(obj, "spec", "spec", errs, required=True)
        if spec is not None:
            validate_policy_spec(spec, "spec", errs)
