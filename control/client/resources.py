"""Which resource a name means, and the REST path of a collection, object or subresource.

The kinds themselves are the API server's registry (:mod:`control.api.resources`, pure
data: group, version, kind, plural, scope, short names, subresources); the client
imports that table instead of keeping a copy that could drift. This module adds what a
client needs on top:

- :func:`lookup` resolves what a user or a manifest says (``pods``, ``pod``, ``po``,
  ``Pod``, ``deployments.apps``, ``deploy``; or ``apiVersion`` + ``kind``) to one
  :class:`Resource`, with a clear error listing what exists;
- :func:`path` builds ``/api/v1/namespaces/{ns}/pods/{name}/status`` and friends.

Neighbours: :mod:`control.client.rest` (uses the paths), :mod:`control.cli` (names on the
command line), :mod:`control.client.manifests` (``apiVersion``/``kind`` of documents).
"""

from __future__ import annotations

from urllib.parse import quote

from control.api.resources import RESOURCES, Resource

__all__ = ["RESOURCES", "Resource", "UnknownResource", "for_object", "lookup", "path"]


class UnknownResource(LookupError):
    """A name or apiVersion/kind that the API does not serve."""


def _names(res: Resource) -> set[str]:
    names = {res.plural, res.singular, res.kind.lower(), *res.short_names}
    if res.group:
        names |= {f"{n}.{res.group}" for n in (res.plural, res.singular)}
    return names


_BY_NAME: dict[str, Resource] = {}
for _r in RESOURCES:
    for _n in _names(_r):
        _BY_NAME.setdefault(_n, _r)


def lookup(name: str) -> Resource:
    """The resource a command-line name means (plural, singular, kind, short name, or
    ``plural.group``), case-insensitive."""
    res = _BY_NAME.get(name.strip().lower())
    if res is None:
        known = ", ".join(sorted(r.plural for r in RESOURCES))
        raise UnknownResource(f'the server doesn\'t have a resource type "{name}" '
                              f"(known: {known})")
    return res


def for_object(api_version: str, kind: str) -> Resource:
    """The resource of a manifest's ``apiVersion`` and ``kind``."""
    for res in RESOURCES:
        if res.kind == kind and res.api_version == api_version:
            return res
    served = [r.api_version for r in RESOURCES if r.kind == kind]
    if served:
        raise UnknownResource(f'no kind "{kind}" is registered for version "{api_version}" '
                              f"(served as: {', '.join(served)})")
    raise UnknownResource(f'no kind "{kind}" is registered for version "{api_version}"')


def path(res: Resource, *, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    """The REST path of ``res``'s collection (all namespaces when ``namespace`` is None),
    one object, or one object's subresource."""
    if subresource and not name:
        raise ValueError(f"subresource {subresource!r} needs an object name")
    if subresource and subresource not in res.subresources:
        raise ValueError(f"{res.plural} has no {subresource!r} subresource "
                         f"(has: {', '.join(sorted(res.subresources)) or 'none'})")
    root = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
    if res.namespaced and namespace:
        root += f"/namespaces/{quote(namespace, safe='')}"
    root += f"/{res.plural}"
    if name:
        root += f"/{quote(name, safe='')}"
    if subresource:
        root += f"/{subresource}"
    return root
