"""Strategy of the mesh's own kind: ``TrafficPolicy`` in ``mesh.io/v1alpha1``.

A TrafficPolicy names the Service it governs (``spec.service``) and carries the policy
the sidecars apply to traffic towards that Service, in the proxy's two groups:
``cluster`` (load balancing, health checks, breakers, outlier detection, limits) and
``route`` (retries, hedging, deadlines, rate limit, priority, degradation group). The
proxies read it through list/watch and apply it through the same validated, atomic
path as a config file reload, so the API server refuses exactly what a proxy would
refuse: the spec (less ``service``) is validated by the proxy's own
:class:`meshproxy.config.policy.ServicePolicy` model — one schema, so a policy means the
same in a file and in the cluster — and each pydantic error becomes a 422 cause naming
the field (``spec.cluster.breaker.reset_timeout``). ``control`` may import ``meshproxy``;
the reverse never happens.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.validation import FieldErrors
from meshproxy.config.policy import ServicePolicy

# The sections a policy may carry: the fields of the proxy's ServicePolicy.
POLICY_SECTIONS = tuple(ServicePolicy.model_fields)


def _path(path: str, loc: tuple[int | str, ...]) -> str:
    out = path
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_policy_spec(spec: dict[str, Any], path: str, errs: FieldErrors) -> None:
    """The single check of a TrafficPolicy spec (see the module docstring)."""
    service = v.string(spec, "service", f"{path}.service", errs, required=True)
    if service:
        v.dns_label(service, f"{path}.service", errs)
    sections = {k: val for k, val in spec.items() if k != "service"}
    for key, value in sections.items():
        if key not in POLICY_SECTIONS:
            errs.not_supported(f"{path}.{key}", key, ("service", *POLICY_SECTIONS))
        elif not isinstance(value, dict):
            errs.invalid(f"{path}.{key}", value, "must be an object")
    if any(k not in POLICY_SECTIONS or not isinstance(val, dict)
           for k, val in sections.items()):
        return  # the envelope is wrong: the model's errors would only repeat it
    try:
        ServicePolicy.model_validate(sections)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            where = _path(path, tuple(p for p in err["loc"] if p != "__root__"))
            errs.invalid(where, err.get("input"), err["msg"])


class TrafficPolicyStrategy(Strategy):
    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = v.mapping(obj, "spec", "spec", errs, required=True)
        if spec is not None:
            validate_policy_spec(spec, "spec", errs)
