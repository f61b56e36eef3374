"""Deadline propagation: strict header parsing, formatting, budget arithmetic, fail fast."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.deadline import (
    Deadline,
    DeadlineConfig,
    DeadlineHeaderError,
    format_timeout_ms,
    parse_timeout_ms,
)
from meshproxy.schema import SchemaError, parse


@pytest.mark.parametrize(("values", "seconds"), [
    ([b"1500"], 1.5), ([b" 250\t"], 0.25), ([b"0"], 0.0), (["99999999"], 99_999.999),
    ([b"0042"], 0.042), ([b"30", b"30"], 0.03), ([], None),
])
def test_valid_values_parse_to_seconds(values: list, seconds: float | None) -> None:
    assert parse_timeout_ms(values) == seconds


@pytest.mark.parametrize(("values", "message"), [
    ([b"-5"], "not a whole number"),
    ([b"+5"], "not a whole number"),
    ([b"1.5"], "not a whole number"),
    ([b"1 000"], "not a whole number"),
    ([b"5ms"], "not a whole number"),
    ([b"0x10"], "not a whole number"),
    (["\uff11\uff12"], "not a whole number"),  # fullwidth digits pass str.isdigit
    ([b""], "empty"),
    ([b"   "], "empty"),
    ([b"123456789"], "more than 8 digits"),
    ([b"100", b"200"], "conflicting values [100, 200]"),
])
def test_malformed_values_are_refused_with_the_reason(values: list, message: str) -> None:
    """Strict: anything but 1-8 ASCII digits (with optional surrounding whitespace) or
    repeated headers that disagree is an error naming the header, never a guess."""
    with pytest.raises(DeadlineHeaderError, match="x-mesh-timeout-ms") as info:
        parse_timeout_ms(values)
    assert message in str(info.value)


def test_format_rounds_down_and_clamps() -> None:
    assert format_timeout_ms(1.2349) == b"1234"
    assert format_timeout_ms(0.29) == b"290"  # not 289: float noise is not time lost
    assert format_timeout_ms(0.0004) == b"0"
    assert format_timeout_ms(-3.0) == b"0"
    assert format_timeout_ms(10**9) == b"99999999"


@settings(deadline=None)  # no per-example time limit: the machine is shared
@given(st.integers(0, 10**8 - 1))
def test_format_and_parse_round_trip_every_millisecond_value(ms: int) -> None:
    assert format_timeout_ms(parse_timeout_ms([str(ms).encode()])) == str(ms).encode()


@settings(deadline=None)  # no per-example time limit: the machine is shared
@given(st.floats(0.0, 99_999.0, allow_nan=False))
def test_a_hop_is_never_told_more_than_is_left(remaining: float) -> None:
    """Property: the budget sent upstream never exceeds the budget left (within 1 ns of
    float noise) and is never more than a millisecond short of it."""
    sent = parse_timeout_ms([format_timeout_ms(remaining)])
    assert sent <= remaining + 1e-6
    assert remaining - sent < 0.001 + 1e-6


def test_deadline_is_the_earlier_of_route_timeout_and_callers_budget() -> None:
    assert Deadline.start(100.0, route_timeout_s=5.0, incoming_s=0.3).expires_at == 100.3
    assert Deadline.start(100.0, route_timeout_s=0.2, incoming_s=9.0).expires_at == 100.2
    assert Deadline.start(100.0, route_timeout_s=None, incoming_s=2.0).expires_at == 102.0
    assert Deadline.start(100.0, route_timeout_s=None, incoming_s=None) is None
    with pytest.raises(ValueError, match="negative"):
        Deadline.start(100.0, route_timeout_s=-1.0, incoming_s=None)


def test_remaining_header_and_fail_fast_follow_the_clock() -> None:
    d = Deadline.start(10.0, route_timeout_s=1.0, incoming_s=None)
    assert d.header_value(10.25) == b"750"
    assert not d.expired(10.998)
    assert d.expired(10.9995)  # under 1 ms left: an attempt cannot succeed in time
    assert d.expired(11.5)
    assert d.remaining(11.5) == pytest.approx(-0.5)
    assert not d.expired(10.9995, fail_fast_below_s=0.0)


def test_a_slow_chain_gives_up_once_within_the_first_budget() -> None:
    """Four hops, each with a 10 s route timeout, each spending 0.4 s before calling
    the next; the edge caller allows 1 s. With propagation the third hop still gets
    0.2 s, the fourth fails fast: the chain is done by t=1.2 s instead of each hop
    waiting out its 10 s."""
    now = 0.0
    header: bytes | None = b"1000"
    failed_fast_at = None
    for hop in range(4):
        incoming = parse_timeout_ms([header]) if header is not None else None
        d = Deadline.start(now, route_timeout_s=10.0, incoming_s=incoming)
        if d.expired(now):
            failed_fast_at = (hop, now)
            break
        now += 0.4  # the hop's own work before calling upstream
        header = d.header_value(now)
    assert failed_fast_at == (3, pytest.approx(1.2))


def test_config_defaults_and_validation() -> None:
    cfg = DeadlineConfig()
    assert (cfg.accept, cfg.propagate, cfg.header) == (True, True, "x-mesh-timeout-ms")
    with pytest.raises(SchemaError, match="header: Expected `str` matching regex"):
        parse({"header": "X Bad"}, DeadlineConfig)
    with pytest.raises(SchemaError, match="fail_fast_below_s: Expected `float` >= 0"):
        parse({"fail_fast_below_s": -1}, DeadlineConfig)
