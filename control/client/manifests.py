"""Manifests: load objects from files, directories and stdin; apply them to the cluster.

**Loading.** A path is a file (YAML, possibly several ``---`` documents, or JSON), a
directory (its ``*.yaml``, ``*.yml`` and ``*.json`` files in name order; with
``recursive`` also its subdirectories) or ``-`` (stdin). ``kind: List`` documents are
expanded into their items; empty documents are skipped. Every object must have
``apiVersion``, ``kind`` and ``metadata.name``; an error names the file and document.
Everything is loaded and checked before anything is sent, so a bad file changes nothing.

**Apply** (kubectl's client-side apply): the object is read from the server; if absent
it is created; otherwise a JSON merge patch is computed from three inputs, the last
applied manifest (kept in the ``kubectl.kubernetes.io/last-applied-configuration``
annotation, the same key kubectl uses), the new manifest and the live object:

- fields the new manifest sets to a value the live object does not have are sent;
- fields the last manifest had and the new one dropped are deleted (``null``);
- fields set by others (server defaults, controllers, ``status``) are left alone; a list
  counts as unchanged when the live list has the manifest's entries with at least the
  manifest's fields (so defaults filled into containers do not make every apply
  "configured").

An empty patch means ``unchanged``. The patch carries the live ``resourceVersion`` so a
concurrent writer makes it fail with 409; apply then re-reads and retries.

Neighbours: :mod:`control.client.rest`, :mod:`control.cli.apply` (``meshctl apply``).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml

from control.client import errors
from control.client.resources import Resource, UnknownResource, for_object
from control.client.rest import ApiClient

Obj = dict[str, Any]
ApplyAction = Literal["created", "configured", "unchanged"]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Written by the server: never part of what a manifest asks for.
SERVER_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "selfLink",
                   "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds")
APPLY_RETRIES = 5


class ManifestError(ValueError):
    """A manifest that cannot be loaded (message names the file and document)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object from a manifest and where it came from (``file.yaml#2``)."""

    obj: Obj
    source: str

    @property
    def resource(self) -> Resource:
        return for_object(self.obj["apiVersion"], self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


def load_paths(paths: Sequence[str], *, recursive: bool = False,
               stdin: TextIO | None = None) -> list[Manifest]:
    """Every object in ``paths`` (files, directories, ``-`` for stdin), in order."""
    out: list[Manifest] = []
    for p in paths:
        if p == "-":
            out += load_text((stdin or sys.stdin).read(), "<stdin>")
            continue
        path = Path(p)
        if path.is_dir():
            files = _manifest_files(path, recursive)
            if not files:
                raise ManifestError(f"{path}: directory holds no {'/'.join(MANIFEST_SUFFIXES)} "
                                    "files")
            for f in files:
                out += _load_file(f)
        elif path.exists():
            out += _load_file(path)
        else:
            raise ManifestError(f"{path}: no such file or directory")
    return out


def _manifest_files(root: Path, recursive: bool) -> list[Path]:
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(f for f in found if f.is_file() and f.suffix in MANIFEST_SUFFIXES)


def _load_file(path: Path) -> list[Manifest]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read: {e}") from e
    return load_text(text, str(path))


def load_text(text: str, source: str) -> list[Manifest]:
    """The objects in one YAML (multi-document) or JSON text."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ManifestError(f"{source}: not valid YAML/JSON: {e}") from e
    out: list[Manifest] = []
    for i, doc in enumerate(docs, start=1):
        where = f"{source}#{i}" if len(docs) > 1 else source
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: a manifest must be a mapping, got "
                                f"{type(doc).__name__}")
        is_list = str(doc.get("kind", "")).endswith("List") and "items" in doc
        if is_list:
            if not isinstance(doc["items"], list):
                raise ManifestError(f"{where}: items of a {doc['kind']} must be a list")
            for j, item in enumerate(doc.get("items") or [], start=1):
                out.append(Manifest(_check(item, f"{where} items[{j}]"), f"{where}[{j}]"))
        else:
            out.append(Manifest(_check(doc, where), where))
    return out


def _check(obj: Any, where: str) -> Obj:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: a manifest must be a mapping")
    for field in ("apiVersion", "kind"):
        if not isinstance(obj.get(field), str) or not obj[field]:
            raise ManifestError(f"{where}: missing {field}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ManifestError(f"{where}: missing metadata.name ({obj['kind']})")
    try:
        for_object(obj["apiVersion"], obj["kind"])
    except UnknownResource as e:
        raise ManifestError(f"{where}: {e}") from None
    return obj


def display_name(res: Resource, name: str) -> str:
    """kubectl's ``deployment.apps/web``, ``service/web``."""
    kind = res.kind.lower()
    return f"{kind}.{res.group}/{name}" if res.group else f"{kind}/{name}"


def target_namespace(manifest: Manifest, namespace: str | None, *,
                     default: str) -> str | None:
    """The namespace a manifest goes to: its own, else ``namespace``, else ``default``.
    A manifest naming a different namespace than an explicit ``namespace`` is an error
    (as in kubectl); cluster-scoped kinds have none."""
    res = manifest.resource
    if not res.namespaced:
        return None
    own = manifest.obj["metadata"].get("namespace")
    if own and namespace and own != namespace:
        raise ManifestError(f"{manifest.source}: the namespace from the manifest ({own}) does "
                            f"not match the namespace given ({namespace})")
    return own or namespace or default


def desired_object(manifest: Manifest, namespace: str | None) -> Obj:
    """What apply sends: the manifest without status and server-written metadata, in
    its namespace, with the last-applied annotation recording exactly that."""
    obj = copy.deepcopy(manifest.obj)
    obj.pop("status", None)
    meta = obj["metadata"]
    for k in SERVER_METADATA:
        meta.pop(k, None)
    if namespace:
        meta["namespace"] = namespace
    annotations = meta.get("annotations") or {}
    annotations.pop(LAST_APPLIED, None)
    if not annotations:
        meta.pop("annotations", None)
    recorded = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    meta.setdefault("annotations", {})[LAST_APPLIED] = recorded
    return obj


async def apply(client: ApiClient, manifest: Manifest, *, namespace: str | None = None,
                default_namespace: str = "default") -> tuple[ApplyAction, Obj]:
    """Create or update one object; return what happened and the server's object."""
    res = manifest.resource
    ns = target_namespace(manifest, namespace, default=default_namespace)
    desired = desired_object(manifest, ns)
    for _ in range(APPLY_RETRIES):
        try:
            live = await client.get(res, manifest.name, namespace=ns)
        except errors.NotFound:
            try:
                return "created", await client.create(res, desired, namespace=ns)
            except errors.AlreadyExists:
                continue  # created by someone else meanwhile: patch it instead
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        try:
            original = json.loads(annotations.get(LAST_APPLIED) or "{}")
        except ValueError:
            original = {}
        patch = three_way_patch(original, desired, live)
        if not patch:
            return "unchanged", live
        patch.setdefault("metadata", {})["resourceVersion"] = live["metadata"].get(
            "resourceVersion")
        try:
            return "configured", await client.patch(res, manifest.name, patch, namespace=ns)
        except errors.Conflict:
            continue
    raise errors.Conflict(409, "Conflict", f"{display_name(res, manifest.name)}: gave up after "
                          f"{APPLY_RETRIES} conflicting concurrent updates")


def three_way_patch(original: Any, modified: Obj, current: Any) -> Obj:
    """A JSON merge patch taking ``current`` to ``modified`` for the fields ``modified``
    owns, deleting the ones ``original`` had and ``modified`` dropped."""
    original = original if isinstance(original, dict) else {}
    current = current if isinstance(current, dict) else {}
    patch: Obj = {}
    for key, want in modified.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = three_way_patch(original.get(key), want, have)
            if sub:
                patch[key] = sub
        elif key not in current or not covers(want, have):
            patch[key] = want
    for key in original:
        if key not in modified and key in current:
            patch[key] = None
    return patch


def covers(want: Any, have: Any) -> bool:
    """True when ``have`` holds everything ``want`` says (extra fields in ``have``, such
    as server defaults, are allowed; lists must match entry by entry)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and covers(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(
            covers(w, h) for w, h in zip(want, have, strict=True))
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    return bool(want == have)
