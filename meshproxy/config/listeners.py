"""Listener and route settings: what the proxy accepts and where it sends it.

An ``http`` listener parses HTTP/1.1 and routes each request by host, path (prefix,
exact or regex) and headers to a cluster; limits on request heads and bodies guard it
against hostile clients. A ``tcp`` listener forwards whole connections to a cluster.
The runtime objects are built in :mod:`meshproxy.router` (routes),
:mod:`meshproxy.http.server` and :mod:`meshproxy.tcp`.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from msgspec import Meta

from meshproxy.config.base import Bytes, Name, Port, Seconds, Settings
from meshproxy.config.policy import RoutePolicy
from meshproxy.schema import field_error


def _check_regex(field: str, v: str | None) -> None:
    if v is None:
        return
    try:
        re.compile(v)
    except re.error as e:
        raise field_error(field, f"invalid regular expression {v!r}: {e}") from None


class HeaderMatch(Settings, kw_only=True):
    """A condition on one request header: exact value, regex, or mere presence."""

    name: Annotated[str, Meta(min_length=1, max_length=256)]
    #: Exact value (case-sensitive).
    value: str | None = None
    #: Full-match regular expression on the value.
    regex: str | None = None
    #: True: the header must be present; False: it must be absent. None: use value/regex.
    present: bool | None = None
    #: Invert the whole condition.
    invert: bool = False

    def __post_init__(self) -> None:
        _check_regex("regex", self.regex)
        given = [k for k in ("value", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of value, regex, present")


class RouteMatch(Settings, kw_only=True):
    """All given conditions must hold. No condition at all matches every request."""

    #: Host header (port stripped, case-insensitive): exact ``api.example.com`` or a
    #: leading wildcard ``*.example.com``. None: any host.
    host: str | None = None
    #: Path prefix (``/api`` matches ``/api`` and ``/api/x``; segment-unaware, as Envoy).
    prefix: str | None = None
    #: Exact path (query string excluded).
    path: str | None = None
    #: Full-match regular expression on the path (query string excluded).
    regex: str | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def __post_init__(self) -> None:
        _check_regex("regex", self.regex)
        for field in ("prefix", "path"):
            v = getattr(self, field)
            if v is not None and not v.startswith("/"):
                raise field_error(field, f"{v!r} must start with '/'")
        if sum(x is not None for x in (self.prefix, self.path, self.regex)) > 1:
            raise ValueError("set at most one of prefix, path, regex")


class RouteConfig(RoutePolicy, kw_only=True):
    """Requests matching ``match`` go to ``cluster``. Routes are tried in order. The
    policy sections (retry, hedge, deadline, rate limit, priority) are RoutePolicy's."""

    name: Name
    match: RouteMatch = RouteMatch()
    cluster: Name
    #: Seconds from dispatch until the upstream's response head must have arrived,
    #: including every attempt; 504 ``route_timeout`` after. 15 s as Envoy's default.
    timeout: Seconds = 15.0


class HttpLimits(Settings, kw_only=True):
    """Limits on what a downstream client may send. Each breach is a local reply."""

    #: Bytes of the whole request head (request line + headers); 431 over it.
    #: 60 KiB: above any real browser/cookie load, far below memory trouble.
    max_header_bytes: Bytes = 60 * 1024
    #: Bytes of the request line's target; 414 over it. 8 KiB as nginx's default
    #: large_client_header_buffers.
    max_request_line_bytes: Bytes = 8 * 1024
    #: Header fields per request; 431 over it. 100, as Envoy's default.
    max_headers: Annotated[int, Meta(ge=1, le=10000)] = 100
    #: Bytes of a request body; 413 over it. 10 MiB: an API proxy, not a file host.
    max_body_bytes: Bytes = 10 * 1024 * 1024
    #: Seconds a client has to send a complete request head once it started one;
    #: 408 after (slowloris). 10 s: generous for slow links, short for attackers.
    header_timeout: Seconds = 10.0
    #: Seconds an idle keep-alive downstream connection is kept open, and a client
    #: that takes no byte of what is waiting for it is waited for (then cut, as nginx's
    #: ``send_timeout``). 60 s: long enough for client pools to reuse a connection,
    #: short enough to shed abandoned ones.
    idle_timeout: Seconds = 60.0
    #: Pipelined requests buffered behind the one in progress before reading pauses.
    max_pipelined: Annotated[int, Meta(ge=1, le=1024)] = 16


class HttpListenerConfig(Settings, tag_field="protocol", tag="http", kw_only=True):
    """An L7 HTTP/1.1 listener (``protocol: http`` in the file: the union's tag)."""

    protocol: ClassVar[Literal["http"]] = "http"
    name: Name
    #: Address to bind. Loopback by default: a sidecar's inbound side is usually
    #: reached through the node; set 0.0.0.0 to expose it.
    address: str = "127.0.0.1"
    port: Port
    routes: Annotated[tuple[RouteConfig, ...], Meta(min_length=1)]
    limits: HttpLimits = HttpLimits()
    #: Append the client address to X-Forwarded-For and set X-Forwarded-Proto.
    forwarded_headers: bool = True
    #: Add X-Request-Id (a UUID4) to requests that arrive without one.
    request_id: bool = True

    def __post_init__(self) -> None:
        names = [r.name for r in self.routes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"route names must be unique, repeated: {sorted(dup)}")


class TcpListenerConfig(Settings, tag_field="protocol", tag="tcp", kw_only=True):
    """An L4 listener: each accepted connection is piped to an endpoint of ``cluster``
    (``protocol: tcp`` in the file: the union's tag)."""

    protocol: ClassVar[Literal["tcp"]] = "tcp"
    name: Name
    address: str = "127.0.0.1"
    port: Port
    cluster: Name
    #: Seconds without a byte in either direction before both sides are closed.
    #: 1 hour: TCP users (databases) hold long idle connections on purpose.
    idle_timeout: Seconds = 3600.0


#: A listener, told apart by its ``protocol`` key (a tagged union).
ListenerConfig = HttpListenerConfig | TcpListenerConfig
