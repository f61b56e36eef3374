"""Cluster settings: a named set of upstream endpoints and how to reach them.

A cluster is what routes and TCP listeners point at. Its endpoints come from this file
for now; discovery will feed the same :class:`meshproxy.cluster.Cluster` object later
through ``set_endpoints``. The policy sections (load balancing, health checks, breakers,
outlier detection, limits) come from :class:`~meshproxy.config.policy.ClusterPolicy`;
``lb_policy: NAME`` remains as shorthand for ``load_balancer: {policy: NAME}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from meshproxy.config.base import Name, Seconds, Settings, split_host_port
from meshproxy.config.policy import ClusterPolicy
from meshproxy.schema import field_error


class EndpointConfig(Settings, kw_only=True):
    """One upstream ``host:port`` with its weight."""

    address: str
    #: Relative share of traffic under weighted policies; 1 = an equal share.
    weight: Annotated[int, Meta(ge=1, le=10000)] = 1

    def __post_init__(self) -> None:
        try:
            split_host_port(self.address)
        except ValueError as e:
            raise field_error("address", str(e)) from None

    @property
    def host(self) -> str:
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address)[1]


class PoolConfig(Settings, kw_only=True):
    """Per-endpoint upstream keep-alive pool."""

    #: Connections (busy + idle) to one endpoint. 1024: far above what one sidecar
    #: needs, low enough that a stuck upstream cannot exhaust file descriptors.
    max_connections: Annotated[int, Meta(ge=1, le=65536)] = 1024
    #: Requests that may wait for a free connection when the pool is full; beyond
    #: this they are refused at once with 503 ``pool_overflow`` instead of queueing.
    max_pending: Annotated[int, Meta(ge=0, le=65536)] = 1024
    #: Seconds an idle pooled connection is kept. 30 s stays below common upstream
    #: keep-alive timeouts (nginx 75 s, Node 5 s is the exception) to avoid racing
    #: the upstream's own close.
    idle_timeout: Seconds = 30.0
    #: Idle connections kept per endpoint (the rest are closed when released).
    max_idle: Annotated[int, Meta(ge=0, le=65536)] = 128


class ClusterConfig(ClusterPolicy, kw_only=True):
    """A named set of endpoints, with its policy (see ClusterPolicy)."""

    name: Name
    endpoints: tuple[EndpointConfig, ...] = ()
    #: Seconds to establish a TCP connection to an endpoint before failing with 503
    #: (HTTP: reason ``connect_timeout``). 1 s: loopback and LAN connects take
    #: microseconds to milliseconds; waiting longer only stacks up requests.
    connect_timeout: Seconds = 1.0
    #: Seconds without a byte from the upstream while a request is in progress
    #: (headers or body) before the exchange is abandoned (504 ``upstream_idle``
    #: before the response head, a cut response after). 60 s, as Envoy's stream idle.
    stream_idle_timeout: Seconds = 60.0
    pool: PoolConfig = PoolConfig()

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._prepare(data)
        v = data.get("endpoints")
        # "host:port" is accepted as shorthand for {address: "host:port"}.
        if isinstance(v, list | tuple):
            data = {**data, "endpoints": [{"address": e} if isinstance(e, str) else e
                                          for e in v]}
        return data

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for e in self.endpoints:
            if e.address in seen:
                raise ValueError(f"endpoint {e.address} is listed twice")
            seen.add(e.address)
