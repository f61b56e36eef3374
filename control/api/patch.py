"""The three patch formats Kubernetes clients send: merge, strategic merge, JSON patch.

- JSON merge patch (RFC 7386): objects merge recursively, ``null`` deletes, anything
  else (lists included) replaces.
- Strategic merge patch: a merge patch that merges lists of objects by their key (the
  containers of a pod by ``name``, ports by ``containerPort``/``port``, conditions by
  ``type``...) as Kubernetes' patch strategies declare, and honours ``$patch: delete``
  and ``$patch: replace``; the ordering directives (``$setElementOrder``,
  ``$retainKeys``) are accepted and dropped. The official Python client sends this for
  every dict-shaped patch, ``scale`` included.
- JSON patch (RFC 6902): ``add``, ``remove``, ``replace``, ``move``, ``copy``, ``test``.

All three work on copies; a patch that cannot apply raises :class:`PatchError` and the
handler answers 422 without touching the stored object.
"""

from __future__ import annotations

import copy
from typing import Any

# Lists of objects merged by a key (field name -> candidate merge keys, first present wins).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",),
    "ports": ("containerPort", "port"), "conditions": ("type",),
    "ownerReferences": ("uid",), "imagePullSecrets": ("name",), "addresses": ("type",),
    "containerStatuses": ("name",), "initContainerStatuses": ("name",),
    "hostAliases": ("ip",), "tolerations": (),
}
# Lists of scalars merged as sets.
MERGED_SCALAR_LISTS = frozenset({"finalizers"})


class PatchError(ValueError):
    """The patch does not apply to the object (a 422 for the client)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    return _smp_map(target if isinstance(target, dict) else {}, patch)


def _smp_map(target: dict[str, Any], patch: dict[str, Any]) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise PatchError(f"unknown $patch directive {directive!r}")
    out = dict(target)
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(out.get(field), list) and isinstance(value, list):
                out[field] = [x for x in out[field] if x not in value]
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(out.get(key) if isinstance(out.get(key), dict) else {}, value)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list):
            out[key] = _smp_list(key, out.get(key), value)
        else:
            out[key] = value
    return out


def _smp_list(field: str, target: Any, patch: list[Any]) -> list[Any]:
    current = target if isinstance(target, list) else []
    if field in MERGED_SCALAR_LISTS:
        return current + [x for x in patch if x not in current]
    objects = [p for p in patch if isinstance(p, dict)]
    if any(p.get("$patch") == "replace" for p in objects):
        return [copy.deepcopy(p) for p in patch
                if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    keys = MERGE_KEYS.get(field, ())
    key = next((k for k in keys if objects and all(k in p for p in objects)), None)
    if key is None or len(objects) != len(patch):
        return copy.deepcopy(patch)
    out = list(current)
    for item in patch:
        idx = next((i for i, cur in enumerate(out)
                    if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_smp_map({}, item))
        else:
            out[idx] = _smp_map(out[idx], item)
    return out


# -- JSON patch ------------------------------------------------------------------------------

def json_patch(target: Any, ops: list[Any]) -> Any:
    doc = copy.deepcopy(target)
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"operation {i}: needs 'op' and 'path'")
        kind, path = op["op"], _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(_value(op, i)))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(_value(op, i)))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            if kind == "move":
                doc, value = _remove(doc, src)
            else:
                value = copy.deepcopy(_get(doc, src))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != _value(op, i):
                raise PatchError(f"operation {i}: test failed at {op['path']!r}")
        else:
            raise PatchError(f"operation {i}: unknown op {kind!r}")
    return doc


def _value(op: dict[str, Any], i: int) -> Any:
    if "value" not in op:
        raise PatchError(f"operation {i}: '{op['op']}' needs a 'value'")
    return op["value"]


def _pointer(text: Any) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchError(f"invalid JSON pointer {text!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in text.split("/")[1:]]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit():
        raise PatchError(f"invalid list index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not for_add):
        raise PatchError(f"list index {i} out of range")
    return i


def _get(doc: Any, path: list[str]) -> Any:
    cur = doc
    for token in path:
        if isinstance(cur, dict) and token in cur:
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, for_add=False)]
        else:
            raise PatchError(f"path /{'/'.join(path)} does not exist")
    return cur


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    if isinstance(parent, dict):
        parent[path[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, path[-1], for_add=True), value)
    else:
        raise PatchError(f"cannot add at /{'/'.join(path)}: parent is not a container")
    return doc


def _remove(doc: Any, path: list[str]) -> tuple[Any, Any]:
    if not path:
        raise PatchError("cannot remove the whole document")
    parent = _get(doc, path[:-1])
    if isinstance(parent, dict):
        if path[-1] not in parent:
            raise PatchError(f"path /{'/'.join(path)} does not exist")
        return doc, parent.pop(path[-1])
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, path[-1], for_add=False))
    raise PatchError(f"path /{'/'.join(path)} does not exist")


def apply_patch(kind: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply a patch of ``kind`` ("merge", "strategic", "json") to a copy of ``target``."""
    target = copy.deepcopy(target)  # the merges share unpatched subtrees with their input
    if kind == "merge":
        out = merge_patch(target, patch)
    elif kind == "strategic":
        out = strategic_merge_patch(target, patch)
    else:
        out = json_patch(target, patch)
    if not isinstance(out, dict):
        raise PatchError("the patched document is not an object")
    return out
