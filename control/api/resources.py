"""The registry of kinds the API server serves: group, version, kind, plural, scope.

One :class:`Resource` per kind says where it lives in the REST tree
(``/api/v1/namespaces/{ns}/pods``, ``/apis/apps/v1/...``), where its objects live in the
store (``/registry/{group}/{plural}/{namespace}/{name}``), which subresources it has and
what discovery advertises for it. Per-kind validation and defaulting live beside it in
``kinds/``; the handlers in ``handlers.py`` look a request's resource up here first, so
an unknown path or an ``apiVersion``/``kind`` the server does not serve is refused
before anything else happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.api.errors import ApiError

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = {"status": ("get", "patch", "update"), "scale": ("get", "patch", "update"),
                     "binding": ("create",)}

MESH_GROUP = "mesh.io"
MESH_VERSION = "v1alpha1"


@dataclass(frozen=True, slots=True)
class Resource:
    """One kind served by the API server (what it is, not how it is validated)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: frozenset[str] = field(default_factory=frozenset)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def store_group(self) -> str:
        return self.group or "core"

    def key_prefix(self, namespace: str | None = None) -> str:
        """The store prefix of every object of this kind (in ``namespace`` when given);
        always ends with ``/`` so ``pods`` never matches ``podsecurity``."""
        base = f"/registry/{self.store_group}/{self.plural}/"
        if self.namespaced and namespace:
            return f"{base}{namespace}/"
        return base

    def key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            return f"/registry/{self.store_group}/{self.plural}/{namespace}/{name}"
        return f"/registry/{self.store_group}/{self.plural}/{name}"

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection, or of one object when ``name`` is given."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            root += f"/namespaces/{namespace}"
        root += f"/{self.plural}"
        return f"{root}/{name}" if name else root


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "Namespace", "namespaces", False, ("ns",), frozenset({"status"})),
    Resource("", "v1", "Node", "nodes", False, ("no",), frozenset({"status"})),
    Resource("", "v1", "Pod", "pods", True, ("po",), frozenset({"status", "binding"})),
    Resource("", "v1", "Service", "services", True, ("svc",), frozenset({"status"})),
    Resource("", "v1", "Endpoints", "endpoints", True, ("ep",)),
    Resource("", "v1", "Event", "events", True, ("ev",)),
    Resource("apps", "v1", "Deployment", "deployments", True, ("deploy",),
             frozenset({"status", "scale"})),
    Resource("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",),
             frozenset({"status", "scale"})),
    Resource("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True,
             ("hpa",), frozenset({"status"})),
    Resource(MESH_GROUP, MESH_VERSION, "TrafficPolicy", "trafficpolicies", True, ("tp",),
             frozenset({"status"})),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}
GROUP_VERSIONS: dict[str, tuple[str, ...]] = {}
for _r in RESOURCES:
    if _r.version not in GROUP_VERSIONS.setdefault(_r.group, ()):
        GROUP_VERSIONS[_r.group] += (_r.version,)


def by_path(group: str, version: str, plural: str) -> Resource:
    """The resource at ``/api(s)/{group}/{version}/{plural}``; 404 if not served."""
    res = _BY_PATH.get((group, version, plural))
    if res is None:
        gv = f"{group}/{version}" if group else version
        raise ApiError(404, "NotFound",
                       f'the server could not find the requested resource "{plural}" in {gv}')
    return res


def by_kind(api_version: str, kind: str) -> Resource | None:
    return _BY_KIND.get((api_version, kind))


def resources_in(group: str, version: str) -> list[Resource]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


def all_namespaced() -> list[Resource]:
    return [r for r in RESOURCES if r.namespaced]


_BY_STORE_PATH = {(r.store_group, r.plural): r for r in RESOURCES}


def parse_key(key: str) -> tuple[Resource, str | None, str] | None:
    """The resource, namespace and name of a store key (None if not an object key)."""
    parts = key.split("/")
    # "", "registry", group, plural, [namespace,] name
    if len(parts) < 5 or parts[1] != "registry":
        return None
    res = _BY_STORE_PATH.get((parts[2], parts[3]))
    if res is None:
        return None
    if res.namespaced:
        return (res, parts[4], parts[5]) if len(parts) == 6 else None
    return (res, None, parts[4]) if len(parts) == 5 else None
