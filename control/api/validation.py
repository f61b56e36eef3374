"""Field-level validation machinery shared by every kind, and ``metadata`` rules.

:class:`FieldErrors` collects every problem of one object (Kubernetes reports them all,
not the first) as ``Status`` causes naming the field path (``spec.template.spec
.containers[0].image``); the handler turns a non-empty collection into one 422. The
helpers check the common shapes (DNS-1123 names, label keys and values, integers in a
range, enums, quantities, label selectors) and return the value or ``None`` so the
per-kind validators in ``kinds/`` read as a list of rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from control.quantity import parse_quantity

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
MAX_ANNOTATIONS_BYTES = 256 * 1024

_MISSING = object()


class FieldErrors:
    """The validation problems of one object, each a Kubernetes ``StatusCause``."""

    def __init__(self) -> None:
        self.causes: list[dict[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.causes)

    def _add(self, reason: str, field: str, message: str) -> None:
        self.causes.append({"reason": reason, "field": field,
                            "message": f"{field}: {message}"})

    def required(self, field: str, why: str = "") -> None:
        self._add("FieldValueRequired", field, "Required value" + (f": {why}" if why else ""))

    def invalid(self, field: str, value: Any, why: str) -> None:
        self._add("FieldValueInvalid", field, f"Invalid value: {_show(value)}: {why}")

    def not_supported(self, field: str, value: Any, allowed: Iterable[str]) -> None:
        opts = ", ".join(f'"{a}"' for a in allowed)
        self._add("FieldValueNotSupported", field,
                  f"Unsupported value: {_show(value)}: supported values: {opts}")

    def forbidden(self, field: str, why: str) -> None:
        self._add("FieldValueForbidden", field, f"Forbidden: {why}")

    def duplicate(self, field: str, value: Any) -> None:
        self._add("FieldValueDuplicate", field, f"Duplicate value: {_show(value)}")


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


# -- typed accessors: return the value when it has the right type, else record why ---------

def mapping(obj: Any, key: str, path: str, errs: FieldErrors, *,
            required: bool = False) -> dict[str, Any] | None:
    v = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
    if v is _MISSING or v is None:
        if required:
            errs.required(path)
        return None
    if not isinstance(v, dict):
        errs.invalid(path, v, "must be an object")
        return None
    return v


def sequence(obj: Any, key: str, path: str, errs: FieldErrors, *,
             required: bool = False) -> list[Any]:
    v = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
    if v is _MISSING or v is None:
        if required:
            errs.required(path)
        return []
    if not isinstance(v, list):
        errs.invalid(path, v, "must be a list")
        return []
    if required and not v:
        errs.required(path, "must have at least one item")
    return v


def string(obj: Any, key: str, path: str, errs: FieldErrors, *,
           required: bool = False) -> str | None:
    v = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
    if v is _MISSING or v is None or (required and v == ""):
        if required:
            errs.required(path)
        return None
    if not isinstance(v, str):
        errs.invalid(path, v, "must be a string")
        return None
    return v


def integer(obj: Any, key: str, path: str, errs: FieldErrors, *, required: bool = False,
            minimum: int | None = None, maximum: int | None = None) -> int | None:
    v = obj.get(key, _MISSING) if isinstance(obj, dict) else _MISSING
    if v is _MISSING or v is None:
        if required:
            errs.required(path)
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        errs.invalid(path, v, "must be an integer")
        return None
    if minimum is not None and v < minimum:
        errs.invalid(path, v, f"must be greater than or equal to {minimum}")
    elif maximum is not None and v > maximum:
        errs.invalid(path, v, f"must be less than or equal to {maximum}")
    return v


def boolean(obj: Any, key: str, path: str, errs: FieldErrors) -> bool | None:
    v = obj.get(key) if isinstance(obj, dict) else None
    if v is None:
        return None
    if not isinstance(v, bool):
        errs.invalid(path, v, "must be a boolean")
        return None
    return v


def enum(obj: Any, key: str, path: str, errs: FieldErrors, allowed: Iterable[str], *,
         default: str | None = None) -> str | None:
    """Check an enum field; when absent and ``default`` is given, set it (defaulting)."""
    allowed = tuple(allowed)
    v = obj.get(key) if isinstance(obj, dict) else None
    if v is None or v == "":
        if default is not None and isinstance(obj, dict):
            obj[key] = default
        return default
    if v not in allowed:
        errs.not_supported(path, v, allowed)
        return None
    return v


def port_number(value: Any, path: str, errs: FieldErrors) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        errs.invalid(path, value, "must be between 1 and 65535, inclusive")


def int_or_string_port(value: Any, path: str, errs: FieldErrors) -> None:
    """A port given as number or as a named port (IANA_SVC_NAME)."""
    if isinstance(value, str):
        if not (1 <= len(value) <= 15 and DNS1123_LABEL.match(value)
                and any(c.isalpha() for c in value)):
            errs.invalid(path, value, "must be a port number or an IANA_SVC_NAME "
                                      "(at most 15 characters, a-z0-9-, one letter)")
    else:
        port_number(value, path, errs)


def int_or_percent(value: Any, path: str, errs: FieldErrors) -> None:
    if isinstance(value, str):
        if not re.fullmatch(r"\d+%", value):
            errs.invalid(path, value, "must be an integer or a percentage like '25%'")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errs.invalid(path, value, "must be a non-negative integer or a percentage")


def quantity(value: Any, path: str, errs: FieldErrors) -> None:
    try:
        q = parse_quantity(value)
    except (ValueError, TypeError) as e:
        errs.invalid(path, value, str(e))
        return
    if q < 0:
        errs.invalid(path, value, "must be greater than or equal to 0")


def resource_list(obj: Any, key: str, path: str, errs: FieldErrors) -> None:
    """``{"cpu": "500m", "memory": "128Mi"}`` as in requests, limits, capacity."""
    rl = mapping(obj, key, path, errs)
    for name, value in (rl or {}).items():
        quantity(value, f"{path}[{name}]", errs)


# -- names, labels, metadata -----------------------------------------------------------------

def dns_label(value: Any, path: str, errs: FieldErrors) -> bool:
    if not isinstance(value, str) or len(value) > 63 or not DNS1123_LABEL.match(value):
        errs.invalid(path, value, "a lowercase RFC 1123 label must consist of lower case "
                                  "alphanumeric characters or '-', start and end with an "
                                  "alphanumeric character, and be at most 63 characters")
        return False
    return True


def dns_subdomain(value: Any, path: str, errs: FieldErrors) -> bool:
    if not isinstance(value, str) or len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        errs.invalid(path, value, "a lowercase RFC 1123 subdomain must consist of lower case "
                                  "alphanumeric characters, '-' or '.', and must start and "
                                  "end with an alphanumeric character")
        return False
    return True


def qualified_name(key: Any, path: str, errs: FieldErrors) -> None:
    """A label or annotation key: optional DNS-subdomain prefix, '/', a name <= 63."""
    if not isinstance(key, str) or not key:
        errs.invalid(path, key, "key must be a non-empty string")
        return
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errs.invalid(path, key, "prefix part must be a lowercase RFC 1123 subdomain")
    if len(name) > 63 or not _QUALIFIED_NAME.match(name):
        errs.invalid(path, key, "name part must consist of alphanumeric characters, '-', "
                                "'_' or '.', start and end with an alphanumeric character, "
                                "and be at most 63 characters")


def labels(obj: Any, key: str, path: str, errs: FieldErrors) -> dict[str, str]:
    m = mapping(obj, key, path, errs) or {}
    for k, v in m.items():
        qualified_name(k, path, errs)
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            errs.invalid(f"{path}[{k}]", v, "a label value must be 63 characters or less, "
                                            "empty or alphanumeric with '-', '_' or '.' "
                                            "inside")
    return m


def env_name(value: Any, path: str, errs: FieldErrors) -> None:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        errs.invalid(path, value, "a valid environment variable name must consist of "
                                  "alphabetic characters, digits, '_', '-', or '.', and "
                                  "must not start with a digit")


def label_selector(obj: Any, key: str, path: str, errs: FieldErrors, *,
                   required: bool = False) -> dict[str, Any] | None:
    """A ``LabelSelector`` (``matchLabels`` and ``matchExpressions``)."""
    sel = mapping(obj, key, path, errs, required=required)
    if sel is None:
        return None
    labels(sel, "matchLabels", f"{path}.matchLabels", errs)
    for i, expr in enumerate(sequence(sel, "matchExpressions", f"{path}.matchExpressions",
                                      errs)):
        p = f"{path}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            errs.invalid(p, expr, "must be an object")
            continue
        k = string(expr, "key", f"{p}.key", errs, required=True)
        if k is not None:
            qualified_name(k, f"{p}.key", errs)
        op = enum(expr, "operator", f"{p}.operator", errs,
                  ("In", "NotIn", "Exists", "DoesNotExist"))
        values = sequence(expr, "values", f"{p}.values", errs)
        if op is None and "operator" not in expr:
            errs.required(f"{p}.operator")
        if op in ("In", "NotIn") and not values:
            errs.required(f"{p}.values", "must be specified when `operator` is 'In' or "
                                         "'NotIn'")
        if op in ("Exists", "DoesNotExist") and values:
            errs.forbidden(f"{p}.values", "may not be specified when `operator` is "
                                          "'Exists' or 'DoesNotExist'")
    if required and not sel.get("matchLabels") and not sel.get("matchExpressions"):
        errs.invalid(path, sel, "empty selector is invalid for this resource")
    return sel


def metadata(obj: dict[str, Any], errs: FieldErrors, *, namespaced: bool,
             name_rule: str = "subdomain") -> dict[str, Any]:
    """Validate ``metadata``; the name must follow ``name_rule`` (label or subdomain)."""
    md = mapping(obj, "metadata", "metadata", errs, required=True) or {}
    name = md.get("name")
    if name is None or name == "":
        errs.required("metadata.name", "name or generateName is required")
    elif name_rule == "label":
        dns_label(name, "metadata.name", errs)
    else:
        dns_subdomain(name, "metadata.name", errs)
    if namespaced:
        ns = md.get("namespace")
        if ns:
            dns_label(ns, "metadata.namespace", errs)
    elif md.get("namespace"):
        errs.forbidden("metadata.namespace", "not allowed on this type")
    labels(md, "labels", "metadata.labels", errs)
    ann = mapping(md, "annotations", "metadata.annotations", errs) or {}
    size = 0
    for k, v in ann.items():
        qualified_name(k, "metadata.annotations", errs)
        if not isinstance(v, str):
            errs.invalid(f"metadata.annotations[{k}]", v, "must be a string")
            continue
        size += len(k) + len(v)
    if size > MAX_ANNOTATIONS_BYTES:
        errs.invalid("metadata.annotations", f"{size} bytes",
                     f"must have at most {MAX_ANNOTATIONS_BYTES} bytes")
    for i, ref in enumerate(sequence(md, "ownerReferences", "metadata.ownerReferences", errs)):
        p = f"metadata.ownerReferences[{i}]"
        if not isinstance(ref, dict):
            errs.invalid(p, ref, "must be an object")
            continue
        for f in ("apiVersion", "kind", "name", "uid"):
            string(ref, f, f"{p}.{f}", errs, required=True)
        boolean(ref, "controller", f"{p}.controller", errs)
        boolean(ref, "blockOwnerDeletion", f"{p}.blockOwnerDeletion", errs)
    if sum(1 for r in md.get("ownerReferences") or () if isinstance(r, dict)
           and r.get("controller")) > 1:
        errs.invalid("metadata.ownerReferences", "...", "only one reference can have "
                                                        "controller set to true")
    for i, fin in enumerate(sequence(md, "finalizers", "metadata.finalizers", errs)):
        if not isinstance(fin, str) or not fin:
            errs.invalid(f"metadata.finalizers[{i}]", fin, "must be a non-empty string")
        else:
            qualified_name(fin, f"metadata.finalizers[{i}]", errs)
    return md
