"""Strategy of the mesh's own kind: ``TrafficPolicy`` in ``mesh.io/v1alpha1``.

A TrafficPolicy names the Service it governs (``spec.service``) and carries the policy
the sidecars apply to traffic towards that Service, in the proxy's two groups:
``cluster`` (load balancing, health checks, breakers, outlier detection, limits) and
``route`` (retries, hedging, deadlines, rate limit, priority, degradation group), as
the proxy's ``ServicePolicy`` model (``meshproxy/config/policy.py``) defines them. The
proxies read it through list/watch and apply it through the same validated, atomic
path as a config file reload, so the API server must refuse exactly what a proxy would
refuse: every spec check goes through the one function :func:`validate_policy_spec`,
the place to point at that model once it is committed. Until then it checks the
envelope only: ``service`` (required, a DNS-1123 label), no section but ``cluster`` and
``route``, each an object. The sections' contents are not yet checked.
"""

from __future__ import annotations

from typing import Any

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.validation import FieldErrors

# The sections a policy may carry: the fields of the proxy's ServicePolicy.
POLICY_SECTIONS = ("cluster", "route")


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
