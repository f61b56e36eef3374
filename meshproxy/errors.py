"""The request path's error tree: every failure the proxy turns into a local reply.

Library errors (``OSError``, ``TimeoutError``, httptools' parser errors) are translated
once, where they happen (the upstream connection, the pool, the downstream protocol),
into one of these. Each carries the HTTP status of its local reply and a short
``reason`` (Envoy's response flags, spelled out): the value of the ``x-mesh-reason``
response header and of the ``reason`` metric label. The rescue layer
(:mod:`meshproxy.layers.rescue`) is the one place that maps them to responses.

Tree::

    ProxyError
    ├── DownstreamError        the client sent something we refuse (400/408/413/414/431)
    ├── NoRoute                404 no_route
    ├── NoHealthyUpstream      503 no_healthy_upstream
    ├── PoolOverflow           503 pool_overflow
    ├── Overloaded             503 (subclasses: breaker, limits, degrade add their own)
    └── UpstreamError
        ├── ConnectFailure     502 connect_failure (refused, unreachable)
        ├── ConnectTimeout     503 connect_timeout (Envoy answers 503 for this too)
        ├── UpstreamReset      502 upstream_reset (closed/reset before a full response)
        ├── UpstreamProtocolError 502 upstream_protocol_error (unparseable response)
        └── UpstreamTimeout    504 route_timeout / upstream_idle
"""

from __future__ import annotations


class ProxyError(Exception):
    """A failure with a local reply: ``status`` and ``reason``."""

    status = 500
    reason = "internal_error"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or self.reason)
        if reason is not None:
            self.reason = reason
        self.detail = detail


class DownstreamError(ProxyError):
    """The client's request is refused; the connection is closed after the reply."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(detail, reason=reason)
        self.status = status


class NoRoute(ProxyError):
    status = 404
    reason = "no_route"


class NoHealthyUpstream(ProxyError):
    status = 503
    reason = "no_healthy_upstream"


class PoolOverflow(ProxyError):
    status = 503
    reason = "pool_overflow"


class Overloaded(ProxyError):
    """Base for refusals by protective layers (limits, breakers, degradation)."""

    status = 503
    reason = "overloaded"


class UpstreamError(ProxyError):
    """Something went wrong talking to an upstream endpoint."""

    status = 502
    reason = "upstream_error"
    #: True when no byte of the request may have been processed by the upstream
    #: (connect failed): always safe to try elsewhere.
    before_request_sent = False


class ConnectFailure(UpstreamError):
    reason = "connect_failure"
    before_request_sent = True


class ConnectTimeout(UpstreamError):
    status = 503
    reason = "connect_timeout"
    before_request_sent = True


class UpstreamReset(UpstreamError):
    reason = "upstream_reset"


class UpstreamProtocolError(UpstreamError):
    reason = "upstream_protocol_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    reason = "route_timeout"


class Refused(Overloaded):
    """A protective layer's refusal (rate limit, switch, limits, breaker), with its own
    status, reason and response headers (a 429's ``Retry-After``)."""

    def __init__(self, status: int, reason: str, detail: str = "", *,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status = status
        self.headers = headers
