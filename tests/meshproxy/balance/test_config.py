"""The cluster's load-balancing settings and the factory that builds balancers."""

from __future__ import annotations

import pytest

from meshproxy.balance import (
    LeastRequest,
    LoadBalancerConfig,
    Maglev,
    PeakEwma,
    Random,
    RingHash,
    RoundRobin,
    WeightedRandom,
    make_balancer,
)
from meshproxy.endpoint import Endpoint
from meshproxy.schema import SchemaError, format_path, parse


def test_defaults_are_round_robin_with_envoys_panic_threshold() -> None:
    cfg = LoadBalancerConfig()
    assert cfg.policy == "round_robin"
    assert cfg.panic_threshold == 0.5
    assert cfg.maglev.table_size == 65537


@pytest.mark.parametrize(("policy", "cls"), [
    ("round_robin", RoundRobin), ("random", Random), ("weighted_random", WeightedRandom),
    ("least_request", LeastRequest), ("peak_ewma", PeakEwma),
])
def test_factory_builds_each_policy_by_name(policy: str, cls: type) -> None:
    lb = make_balancer(policy, [Endpoint("a", 1)])
    assert isinstance(lb, cls)


@pytest.mark.parametrize(("policy", "cls"), [("ring_hash", RingHash), ("maglev", Maglev)])
def test_factory_builds_hash_policies_from_full_config(policy: str, cls: type) -> None:
    cfg = parse({
        "policy": policy, "hash_on": {"source": "cookie", "name": "session"},
        "panic_threshold_percent": 0, "maglev": {"table_size": 1009}}, LoadBalancerConfig)
    lb = make_balancer(cfg, [Endpoint("a", 1)])
    assert isinstance(lb, cls)


def test_settings_reach_the_balancer() -> None:
    """The factory passes the settings through (panic threshold 100%: any down is panic)."""
    a, b = Endpoint("a", 1), Endpoint("b", 1)
    b.healthy = False
    lb = make_balancer(LoadBalancerConfig(panic_threshold_percent=100), [a, b])
    lb.pick(__import__("meshproxy.balance", fromlist=["PickContext"]).PickContext(now=0.0))
    assert lb.panic_total == 1


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"policy": "fastest"}, "policy", "round_robin"),
    ({"policy": "maglev"}, "", "needs 'hash_on'"),
    ({"policy": "random", "hash_on": {"source": "client_address"}}, "", "only applies"),
    ({"policy": "ring_hash", "hash_on": {"source": "header"}}, "hash_on", "needs the header"),
    ({"policy": "ring_hash", "hash_on": {"source": "header", "name": "bad name"}},
     "hash_on", "valid HTTP token"),
    ({"policy": "ring_hash", "hash_on": {"source": "client_address", "name": "x"}},
     "hash_on", "not used"),
    ({"panic_threshold_percent": 120}, "panic_threshold_percent", "<= 100"),
    ({"maglev": {"table_size": 65536}}, "maglev.table_size", "prime"),
    ({"least_request": {"choice_count": 1}}, "least_request.choice_count", ">= 2"),
    ({"peak_ewma": {"decay_s": 0}}, "peak_ewma.decay_s", "> 0"),
    ({"ring_hash": {"virtual_nodes": 0}}, "ring_hash.virtual_nodes", ">= 1"),
    ({"policy": "round_robin", "colour": "red"}, "colour", "unknown field"),
])
def test_bad_settings_name_the_field_and_the_rule(data: dict, field: str, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse(data, LoadBalancerConfig)
    [problem] = info.value.problems
    assert format_path(problem.path).startswith(field or "(root)")
    assert message in problem.message


def test_config_is_frozen() -> None:
    cfg = LoadBalancerConfig()
    with pytest.raises(AttributeError, match="immutable"):
        cfg.policy = "random"  # type: ignore[misc]
