"""The config objects' base and parse step (:mod:`meshproxy.schema`).

Pins: parse reports every bad part (not only msgspec's first error) with its path,
reason and value; a ``__post_init__`` check names its field; a ``_prepare`` hook runs
before validation; which fields the input set is remembered (the policy merge needs it)
and survives :func:`replace`; objects are immutable, compared and hashed by value;
``to_builtins`` is JSON-ready with union tags included.
"""

from __future__ import annotations

import pytest

from meshproxy.config import ClusterConfig, ProxyConfig
from meshproxy.config.policy import ClusterPolicy, ServicePolicy
from meshproxy.resilience.breaker import BreakerConfig
from meshproxy.resilience.degrade import StaticResponse, SwitchConfig
from meshproxy.retry import RetryConfig
from meshproxy.schema import (
    Problem,
    SchemaError,
    fields_set,
    format_path,
    parse,
    replace,
    to_builtins,
)


def problems(data: object, tp: type) -> list[Problem]:
    with pytest.raises(SchemaError) as ei:
        parse(data, tp)
    return ei.value.problems


def test_every_bad_part_is_reported_with_path_reason_and_value() -> None:
    found = problems({"cluster": {"breaker": {"reset_timeout": -1}},
                      "route": {"retry": {"attempts": 0, "retry_on": ["reset", "oops"]}}},
                     ServicePolicy)
    assert [(format_path(p.path), p.value) for p in found] == [
        ("cluster.breaker.reset_timeout", -1),
        ("route.retry.attempts", 0),
        ("route.retry.retry_on[1]", "oops"),
    ]
    assert found[0].message == "Expected `float` > 0.0"
    assert "expected one of 'connect-failure'" in found[2].message


def test_a_missing_field_is_reported_beside_a_bad_one() -> None:
    found = problems({"listeners": [{"protocol": "tcp", "port": -1, "cluster": "a"}]},
                     ProxyConfig)
    assert {format_path(p.path): p.message for p in found} == {
        "listeners[0].port": "Expected `int` >= 0",
        "listeners[0].name": "required field is missing",
    }


def test_a_union_tag_is_a_key_of_its_object_not_a_level_of_the_path() -> None:
    [p] = problems({"listeners": [{"protocol": "udp", "name": "a", "port": 1}]}, ProxyConfig)
    assert (format_path(p.path), p.value) == ("listeners[0].protocol", "udp")
    assert "expected one of 'http', 'tcp'" in p.message
    [p] = problems({"name": "s", "level": "service", "target": "c",
                    "action": {"kind": "static", "status": 99}}, SwitchConfig)
    assert format_path(p.path) == "action.status"


def test_a_post_init_check_names_its_field_and_a_cross_field_one_the_object() -> None:
    [p] = problems({"retriable_status_codes": [200]}, RetryConfig)
    assert format_path(p.path) == "retriable_status_codes"
    assert p.message == "retriable status codes must be 400-599, got [200]"
    [p] = problems({"breaker": {"consecutive_failures": None}}, ClusterPolicy)
    assert format_path(p.path) == "breaker"
    assert "consecutive_failures or failure_ratio" in p.message


def test_prepare_hooks_run_first_and_their_errors_have_a_path() -> None:
    c = parse({"name": "c", "endpoints": ["127.0.0.1:80"], "lb_policy": "random"},
              ClusterConfig)
    assert c.load_balancer.policy == "random"
    assert c.endpoints[0].address == "127.0.0.1:80"
    [p] = problems({"clusters": [{"name": "c", "lb_policy": "random",
                                  "load_balancer": {"policy": "random"}}]}, ProxyConfig)
    assert (format_path(p.path), p.message) == (
        "clusters[0]", "set either lb_policy or load_balancer, not both")


def test_fields_set_are_the_input_keys_even_at_default_values() -> None:
    c = parse({"name": "c", "connect_timeout": 1.0}, ClusterConfig)  # 1.0 is the default
    assert fields_set(c) == {"name", "connect_timeout"}
    built = ClusterConfig(name="c", stream_idle_timeout=5.0)
    assert fields_set(built) == {"name", "stream_idle_timeout"}  # built in code: non-defaults
    moved = replace(c, endpoints=())
    assert fields_set(moved) == {"name", "connect_timeout", "endpoints"}
    assert moved == c  # equal by value: the endpoints were () already


def test_objects_are_immutable_and_compared_and_hashed_by_value() -> None:
    a = parse({"consecutive_failures": 3}, BreakerConfig)
    b = BreakerConfig(consecutive_failures=3)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.consecutive_failures = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="at most one"):
        replace(parse({}, ProxyConfig).admin, token="x" * 16, token_file="/t")


def test_to_builtins_is_json_ready_with_union_tags() -> None:
    sw = parse({"name": "s", "level": "service", "target": "c",
                "action": {"kind": "static", "body": "[]"}}, SwitchConfig)
    assert isinstance(sw.action, StaticResponse)
    data = to_builtins(sw)
    assert data["action"] == {"kind": "static", "status": 200, "headers": {}, "body": "[]"}
    retry = to_builtins(RetryConfig())
    assert sorted(retry["retry_on"]) == ["502", "503", "504", "connect-failure", "reset"]
    cfg = to_builtins(parse({"listeners": [{"protocol": "tcp", "name": "t", "port": 1,
                                            "cluster": "c"}]}, ProxyConfig))
    assert isinstance(cfg["listeners"], list)
    assert cfg["listeners"][0]["protocol"] == "tcp"
