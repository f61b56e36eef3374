"""Cluster settings: a named set of upstream endpoints and how to reach them.

A cluster is what routes and TCP listeners point at. Its endpoints come from this file
for now; discovery will feed the same :class:`meshproxy.cluster.Cluster` object later
through ``set_endpoints``. The policy sections (load balancing, health checks, breakers,
outlier detection, limits) come from :class:`~meshproxy.config.policy.ClusterPolicy`;
``lb_policy: NAME`` remains as shorthand for ``load_balancer: {policy: NAME}``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from meshproxy.config.base import Name, Seconds, Settings, split_host_port
from meshproxy.config.policy import ClusterPolicy


class EndpointConfig(Settings):
    """One upstream ``host:port`` with its weight."""

    address: str
    #: Relative share of traffic under weighted policies; 1 = an equal share.
    weight: int = Field(default=1, ge=1, le=10000)

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        split_host_port(v)
        return v

    @property
    def host(self) -> str:
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address)[1]


class PoolConfig(Settings):
    """Per-endpoint upstream keep-alive pool."""

    #: Connections (busy + idle) to one endpoint. 1024: far above what one sidecar
    #: needs, low enough that a stuck upstream cannot exhaust file descriptors.
    max_connections: int = Field(default=1024, ge=1, le=65536)
    #: Requests that may wait for a free connection when the pool is full; beyond
    #: this they are refused at once with 503 ``pool_overflow`` instead of queueing.
    max_pending: int = Field(default=1024, ge=0, le=65536)
    #: Seconds an idle pooled connection is kept. 30 s stays below common upstream
    #: keep-alive timeouts (nginx 75 s, Node 5 s is the exception) to avoid racing
    #: the upstream's own close.
    idle_timeout: Seconds = 30.0
    #: Idle connections kept per endpoint (the rest are closed when released).
    max_idle: int = Field(default=128, ge=0, le=65536)


class ClusterConfig(ClusterPolicy):
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

    @field_validator("endpoints", mode="before")
    @classmethod
    def _strings_are_addresses(cls, v: object) -> object:
        # "host:port" is accepted as shorthand for {address: "host:port"}.
        if isinstance(v, list | tuple):
            return [{"address": e} if isinstance(e, str) else e for e in v]
        return v

    @model_validator(mode="after")
    def _unique_endpoints(self) -> ClusterConfig:
        seen: set[str] = set()
        for e in self.endpoints:
            if e.address in seen:
                raise ValueError(f"endpoint {e.address} is listed twice")
            seen.add(e.address)
        return self
