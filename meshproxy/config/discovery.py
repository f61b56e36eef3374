"""Discovery settings: which clusters follow a Service of the control plane, and how to
reach the API server.

A cluster named under ``discovery.clusters`` takes its endpoints from the Endpoints
object of a Service (list + watch, see :mod:`meshproxy.discovery`) instead of from this
file; the file keeps everything else about the cluster (timeouts, pools, balancer), so
it stays the place for local overrides. A followed cluster may not also list
``endpoints`` here: two sources for one field would leave the reader guessing which
one is in force (checked in :func:`meshproxy.config.root.cross_check`).

The section takes effect on start and on every reload: a reload that changes it
restarts the watches, keeping the last known endpoints until the new ones arrive.
"""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta
from msgspec.structs import force_setattr

from meshproxy.config.base import Name, Seconds, Settings
from meshproxy.schema import field_error

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _dns_label(v: str, what: str, field: str) -> str:
    if len(v) > 63 or not DNS_LABEL.match(v):
        raise field_error(field, f"{what} {v!r} is not a DNS-1123 label (lower-case "
                          "letters, digits and '-', at most 63)")
    return v


class FollowConfig(Settings, kw_only=True):
    """One cluster that follows one port of one Service."""

    #: The cluster (defined under ``clusters``) whose endpoints this sets.
    cluster: Name
    #: ``name`` (in ``discovery.namespace``) or ``namespace/name``.
    service: str
    #: The Service port: its name, or its ``port`` number. None: the Service's only
    #: port (or, with several, its first as listed in the Service).
    port: Annotated[str, Meta(min_length=1)] | Annotated[int, Meta(ge=1, le=65535)] | None \
        = None

    def __post_init__(self) -> None:
        ns, sep, name = self.service.rpartition("/")
        if sep:
            _dns_label(ns, "namespace", "service")
        _dns_label(name, "service name", "service")


class BackoffConfig(Settings, kw_only=True):
    """Reconnect back-off after a failed list or watch: exponential with full jitter
    (each wait is uniform in [0, min(max, initial * 2**attempt)]), reset once a watch
    is open again."""

    #: 0.5 s: a restarting API server is usually back within a few seconds.
    initial: Seconds = 0.5
    #: 30 s: bounds the extra staleness after a long outage, and a thousand sidecars
    #: retrying at most every 30 s (spread by jitter) do not stampede the server.
    max: Seconds = 30.0

    def __post_init__(self) -> None:
        if self.initial > self.max:
            raise ValueError(f"initial ({self.initial}) must not exceed max ({self.max})")


class DiscoveryConfig(Settings, kw_only=True):
    """Where the control plane is, and which clusters follow which Services."""

    #: The API server's URL, ``https://host:port`` (or ``http://`` for tests).
    server: str
    #: File holding a bearer token with the ``proxy`` role; read at every (re)connect,
    #: so a rotated token is picked up. None: no Authorization header.
    token_file: str | None = None
    #: CA certificate (PEM) to verify the server with; None: the system's CAs.
    ca_file: str | None = None
    #: Verify the server's TLS certificate. Off only for tests and throwaway setups.
    tls_verify: bool = True
    #: Namespace of services named without one.
    namespace: str = "default"
    clusters: Annotated[tuple[FollowConfig, ...], Meta(min_length=1, max_length=4096)]
    #: Seconds between full relists (the level-triggered safety net against a missed
    #: event); each watch also ends after this long and resumes. 300 s, as client-go's
    #: default watch timeout range.
    resync: Seconds = 300.0
    #: Seconds without a byte (event or BOOKMARK) on a watch before the connection is
    #: considered dead and reopened. The API server sends a BOOKMARK every few seconds of
    #: quiet, so 60 s only fires on a silently broken connection.
    idle_timeout: Seconds = 60.0
    #: Seconds to connect to the API server.
    connect_timeout: Seconds = 5.0
    backoff: BackoffConfig = BackoffConfig()
    #: Also follow the TrafficPolicies of the followed Services and merge each under
    #: the file's settings of its cluster and routes (see meshproxy.discovery.policy).
    policies: bool = True
    #: File where the last known Services and Endpoints are kept (written atomically:
    #: temp file + rename), so a proxy restarted while the control plane is down starts
    #: from them. None: no cache.
    cache_file: str | None = None

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+/?$", self.server):
            raise field_error("server",
                              f"{self.server!r} is not an API server URL (http[s]://host:port)")
        if self.server.endswith("/"):
            force_setattr(self, "server", self.server.rstrip("/"))
        _dns_label(self.namespace, "namespace", "namespace")
        seen: set[str] = set()
        for f in self.clusters:
            if f.cluster in seen:
                raise field_error("clusters",
                                  f"cluster {f.cluster!r} follows more than one service")
            seen.add(f.cluster)

    def service_key(self, follow: FollowConfig) -> tuple[str, str]:
        """(namespace, name) of a followed service."""
        ns, sep, name = follow.service.rpartition("/")
        return (ns if sep else self.namespace, name)

    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({self.service_key(f)[0] for f in self.clusters}))
