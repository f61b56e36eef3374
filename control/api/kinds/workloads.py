"""Strategies of apps/v1 Deployment and ReplicaSet: replicas, selector, pod template.

Both carry a Pod template checked with the Pod rules from ``core.py``; the selector must
be non-empty, select the template's labels (else the controller would create pods it
never counts) and, as in apps/v1, never change after creation.
"""

from __future__ import annotations

from typing import Any

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.kinds.core import default_pod_spec, validate_pod_spec
from control.api.selectors import LabelSelector
from control.api.validation import FieldErrors


def _validate_replicated(obj: dict[str, Any], errs: FieldErrors) -> dict[str, Any]:
    spec = v.mapping(obj, "spec", "spec", errs, required=True) or {}
    v.integer(spec, "replicas", "spec.replicas", errs, minimum=0)
    v.integer(spec, "minReadySeconds", "spec.minReadySeconds", errs, minimum=0)
    sel = v.label_selector(spec, "selector", "spec.selector", errs, required=True)
    template = v.mapping(spec, "template", "spec.template", errs, required=True)
    if template is None:
        return spec
    tmeta = v.mapping(template, "metadata", "spec.template.metadata", errs) or {}
    tlabels = v.labels(tmeta, "labels", "spec.template.metadata.labels", errs)
    validate_pod_spec(v.mapping(template, "spec", "spec.template.spec", errs, required=True),
                      "spec.template.spec", errs)
    tspec = template.get("spec")
    if isinstance(tspec, dict) and tspec.get("restartPolicy") not in (None, "Always"):
        errs.not_supported("spec.template.spec.restartPolicy", tspec["restartPolicy"],
                           ("Always",))
    if sel and not errs:
        try:
            matches = LabelSelector.from_object(sel).matches(tlabels)
        except ValueError as e:
            errs.invalid("spec.selector", sel, str(e))
        else:
            if not matches:
                errs.invalid("spec.template.metadata.labels", tlabels,
                             "`selector` does not match template `labels`")
    return spec


def _selector_immutable(new: dict[str, Any], old: dict[str, Any], errs: FieldErrors) -> None:
    new_sel = (new.get("spec") or {}).get("selector")
    old_sel = (old.get("spec") or {}).get("selector")
    if new_sel != old_sel:
        errs.invalid("spec.selector", new_sel, "field is immutable")


def _default_template(spec: dict[str, Any]) -> None:
    spec.setdefault("replicas", 1)
    spec.setdefault("minReadySeconds", 0)
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        default_pod_spec(template["spec"])


class DeploymentStrategy(Strategy):
    def default(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        _default_template(spec)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                ru = strategy.setdefault("rollingUpdate", {})
                if isinstance(ru, dict):
                    ru.setdefault("maxSurge", "25%")
                    ru.setdefault("maxUnavailable", "25%")

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = _validate_replicated(obj, errs)
        v.integer(spec, "revisionHistoryLimit", "spec.revisionHistoryLimit", errs, minimum=0)
        v.integer(spec, "progressDeadlineSeconds", "spec.progressDeadlineSeconds", errs,
                  minimum=1)
        v.boolean(spec, "paused", "spec.paused", errs)
        strategy = v.mapping(spec, "strategy", "spec.strategy", errs) or {}
        kind = v.enum(strategy, "type", "spec.strategy.type", errs,
                      ("RollingUpdate", "Recreate"))
        ru = v.mapping(strategy, "rollingUpdate", "spec.strategy.rollingUpdate", errs)
        if kind == "Recreate" and ru:
            errs.forbidden("spec.strategy.rollingUpdate",
                           "may not be specified when strategy `type` is 'Recreate'")
        if kind == "RollingUpdate" and ru is not None:
            surge, unavail = ru.get("maxSurge", "25%"), ru.get("maxUnavailable", "25%")
            v.int_or_percent(surge, "spec.strategy.rollingUpdate.maxSurge", errs)
            v.int_or_percent(unavail, "spec.strategy.rollingUpdate.maxUnavailable", errs)
            if surge in (0, "0%") and unavail in (0, "0%"):
                errs.invalid("spec.strategy.rollingUpdate.maxUnavailable", unavail,
                             "may not be 0 when `maxSurge` is 0")
            if isinstance(unavail, str) and unavail.endswith("%") and \
                    unavail[:-1].isdigit() and int(unavail[:-1]) > 100:
                errs.invalid("spec.strategy.rollingUpdate.maxUnavailable", unavail,
                             "must not be greater than 100%")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any],
                        errs: FieldErrors) -> None:
        _selector_immutable(new, old, errs)


class ReplicaSetStrategy(Strategy):
    def default(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("spec"), dict):
            _default_template(obj["spec"])

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        _validate_replicated(obj, errs)

    def validate_update(self, new: dict[str, Any], old: dict[str, Any],
                        errs: FieldErrors) -> None:
        _selector_immutable(new, old, errs)
