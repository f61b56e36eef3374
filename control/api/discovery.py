"""Discovery documents: what groups, versions and resources this server serves.

``/api`` (APIVersions), ``/apis`` (APIGroupList), ``/apis/{group}`` (APIGroup),
``/api/v1`` and ``/apis/{group}/{version}`` (APIResourceList with verbs, short names,
scope and subresources) and ``/version``, shaped as kube-apiserver's so ``kubectl``-like
clients and the official client libraries find the resources. Built from
``resources.RESOURCES``: there is no second list to keep in sync.
"""

from __future__ import annotations

import platform
from typing import Any

from control import __version__
from control.api.resources import (
    GROUP_VERSIONS,
    SUBRESOURCE_VERBS,
    VERBS,
    resources_in,
)

KUBE_COMPAT = ("1", "30")  # the Kubernetes API level whose shapes this server follows


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": list(GROUP_VERSIONS[""]),
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _group(name: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in GROUP_VERSIONS[name]]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": versions,
            "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    groups = [_group(g) for g in GROUP_VERSIONS if g]
    for g in groups:
        del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str) -> dict[str, Any] | None:
    return _group(name) if name and name in GROUP_VERSIONS else None


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    served = resources_in(group, version)
    if not served:
        return None
    out: list[dict[str, Any]] = []
    for r in served:
        out.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": list(VERBS), "shortNames": list(r.short_names)})
        for sub in sorted(r.subresources):
            entry: dict[str, Any] = {"name": f"{r.plural}/{sub}", "singularName": "",
                                     "namespaced": r.namespaced, "kind": r.kind,
                                     "verbs": list(SUBRESOURCE_VERBS[sub])}
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "binding":
                entry["kind"] = "Binding"
            out.append(entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": out}


def version_info() -> dict[str, Any]:
    major, minor = KUBE_COMPAT
    return {"major": major, "minor": minor,
            "gitVersion": f"v{major}.{minor}.0-mesh.{__version__}",
            "gitCommit": "", "gitTreeState": "", "buildDate": "",
            "goVersion": f"python{platform.python_version()}", "compiler": "cpython",
            "platform": f"{platform.system().lower()}/{platform.machine()}"}
