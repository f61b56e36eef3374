"""The config schema: the example file loads, bad files are refused with field paths.

Pins: ``config/meshproxy.example.yaml`` validates and shows every option; errors name
the field path and reason; cross-model references (route -> cluster) are checked;
models are frozen; shorthand endpoint strings are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from meshproxy import config as cfgmod
from meshproxy.balance.config import HashOn, LoadBalancerConfig
from meshproxy.config import ConfigError, load_config, parse_config
from meshproxy.deadline import DeadlineConfig
from meshproxy.health import HealthCheckConfig
from meshproxy.hedge import HedgeConfig
from meshproxy.resilience.adaptive import AdaptiveConfig
from meshproxy.resilience.breaker import BreakerConfig
from meshproxy.resilience.concurrency import ConcurrencyConfig
from meshproxy.resilience.degrade import (
    AutoTrip,
    ClusterFallback,
    FailFast,
    StaticResponse,
    SwitchConfig,
)
from meshproxy.resilience.outlier import OutlierConfig
from meshproxy.resilience.ratelimit import RateLimitConfig
from meshproxy.resilience.runtime import ProxyResilienceConfig
from meshproxy.resilience.shedding import SheddingConfig
from meshproxy.retry import BackoffConfig, RetryBudgetConfig, RetryConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "meshproxy.example.yaml"

MINIMAL = """
listeners:
  - {protocol: http, name: web, port: 8080, routes: [{name: all, cluster: api}]}
clusters:
  - {name: api, endpoints: ["127.0.0.1:8081"]}
"""


def _structs(tp: Any) -> list[type[msgspec.Struct]]:
    """The Struct types inside an annotation (through Annotated, unions, tuples)."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [tp]
    return [s for arg in get_args(tp) for s in _structs(arg)]


def _fields(model: type[msgspec.Struct]) -> set[str]:
    out: set[str] = set()
    for f in msgspec.structs.fields(model):
        out.add(f.name)
        for sub in _structs(f.type):
            out |= _fields(sub)
    return out


#: The policy sections' models (embedded in clusters, routes and ``resilience``).
POLICY_MODELS = [LoadBalancerConfig, HashOn, HealthCheckConfig, BreakerConfig, OutlierConfig,
                 ConcurrencyConfig, RetryConfig, BackoffConfig, RetryBudgetConfig,
                 HedgeConfig, DeadlineConfig, RateLimitConfig, ProxyResilienceConfig,
                 SheddingConfig, AdaptiveConfig, SwitchConfig, AutoTrip, FailFast,
                 StaticResponse, ClusterFallback]


def test_example_config_loads_and_mentions_every_option() -> None:
    """The shipped example validates, and every schema field name appears in it."""
    loaded = load_config(EXAMPLE)
    assert {lst.name for lst in loaded.config.listeners} == {"web", "db"}
    text = EXAMPLE.read_text()
    models = [cfgmod.ProxyConfig, cfgmod.HttpListenerConfig, cfgmod.TcpListenerConfig,
              cfgmod.RouteConfig, cfgmod.RouteMatch, cfgmod.HeaderMatch, cfgmod.HttpLimits,
              cfgmod.ClusterConfig, cfgmod.EndpointConfig, cfgmod.PoolConfig,
              cfgmod.AdminConfig, cfgmod.ReloadConfig, cfgmod.DrainConfig,
              cfgmod.ProcessConfig, *POLICY_MODELS]
    missing = sorted({f for m in models for f in _fields(m) if f"{f}:" not in text})
    assert missing == []


def test_unknown_cluster_reference_names_the_route_field() -> None:
    """A route pointing at a missing cluster is refused with its exact path."""
    bad = MINIMAL.replace("cluster: api}", "cluster: nope}")
    with pytest.raises(ConfigError) as ei:
        parse_config(bad)
    assert ei.value.problems == [("listeners[0].routes[0].cluster", "no cluster named 'nope'")]


def test_field_errors_name_path_and_limit() -> None:
    """Out-of-range values, bad addresses and typos each produce one path + reason."""
    bad = """
listeners:
  - {protocol: http, name: web, port: 8080,
     routes: [{name: all, cluster: api, timeout: -1}], limits: {max_header_bytes: 0}}
clusters:
  - {name: api, endpoints: ["127.0.0.1:99999"], conect_timeout: 1}
"""
    with pytest.raises(ConfigError) as ei:
        parse_config(bad)
    paths = dict(ei.value.problems)
    assert paths["listeners[0].routes[0].timeout"] == "Expected `float` > 0.0"
    assert paths["listeners[0].limits.max_header_bytes"] == "Expected `int` >= 1"
    assert "port must be a number" in paths["clusters[0].endpoints[0].address"]
    assert "unknown field" in paths["clusters[0].conect_timeout"]
    assert len(paths) == 4  # every problem at once, not only the first
    assert "listeners[0].routes" not in paths  # no "too short" noise for a failed item


def test_duplicate_names_and_ports_are_refused() -> None:
    """Two listeners on one address:port, or two clusters with one name, are errors."""
    bad = MINIMAL + """
  - {name: api, endpoints: []}
""".replace("listeners:", "")
    bad = bad.replace(
        "routes: [{name: all, cluster: api}]}",
        "routes: [{name: all, cluster: api}]}\n"
        "  - {protocol: tcp, name: raw, port: 8080, cluster: api}",
    )
    with pytest.raises(ConfigError) as ei:
        parse_config(bad)
    paths = dict(ei.value.problems)
    assert "already used" in paths["listeners[1].port"]
    assert "already defined" in paths["clusters[1].name"]


def test_invalid_yaml_and_non_mapping_are_refused() -> None:
    """Syntax errors report the line; a list at the top is not a config."""
    with pytest.raises(ConfigError, match="line 1"):
        parse_config("listeners: [")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config("- a\n- b\n")


def test_invalid_regex_is_refused() -> None:
    """A route regex that does not compile is a config error, not a runtime crash."""
    bad = MINIMAL.replace("{name: all,", "{name: all, match: {regex: '(['},")
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.routes\[0\]\.match\.regex"):
        parse_config(bad)


def test_config_is_frozen_and_versioned() -> None:
    """Loaded configs cannot be mutated, and the version follows the content."""
    a = parse_config(MINIMAL)
    b = parse_config(MINIMAL + "\n# comment\n")
    assert a.version != b.version
    assert a.version == parse_config(MINIMAL).version
    with pytest.raises(AttributeError, match="immutable"):
        a.config.clusters[0].connect_timeout = 5  # type: ignore[misc]
    assert a.config.clusters[0].endpoints[0].port == 8081


def test_admin_token_rules() -> None:
    """A short token, or both token and token_file, is refused."""
    with pytest.raises(ConfigError, match="at least 16"):
        parse_config(MINIMAL + "admin: {token: short}\n")
    with pytest.raises(ConfigError, match="at most one"):
        parse_config(MINIMAL + "admin: {token: aaaaaaaaaaaaaaaaaaaa, token_file: /x}\n")
