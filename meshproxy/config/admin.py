"""Admin API settings: where the aiohttp admin port listens and who may change state.

Unlike Envoy's admin API, every endpoint that changes state needs a bearer token; the
read-only ones (``/ready``, ``/metrics``, ``/config_dump``, ``/clusters``) do not. The
port binds to loopback by default so it is not reachable from other machines unless
the operator says so. Served by :mod:`meshproxy.admin`.
"""

from __future__ import annotations

from meshproxy.config.base import Port, Settings


class AdminConfig(Settings, kw_only=True):
    """The admin port."""

    enabled: bool = True
    #: Loopback by default: the admin API exposes internals and must be opted into.
    address: str = "127.0.0.1"
    #: 9901 as Envoy's admin port is conventionally; 0 picks a free port (tests).
    port: Port = 9901
    #: Bearer token required by state-changing endpoints (``Authorization: Bearer ...``).
    #: None means those endpoints refuse every request (403): safe by default.
    token: str | None = None
    #: Read the token from this file instead (keeps secrets out of the config file).
    token_file: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set at most one of token and token_file")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token must be at least 16 characters")
