"""Label and field selectors, as Kubernetes parses and applies them.

Label selectors come as query strings (``app=web,tier!=db,env in (a,b),!canary``) or as
``LabelSelector`` objects (``matchLabels`` / ``matchExpressions`` in Deployments and
Services); both become one :class:`LabelSelector`. Field selectors support equality on
the fields each kind indexes (``metadata.name``, ``metadata.namespace`` everywhere;
``spec.nodeName`` and ``status.phase`` on Pods, ``involvedObject.*`` on Events...);
any other field is a 400 naming it. Both are pure functions of an object, so the list
handler and the watch fan-out filter alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["=", "!=", "in", "notin", "exists", "!"]

_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return has and value in self.values
        if self.op == "!=":
            return not has or value not in self.values
        if self.op == "in":
            return has and value in self.values
        if self.op == "notin":
            return not has or value not in self.values
        if self.op == "exists":
            return has
        return not has  # "!": does not exist


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse the query-string form; ValueError names what is wrong."""
        if not text or not text.strip():
            return cls()
        tokens = _tokenize(text)
        reqs: list[Requirement] = []
        i = 0
        while i < len(tokens):
            if tokens[i] == "!":
                if i + 1 >= len(tokens) or not _is_word(tokens[i + 1]):
                    raise ValueError(f"invalid label selector {text!r}: '!' needs a key")
                reqs.append(Requirement(tokens[i + 1], "!"))
                i += 2
            elif _is_word(tokens[i]):
                key = tokens[i]
                nxt = tokens[i + 1] if i + 1 < len(tokens) else ","
                if nxt == ",":
                    reqs.append(Requirement(key, "exists"))
                    i += 1
                elif nxt in ("=", "==", "!="):
                    if i + 2 < len(tokens) and _is_word(tokens[i + 2]):
                        value, i = tokens[i + 2], i + 3
                    elif i + 2 >= len(tokens) or tokens[i + 2] == ",":
                        value, i = "", i + 2  # "key=" selects the empty value
                    else:
                        raise ValueError(f"invalid label selector {text!r}: "
                                         f"{key}{nxt} needs a value")
                    op: Op = "!=" if nxt == "!=" else "="
                    reqs.append(Requirement(key, op, frozenset({value})))
                elif nxt.lower() in ("in", "notin"):
                    if i + 2 >= len(tokens) or tokens[i + 2] != "(":
                        raise ValueError(f"invalid label selector {text!r}: expected '(' "
                                         f"after {key} {nxt}")
                    j, values = i + 3, set()
                    while j < len(tokens) and tokens[j] != ")":
                        if tokens[j] != ",":
                            values.add(tokens[j])
                        j += 1
                    if j >= len(tokens):
                        raise ValueError(f"invalid label selector {text!r}: missing ')'")
                    if not values:
                        raise ValueError(f"invalid label selector {text!r}: "
                                         f"{key} {nxt} () needs values")
                    reqs.append(Requirement(key, "in" if nxt.lower() == "in" else "notin",
                                            frozenset(values)))
                    i = j + 1
                else:
                    raise ValueError(f"invalid label selector {text!r}: unexpected {nxt!r} "
                                     f"after {key!r}")
            else:
                raise ValueError(f"invalid label selector {text!r}: unexpected {tokens[i]!r}")
            if i < len(tokens):
                if tokens[i] != ",":
                    raise ValueError(f"invalid label selector {text!r}: expected ',' before "
                                     f"{tokens[i]!r}")
                i += 1
        return cls(tuple(reqs))

    @classmethod
    def from_object(cls, sel: dict[str, Any] | None) -> LabelSelector:
        """From a ``LabelSelector`` object (matchLabels + matchExpressions)."""
        if not sel:
            return cls()
        reqs = [Requirement(k, "=", frozenset({str(v)}))
                for k, v in (sel.get("matchLabels") or {}).items()]
        ops: dict[str, Op] = {"In": "in", "NotIn": "notin", "Exists": "exists",
                              "DoesNotExist": "!"}
        for expr in sel.get("matchExpressions") or ():
            op = ops.get(expr.get("operator", ""))
            if op is None:
                raise ValueError(f"unknown selector operator {expr.get('operator')!r}")
            reqs.append(Requirement(expr["key"], op, frozenset(expr.get("values") or ())))
        return cls(tuple(reqs))

    @classmethod
    def from_map(cls, labels: dict[str, str] | None) -> LabelSelector:
        """From a plain map, as a Service's ``spec.selector``."""
        return cls(tuple(Requirement(k, "=", frozenset({v}))
                         for k, v in (labels or {}).items()))


def _tokenize(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip():
                raise ValueError(f"invalid label selector {text!r} at {text[pos:]!r}")
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _is_word(token: str) -> bool:
    return token not in ("(", ")", ",", "=", "==", "!=", "!")


# -- field selectors -------------------------------------------------------------------------

COMMON_FIELDS = ("metadata.name", "metadata.namespace")
FIELDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "Pod": ("spec.nodeName", "spec.schedulerName", "status.phase", "status.podIP",
            "spec.restartPolicy"),
    "Event": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
              "involvedObject.uid", "involvedObject.apiVersion", "reason", "type",
              "source"),
    "Node": ("spec.unschedulable",),
    "Namespace": ("status.phase",),
    "ReplicaSet": ("status.replicas",),
}


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """Equality tests on indexed fields: ``metadata.name=x,spec.nodeName!=``."""

    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None, kind: str) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        allowed = COMMON_FIELDS + FIELDS_BY_KIND.get(kind, ())
        terms = []
        for part in text.split(","):
            part = part.strip()
            m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)", part)
            if m is None:
                raise ValueError(f"invalid field selector term {part!r}: expected "
                                 f"field=value or field!=value")
            field, op, value = m.groups()
            if field not in allowed:
                raise ValueError(f'field label not supported: "{field}" (for {kind}: '
                                 f'{", ".join(allowed)})')
            terms.append((field, op != "!=", value))
        return cls(tuple(terms))

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((field_value(obj, f) == value) == eq for f, eq, value in self.terms)

    def required_value(self, field: str) -> str | None:
        """The value this selector pins ``field`` to with ``=`` (authorization uses it)."""
        for f, eq, value in self.terms:
            if f == field and eq:
                return value
        return None


def field_value(obj: dict[str, Any], path: str) -> str:
    """A field as the selector compares it: a string, ``""`` when absent."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, dict):  # Event.source: the component
        return str(cur.get("component", ""))
    return str(cur)
