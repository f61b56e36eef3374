"""From a Service and its Endpoints object to a cluster's ``(host, port, weight)`` set.

Kubernetes' conventions, as the control plane's endpoints controller writes them
(``control/controllers/endpoints.py``): an Endpoints object has the Service's name and
``subsets``, each a group of ``addresses[].ip`` sharing the same ``ports[]`` (``name``
= the Service port's name, ``port`` = where that address serves it; here a host port
published on the node). ``notReadyAddresses`` are never routed to.

A followed cluster names the Service port by name, by its ``port`` number (resolved to
its name through the Service), or not at all (the Service's only port, or its first).
Every address is weight 1: the balancer spreads over replicas equally, as kube-proxy
does. Pure functions, so the rules are tested without a server.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


class Unresolved(ValueError):
    """The port cannot be resolved yet (no such Service port, or the Service is unknown
    while a number was asked for); the message says which."""


def port_name(port: str | int | None, service: Obj | None) -> str | None:
    """The Service port name to look for in the Endpoints (``""`` for an unnamed single
    port); None means "the only port" when the Service is not known."""
    if isinstance(port, str):
        return port
    ports = ((service or {}).get("spec") or {}).get("ports") or []
    if port is None:
        if service is None or not ports:
            return None
        return str(ports[0].get("name") or "")
    if service is None:
        raise Unresolved(f"port {port}: the Service is not known yet")
    for sp in ports:
        if int(sp.get("port", 0)) == port:
            return str(sp.get("name") or "")
    raise Unresolved(f"the Service has no port {port} (it has "
                     f"{[sp.get('port') for sp in ports]})")


def endpoint_set(endpoints: Obj | None, *, port: str | int | None,
                 service: Obj | None) -> list[tuple[str, int, int]]:
    """The ready addresses of ``endpoints`` on the chosen port, sorted, without
    duplicates. No Endpoints object: empty (the control plane says nobody serves)."""
    if endpoints is None:
        return []
    name = port_name(port, service)
    out: dict[tuple[str, int], int] = {}
    for subset in endpoints.get("subsets") or ():
        ports = subset.get("ports") or []
        chosen = None
        for p in ports:
            if name is None:
                chosen = p if len(ports) == 1 else None
                break
            if str(p.get("name") or "") == name:
                chosen = p
                break
        if chosen is None:
            continue
        number = int(chosen.get("port", 0))
        if not 0 < number < 65536:
            continue
        for addr in subset.get("addresses") or ():
            ip = addr.get("ip")
            if ip:
                out[(str(ip), number)] = 1
    return [(host, p, w) for (host, p), w in sorted(out.items())]
