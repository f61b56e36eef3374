"""The proxy's config schema: frozen msgspec Structs (:mod:`meshproxy.schema`), one
module per concern.

- ``base``: the frozen ``Settings`` base and value types (names, seconds, bytes)
- ``listeners``: HTTP/TCP listeners, routes and their matches, HTTP limits
- ``clusters``: clusters, endpoints, upstream pools
- ``admin``: the admin port
- ``runtime``: reload, drain, worker processes
- ``root``: ``ProxyConfig`` assembling them, and cross-model checks
- ``load``: YAML → ``Loaded`` (config + version + load time), ``ConfigError``

A new concern adds its own module here and one field on the model it configures.
"""

from meshproxy.config.admin import AdminConfig
from meshproxy.config.clusters import ClusterConfig, EndpointConfig, PoolConfig
from meshproxy.config.listeners import (
    HeaderMatch,
    HttpLimits,
    HttpListenerConfig,
    RouteConfig,
    RouteMatch,
    TcpListenerConfig,
)
from meshproxy.config.load import ConfigError, Loaded, load_config, parse_config
from meshproxy.config.root import ProxyConfig
from meshproxy.config.runtime import DrainConfig, ProcessConfig, ReloadConfig

__all__ = [
    "AdminConfig",
    "ClusterConfig",
    "ConfigError",
    "DrainConfig",
    "EndpointConfig",
    "HeaderMatch",
    "HttpLimits",
    "HttpListenerConfig",
    "Loaded",
    "PoolConfig",
    "ProcessConfig",
    "ProxyConfig",
    "ReloadConfig",
    "RouteConfig",
    "RouteMatch",
    "TcpListenerConfig",
    "load_config",
    "parse_config",
]
