"""Discovery: clusters that follow Services of the control plane.

A cluster named under the config's ``discovery.clusters`` takes its endpoints from the
Endpoints object of a Service, listed and watched from the API server with a ``proxy``
token, and applied in place (:meth:`meshproxy.cluster.Cluster.set_endpoints`); the rest
of the cluster (timeouts, pools, balancer, resilience) comes from the file.

Which source wins, field by field:

============================  ===================================================
endpoints of a followed       the control plane (the file may not list any for it:
cluster                       refused at validation, one source per field)
policy fields of a followed   the file where it sets the field, else the Service's
cluster (``ClusterPolicy``)   TrafficPolicy (``spec.cluster``), else the default
policy fields of routes to    the file where the route sets the field, else the
it (``RoutePolicy``)          TrafficPolicy (``spec.route``), else the default
the Service's degradation     a switch of the same name in the file's
switch (``spec.degrade``:     ``resilience.switches`` (whole, not per field), else the
service switch named          TrafficPolicy's; an admin-API flip on this proxy holds
``<namespace>.<service>``)    until the TrafficPolicy changes the switch, then the
                              declared state applies
other cluster/route settings  the file (timeouts, pools, matches, ...)
clusters not followed,        the file only
listeners, admin, runtime
how to reach the control      the file's ``discovery`` section
plane
============================  ===================================================

"Sets the field" means written in the YAML, even to its default value: to pin a default
against the control plane, write it in the file.

Static stability: when the API server is unreachable or erroring, the last known
endpoints keep serving; watches reconnect with exponential back-off and full jitter,
relist on 410 Gone, and ``meshproxy_discovery_staleness_seconds`` grows. With
``cache_file`` the last known state also survives a proxy restart.

Modules: ``watch`` (the list/watch wire protocol over aiohttp, back-off), ``resolve``
(Service + Endpoints → endpoint set), ``policy`` (TrafficPolicy → merged config),
``cache`` (the atomic state file), ``runtime`` (:class:`Discovery`, metrics), ``proxy``
(:class:`DiscoveringProxy`). Configured by
:mod:`meshproxy.config.discovery`; started by :mod:`meshproxy.run`.
"""

from meshproxy.discovery.proxy import DiscoveringProxy
from meshproxy.discovery.runtime import Discovery, DiscoveryStats

__all__ = ["DiscoveringProxy", "Discovery", "DiscoveryStats"]
