"""Static Pods: Pod manifests in a directory, run by the agent without an API server.

The kubelet's ``--pod-manifest-path``: every ``*.yaml``/``*.yml``/``*.json`` file in
the directory may hold one or more Pod documents; the agent runs exactly those, and a
file removed or edited is a Pod deleted or replaced. It is how the agent runs before
(or without) a control plane, and how a node can run the control plane itself.

A static Pod has no API-server uid, so one is derived from the node name, the Pod's
namespace/name and its spec (as the kubelet hashes static pods): editing the spec
gives a new uid, hence a fresh Pod, and re-reading an unchanged file gives the same
uid, so an agent restart adopts the running containers. A file that does not parse is
logged and its previous Pods are kept (a half-written file must not delete Pods).

Status goes to ``<state dir>/status/<namespace>_<name>.json`` (:class:`StatusFiles`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

Obj = dict[str, Any]
SUFFIXES = (".yaml", ".yml", ".json")


class StaticPods:
    """Reads the Pod manifests of one directory."""

    def __init__(self, directory: str | os.PathLike[str], *, node: str) -> None:
        self.directory = Path(directory)
        self.node = node
        self._last_good: dict[Path, list[Obj]] = {}

    def load(self) -> list[Obj]:
        """All Pods currently in the directory (last good version of broken files)."""
        current: dict[Path, list[Obj]] = {}
        try:
            files = sorted(p for p in self.directory.iterdir()
                           if p.suffix in SUFFIXES and not p.name.startswith("."))
        except FileNotFoundError:
            files = []
        for path in files:
            try:
                docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
                pods = [self._complete(d, path) for d in docs]
            except (OSError, yaml.YAMLError, ValueError) as e:
                log.error("static pod file %s ignored: %s", path, e)
                if path in self._last_good:
                    current[path] = self._last_good[path]
                continue
            current[path] = pods
        self._last_good = current
        return [p for pods in current.values() for p in pods]

    def _complete(self, doc: Any, path: Path) -> Obj:
        if not isinstance(doc, dict) or doc.get("kind") != "Pod":
            raise ValueError(f"expected kind: Pod, got {type(doc).__name__} "
                             f"{doc.get('kind') if isinstance(doc, dict) else ''}")
        meta = dict(doc.get("metadata") or {})
        if not meta.get("name"):
            raise ValueError("metadata.name is missing")
        meta.setdefault("namespace", "default")
        spec = dict(doc.get("spec") or {})
        spec["nodeName"] = self.node
        digest = hashlib.sha256(json.dumps(
            [self.node, meta["namespace"], meta["name"], spec], sort_keys=True,
            default=str).encode()).hexdigest()
        meta["uid"] = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        meta.setdefault("annotations", {})
        meta["annotations"] = {**meta["annotations"], "mesh.io/config.source": str(path)}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


class StatusFiles:
    """A status sink writing each Pod's status to a JSON file (static mode)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    async def __call__(self, obj: Obj, status: Obj) -> None:
        meta = obj.get("metadata") or {}
        path = self.directory / f"{meta.get('namespace', 'default')}_{meta.get('name')}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"metadata": meta, "status": status}, indent=2,
                                  default=str))
        os.replace(tmp, path)
