"""Strategy of the mesh's own kind: ``TrafficPolicy`` in ``mesh.io/v1alpha1``.

A TrafficPolicy names the Service it governs (``spec.service``) and carries the policy
the sidecars apply to traffic towards that Service, in the proxy's two groups:
``cluster`` (load balancing, health checks, breakers, outlier detection, limits) and
``route`` (retries, hedging, deadlines, rate limit, priority, degradation group). The
proxies read it through list/watch and apply it through the same validated, atomic
path as a config file reload, so the API server refuses exactly what a proxy would
refuse: the spec (less ``service``) is validated by the proxy's own
:class:`meshproxy.config.policy.ServicePolicy` model — one schema, so a policy means the
same in a file and in the cluster — and each problem it finds becomes a 422 cause naming
the field (``spec.cluster.breaker.reset_timeout``). As Kubernetes does, every bad field
is reported, not only the first (:func:`meshproxy.schema.parse` validates each section,
field and list item on its own once the whole fails). ``control`` may import ``meshproxy``;
the reverse never happens.

``spec.degrade`` is the Service's degradation switch (mode ``on``/``off``/``auto``, the
auto-trip rule, the action); every proxy following the Service runs it as a service
switch named ``<namespace>.<service>`` (see :mod:`meshproxy.discovery.policy`), so
flipping it is ``meshctl patch trafficpolicy NAME -p '{"spec":{"degrade":{"mode":"on"}}}'``.
That name must fit a switch name (63 characters), checked here too.
"""

from __future__ import annotations

from typing import Any

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.validation import FieldErrors
from meshproxy.config.policy import ServicePolicy, error_path, service_switch_name
from meshproxy.schema import SchemaError, parse

# The sections a policy may carry: the fields of the proxy's ServicePolicy.
POLICY_SECTIONS = tuple(ServicePolicy.__struct_fields__)


def validate_policy_spec(spec: dict[str, Any], path: str, errs: FieldErrors, *,
                         namespace: str | None = None) -> None:
    """The single check of a TrafficPolicy spec (see the module docstring); with
    ``namespace``, also that a ``degrade`` switch's name fits."""
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
        policy = parse(sections, ServicePolicy)
    except SchemaError as e:
        for p in e.problems:
            errs.invalid(path + error_path(p.path), p.value, p.message)
        return
    if policy.degrade is not None and namespace and service:
        try:
            service_switch_name(namespace, service)
        except ValueError as e:
            errs.invalid(f"{path}.degrade", sections.get("degrade"), str(e))


class TrafficPolicyStrategy(Strategy):
    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = v.mapping(obj, "spec", "spec", errs, required=True)
        if spec is not None:
            namespace = (obj.get("metadata") or {}).get("namespace")
            validate_policy_spec(spec, "spec", errs,
                                 namespace=namespace if isinstance(namespace, str) else None)
