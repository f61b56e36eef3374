"""Degradation switches: manual modes, automatic trip on error and slow-call ratios,
cooldown and probing on a manual clock, shadow mode, actions, the registry (levels,
admin flips, reload keeping state)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.resilience.degrade import (
    AutoTrip,
    ClusterFallback,
    StaticResponse,
    Switch,
    SwitchConfig,
    SwitchRegistry,
    Verdict,
)
from meshproxy.schema import SchemaError, parse, replace, to_builtins

from .conftest import ManualClock


def auto_switch(clock, events, *, enforced=True, **auto) -> Switch:
    a = AutoTrip(**{"minimum_requests": 10, "cooldown": 30, "probe_ratio": 0.5,
                    "probe_requests": 4, **auto})
    return Switch(SwitchConfig(name="recs", level="function", target="recommendations",
                               auto=a, enforced=enforced), clock=clock, events=events)


def drive(sw: Switch, clock, outcomes, latency=0.01) -> list[Verdict]:
    out = []
    for ok in outcomes:
        v = sw.check(clock())
        out.append(v)
        sw.observe(v, ok, latency, clock())
    return out


def test_manual_on_degrades_and_off_passes(clock, events) -> None:
    sw = Switch(SwitchConfig(name="pay", level="service", target="payment", mode="on"),
                clock=clock, events=events)
    assert sw.check(clock()) == Verdict.DEGRADE
    sw.set_mode("off")
    assert sw.check(clock()) == Verdict.PASS
    assert sw.status().mode_source == "admin"
    assert sw.status().degraded_total == 1


def test_disabled_switch_never_degrades(clock, events) -> None:
    sw = Switch(SwitchConfig(name="pay", level="service", target="payment", mode="on",
                             enabled=False), clock=clock, events=events)
    assert sw.check(clock()) == Verdict.PASS
    assert not sw.degrading


def test_error_ratio_trips_after_minimum_requests(clock, events) -> None:
    sw = auto_switch(clock, events, threshold=0.5)
    drive(sw, clock, [True, False] * 4 + [False])     # 9 calls: below the minimum
    assert sw.state == "normal"
    drive(sw, clock, [False])
    assert sw.state == "tripped"
    assert sw.check(clock()) == Verdict.DEGRADE
    ev = events.recent(kind="switch.tripped")[-1]
    assert "error ratio 60% over 10 requests" in ev.message
    assert ev.numbers["requests"] == 10


def test_slow_call_ratio_trips(clock, events) -> None:
    sw = auto_switch(clock, events, metric="slow_ratio", threshold=0.8, slow_call_ms=200)
    drive(sw, clock, [True] * 10, latency=0.25)        # all succeed, all slow
    assert sw.state == "tripped"


def test_probing_after_cooldown_recovers_on_good_probes(clock, events) -> None:
    sw = auto_switch(clock, events)
    drive(sw, clock, [False] * 10)
    clock.advance(29.9)
    assert sw.check(clock()) == Verdict.DEGRADE
    clock.advance(0.1)
    verdicts = drive(sw, clock, [True] * 8)            # probe_ratio 0.5: every other one
    assert verdicts == [Verdict.DEGRADE, Verdict.PROBE] * 4
    assert sw.state == "normal"
    assert [e.kind for e in events] == ["switch.tripped", "switch.probing", "switch.normal"]


def test_failed_probes_trip_again_for_a_fresh_cooldown(clock, events) -> None:
    sw = auto_switch(clock, events)
    drive(sw, clock, [False] * 10)
    clock.advance(30)
    drive(sw, clock, [False] * 8)
    assert sw.state == "tripped"
    assert "probes still failing: 100% bad over 4 probes" in events.recent()[-1].message
    clock.advance(29)
    assert sw.check(clock()) == Verdict.DEGRADE


def test_shadow_mode_counts_but_never_degrades(clock, events) -> None:
    sw = auto_switch(clock, events, enforced=False)
    verdicts = drive(sw, clock, [False] * 15)
    assert Verdict.DEGRADE not in verdicts
    assert sw.state == "tripped"
    assert sw.status().shadow_degraded_total == 5      # the five after the trip
    assert sw.status().degraded_total == 0
    assert "shadow mode" in events.recent(kind="switch.tripped")[-1].message
    clock.advance(30)
    assert drive(sw, clock, [True] * 4) == [Verdict.PROBE] * 4
    assert sw.state == "normal"


def test_manual_mode_overrides_the_automatic_state(clock, events) -> None:
    sw = auto_switch(clock, events)
    drive(sw, clock, [False] * 10)
    sw.set_mode("off")
    assert sw.check(clock()) == Verdict.PASS
    sw.set_mode("auto")
    assert sw.check(clock()) == Verdict.DEGRADE


def test_actions_are_validated_and_reported() -> None:
    c = parse({"name": "recs", "level": "function", "target": "recommendations",
               "action": {"kind": "static", "status": 200,
                          "headers": {"content-type": "application/json"},
                          "body": "[]"}}, SwitchConfig)
    assert isinstance(c.action, StaticResponse)
    assert c.action.body == "[]"
    # What /resilience reports for the action (Switch.status): the tag included.
    assert to_builtins(c.action) == {"kind": "static", "status": 200,
                                     "headers": {"content-type": "application/json"},
                                     "body": "[]"}
    c2 = parse({"name": "cat", "level": "service", "target": "catalog",
                "action": {"kind": "cluster", "cluster": "catalog-cache"}}, SwitchConfig)
    assert isinstance(c2.action, ClusterFallback)
    with pytest.raises(SchemaError, match=r"action\.status: Expected `int` >= 400"):
        parse({"name": "x", "level": "service", "target": "a",
               "action": {"kind": "fail_fast", "status": 200}}, SwitchConfig)
    with pytest.raises(SchemaError, match=r"action\.kind: Invalid value 'flaky'"):
        parse({"name": "x", "level": "service", "target": "a",
               "action": {"kind": "flaky"}}, SwitchConfig)
    with pytest.raises(ValueError, match="switch names"):
        SwitchConfig(name="Bad Name", level="service", target="a")
    with pytest.raises(SchemaError, match="name: switch names"):
        parse({"name": "Bad Name", "level": "service", "target": "a"}, SwitchConfig)
    with pytest.raises(SchemaError, match="level: Invalid enum value 'cluster'"):
        parse({"name": "x", "level": "cluster", "target": "a"}, SwitchConfig)


def test_registry_resolves_levels_most_specific_first(clock, events) -> None:
    reg = SwitchRegistry([
        SwitchConfig(name="svc", level="service", target="catalog"),
        SwitchConfig(name="fn", level="function", target="browse"),
        SwitchConfig(name="route", level="interface", target="get-item"),
        SwitchConfig(name="other", level="service", target="cart"),
    ], clock=clock, events=events)
    names = [s.name for s in reg.applicable(route="get-item", function="browse",
                                            cluster="catalog")]
    assert names == ["route", "fn", "svc"]
    assert [s.name for s in reg.applicable(route="x", function=None, cluster="cart")] == [
        "other"]


def test_registry_flip_lists_and_errors_clearly(clock, events) -> None:
    reg = SwitchRegistry([SwitchConfig(name="svc", level="service", target="catalog")],
                         clock=clock, events=events)
    st = reg.flip("svc", "on")
    assert st.degrading
    assert [s.name for s in reg.list()] == ["svc"]
    with pytest.raises(KeyError, match="no degradation switch named 'nope'"):
        reg.flip("nope", "on")
    with pytest.raises(ValueError, match="mode must be"):
        reg.flip("svc", "maybe")  # type: ignore[arg-type]
    assert reg.get("svc").mode == "on"


def test_reload_keeps_unchanged_switches_and_their_admin_mode(clock, events) -> None:
    keep = SwitchConfig(name="keep", level="service", target="a")
    change = SwitchConfig(name="change", level="service", target="b")
    reg = SwitchRegistry([keep, change], clock=clock, events=events)
    reg.flip("keep", "on")
    reg.flip("change", "on")
    before = reg.get("keep")
    reg.reload([keep, replace(change, target="c"),
                SwitchConfig(name="new", level="service", target="d")])
    assert reg.get("keep") is before
    assert reg.get("keep").mode == "on"
    assert reg.get("change").mode == "auto"            # config changed: config wins
    with pytest.raises(ValueError, match="duplicate"):
        reg.reload([keep, keep])
    assert len(reg) == 3                               # the refused reload changed nothing


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["ok", "bad", "wait", "auto", "on", "off"]), max_size=80),
       st.booleans())
def test_passive_switch_would_pass_without_side_effects(ops, enforced) -> None:
    """``passive`` (read by the fused fast path to skip ``check``) holds only while
    ``check`` would say PASS and count nothing, through trips, cooldowns, probes and
    admin flips."""
    clock = ManualClock()
    sw = auto_switch(clock, None, enforced=enforced, cooldown=5)
    for op in ops:
        if op == "wait":
            clock.advance(3)
        elif op in ("auto", "on", "off"):
            sw.set_mode(op)
        elif sw.passive:
            before = (sw.state, sw.degraded_total, sw.shadow_degraded_total)
            assert sw.check(clock()) == Verdict.PASS
            assert (sw.state, sw.degraded_total, sw.shadow_degraded_total) == before
            sw.observe(Verdict.PASS, op == "ok", 0.01, clock())
        else:
            drive(sw, clock, [op == "ok"])
        assert not (sw.passive and (sw.mode == "on"
                                    or (sw.mode == "auto" and sw.state != "normal")))
