"""Discovery: clusters that follow Services of the control plane.

A cluster named under the config's ``discovery.clusters`` takes its endpoints from the
Endpoints object of a Service, listed and watched from the API server with a ``proxy``
token, and applied in place (:meth:`meshproxy.cluster.Cluster.set_endpoints`); the rest
of the cluster (timeouts, pools, balancer, resilience) comes from the file.

Which source wins, field by field:

============================  ===================================================
endpoints of a followed       the control plane (the file may not list any for it:
cluster                       refused at validation, one source per field)
every other cluster setting   the file (the place for local overrides)
clusters not followed,        the file only
listeners, routes, admin
how to reach the control      the file's ``discovery`` section
plane
============================  ===================================================

TrafficPolicies are not applied yet: the proxy has no per-service policy model that a
policy's spec maps onto, so only endpoints are discovered.

Static stability: when the API server is unreachable or erroring, the last known
endpoints keep serving; watches reconnect with exponential back-off and full jitter,
relist on 410 Gone, and ``meshproxy_discovery_staleness_seconds`` grows. With
``cache_file`` the last known state also survives a proxy restart.

Modules: ``watch`` (the list/watch wire protocol over aiohttp, back-off), ``resolve``
(Service + Endpoints → endpoint set), ``cache`` (the atomic state file), ``runtime``
(:class:`Discovery`, :class:`DiscoveringProxy`, metrics). Configured by
:mod:`meshproxy.config.discovery`; started by :mod:`meshproxy.run`.
"""

from meshproxy.discovery.runtime import DiscoveringProxy, Discovery, DiscoveryStats

__all__ = ["DiscoveringProxy", "Discovery", "DiscoveryStats"]
