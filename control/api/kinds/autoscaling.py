"""Strategy of autoscaling/v2 HorizontalPodAutoscaler (the shape the autoscaler reads).

Checks the target reference, replica bounds, each metric (Resource, Pods, Object,
External, ContainerResource) with its target type, and the scale-up/scale-down
behaviour policies; defaults an empty metric list to 80% CPU as Kubernetes does.
"""

from __future__ import annotations

from typing import Any

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.validation import FieldErrors

METRIC_TYPES = ("Resource", "Pods", "Object", "External", "ContainerResource")
TARGET_TYPES = ("Utilization", "Value", "AverageValue")


class HorizontalPodAutoscalerStrategy(Strategy):
    def default(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        spec.setdefault("minReplicas", 1)
        if not spec.get("metrics"):
            spec["metrics"] = [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = v.mapping(obj, "spec", "spec", errs, required=True) or {}
        ref = v.mapping(spec, "scaleTargetRef", "spec.scaleTargetRef", errs, required=True)
        if ref is not None:
            v.string(ref, "kind", "spec.scaleTargetRef.kind", errs, required=True)
            name = v.string(ref, "name", "spec.scaleTargetRef.name", errs, required=True)
            if name:
                v.dns_subdomain(name, "spec.scaleTargetRef.name", errs)
            v.string(ref, "apiVersion", "spec.scaleTargetRef.apiVersion", errs)
        lo = v.integer(spec, "minReplicas", "spec.minReplicas", errs, minimum=1)
        hi = v.integer(spec, "maxReplicas", "spec.maxReplicas", errs, required=True,
                       minimum=1)
        if lo is not None and hi is not None and hi < lo:
            errs.invalid("spec.maxReplicas", hi, "must be greater than or equal to "
                                                 "`minReplicas`")
        for i, m in enumerate(v.sequence(spec, "metrics", "spec.metrics", errs)):
            self._metric(m, f"spec.metrics[{i}]", errs)
        behavior = v.mapping(spec, "behavior", "spec.behavior", errs) or {}
        for direction in ("scaleUp", "scaleDown"):
            rules = v.mapping(behavior, direction, f"spec.behavior.{direction}", errs)
            if rules is not None:
                self._rules(rules, f"spec.behavior.{direction}", errs)

    @staticmethod
    def _metric(m: Any, p: str, errs: FieldErrors) -> None:
        if not isinstance(m, dict):
            errs.invalid(p, m, "must be an object")
            return
        if not m.get("type"):
            errs.required(f"{p}.type")
            return
        mtype = v.enum(m, "type", f"{p}.type", errs, METRIC_TYPES)
        if mtype is None:
            return
        field = {"Resource": "resource", "Pods": "pods", "Object": "object",
                 "External": "external", "ContainerResource": "containerResource"}[mtype]
        body = v.mapping(m, field, f"{p}.{field}", errs, required=True)
        if body is None:
            return
        if mtype in ("Resource", "ContainerResource"):
            v.string(body, "name", f"{p}.{field}.name", errs, required=True)
        else:
            metric = v.mapping(body, "metric", f"{p}.{field}.metric", errs, required=True)
            if metric is not None:
                v.string(metric, "name", f"{p}.{field}.metric.name", errs, required=True)
        target = v.mapping(body, "target", f"{p}.{field}.target", errs, required=True)
        if target is None:
            return
        tp = f"{p}.{field}.target"
        if not target.get("type"):
            errs.required(f"{tp}.type")
            return
        ttype = v.enum(target, "type", f"{tp}.type", errs, TARGET_TYPES)
        if ttype == "Utilization":
            if mtype not in ("Resource", "ContainerResource"):
                errs.invalid(f"{tp}.type", ttype, "Utilization applies to resource metrics "
                                                  "only")
            v.integer(target, "averageUtilization", f"{tp}.averageUtilization", errs,
                      required=True, minimum=1)
        elif ttype == "AverageValue":
            if "averageValue" not in target:
                errs.required(f"{tp}.averageValue")
            else:
                v.quantity(target["averageValue"], f"{tp}.averageValue", errs)
        elif ttype == "Value":
            if "value" not in target:
                errs.required(f"{tp}.value")
            else:
                v.quantity(target["value"], f"{tp}.value", errs)

    @staticmethod
    def _rules(rules: dict[str, Any], p: str, errs: FieldErrors) -> None:
        v.integer(rules, "stabilizationWindowSeconds", f"{p}.stabilizationWindowSeconds",
                  errs, minimum=0, maximum=3600)
        v.enum(rules, "selectPolicy", f"{p}.selectPolicy", errs, ("Max", "Min", "Disabled"))
        for i, pol in enumerate(v.sequence(rules, "policies", f"{p}.policies", errs)):
            pp = f"{p}.policies[{i}]"
            if not isinstance(pol, dict) or not pol.get("type"):
                errs.required(f"{pp}.type")
                continue
            v.enum(pol, "type", f"{pp}.type", errs, ("Pods", "Percent"))
            v.integer(pol, "value", f"{pp}.value", errs, required=True, minimum=1)
            v.integer(pol, "periodSeconds", f"{pp}.periodSeconds", errs, required=True,
                      minimum=1, maximum=1800)
