"""Circuit breaker: trip rules, reset timeout on a manual clock, bounded half-open trials,
transitions counted and explained, reload keeps state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.resilience.breaker import (
    Admission,
    Breaker,
    BreakerConfig,
    BreakerGroup,
    admission_kind,
)
from meshproxy.schema import SchemaError, parse

from .conftest import ManualClock


def make(clock, events, **cfg) -> Breaker:
    return Breaker("payments", BreakerConfig(**cfg), clock=clock, events=events)


def fail(b: Breaker, clock, n: int) -> None:
    for _ in range(n):
        b.record(b.allow(clock()), False, clock())


def test_breaker_opens_after_consecutive_failures_and_refuses(clock, events) -> None:
    """N failures in a row open it; a success in between resets the count."""
    b = make(clock, events, consecutive_failures=3)
    fail(b, clock, 2)
    b.record(b.allow(clock()), True, clock())
    fail(b, clock, 2)
    assert b.state == "closed"
    fail(b, clock, 1)
    assert b.state == "open"
    assert b.allow(clock()) == Admission.REFUSED
    assert b.statistics().rejected_total == 1
    ev = events.recent(kind="breaker.open")[-1]
    assert ev.subject == "payments"
    assert "3 consecutive failures" in ev.message


def test_breaker_stays_open_until_reset_timeout_on_the_injected_clock(clock, events) -> None:
    """The reset timeout is measured on our clock, not pybreaker's wall clock."""
    b = make(clock, events, consecutive_failures=1, reset_timeout=30)
    fail(b, clock, 1)
    clock.advance(29.9)
    assert not b.allow(clock())
    clock.advance(0.2)
    assert admission_kind(b.allow(clock())) == Admission.TRIAL
    assert b.state == "half_open"


def test_half_open_admits_a_bounded_number_of_trials(clock, events) -> None:
    b = make(clock, events, consecutive_failures=1, reset_timeout=1, half_open_trials=2,
             success_threshold=2)
    fail(b, clock, 1)
    clock.advance(1)
    t1, t2, t3 = b.allow(clock()), b.allow(clock()), b.allow(clock())
    assert [admission_kind(t) for t in (t1, t2, t3)] == [
        Admission.TRIAL, Admission.TRIAL, Admission.REFUSED]
    b.record(t1, True, clock())
    assert b.state == "half_open"          # one success of the two needed
    t4 = b.allow(clock())                   # the finished trial freed a slot
    assert admission_kind(t4) == Admission.TRIAL
    b.record(t2, True, clock())
    assert b.state == "closed"
    b.record(t4, False, clock())            # a late trial outcome after closing is ignored
    assert b.state == "closed"
    assert b.statistics().consecutive_failures == 0


def test_breaker_reopens_after_failed_probe(clock, events) -> None:
    b = make(clock, events, consecutive_failures=1, reset_timeout=5)
    fail(b, clock, 1)
    clock.advance(5)
    trial = b.allow(clock())
    b.record(trial, False, clock())
    assert b.state == "open"
    assert "trial request failed" in events.recent(kind="breaker.open")[-1].message
    clock.advance(4.9)                      # a fresh full timeout from the re-open
    assert not b.allow(clock())
    clock.advance(0.1)
    assert admission_kind(b.allow(clock())) == Admission.TRIAL


def test_failure_ratio_trips_only_past_minimum_calls(clock, events) -> None:
    """60% failures over fewer than minimum_calls is not judged; at the minimum it trips,
    and the event carries the ratio and the count."""
    b = make(clock, events, consecutive_failures=None, failure_ratio=0.5, minimum_calls=10,
             window=10)
    for i in range(9):
        b.record(b.allow(clock()), i % 5 >= 2, clock())   # ok,ok,fail,fail,fail,...
        clock.advance(0.1)
    assert b.state == "closed"
    b.record(b.allow(clock()), False, clock())
    assert b.state == "open"
    msg = events.recent(kind="breaker.open")[-1].message
    assert "over 10 calls" in msg
    assert "threshold 50%" in msg


def test_failure_ratio_forgets_calls_older_than_the_window(clock, events) -> None:
    b = make(clock, events, consecutive_failures=None, failure_ratio=0.5, minimum_calls=4,
             window=10)
    fail(b, clock, 3)                         # three failures, too few calls to judge
    clock.advance(11)                         # ... and now out of the window
    for ok in (True, True, True, False):
        b.record(b.allow(clock()), ok, clock())
    assert b.state == "closed"                # 1 failure in 4: 25%


def test_outcomes_of_requests_admitted_before_the_trip_are_ignored(clock, events) -> None:
    b = make(clock, events, consecutive_failures=2, reset_timeout=10)
    early = b.allow(clock())
    fail(b, clock, 2)
    assert b.state == "open"
    b.record(early, True, clock())            # must not close or count as a trial
    assert b.state == "open"


def test_transitions_are_counted_for_metrics(clock, events) -> None:
    b = make(clock, events, consecutive_failures=1, reset_timeout=1)
    fail(b, clock, 1)
    clock.advance(1)
    b.record(b.allow(clock()), True, clock())
    st = b.statistics()
    assert st.transitions == {("closed", "open"): 1, ("open", "half_open"): 1,
                              ("half_open", "closed"): 1}
    assert st.state_value == 0
    assert [e.kind for e in events] == ["breaker.open", "breaker.half_open", "breaker.closed"]


def test_trials_of_an_earlier_episode_are_stale(clock, events) -> None:
    """A slow trial that outlives its half-open episode neither frees a slot nor judges
    the next episode: at most ``half_open_trials`` are ever in flight per episode."""
    b = make(clock, events, consecutive_failures=1, reset_timeout=1, half_open_trials=1)
    fail(b, clock, 1)
    clock.advance(1)
    slow = b.allow(clock())                  # trial of episode 1, still in flight...
    clock.advance(1)
    b.force_open("test")                     # (e.g. another signal re-opened it)
    clock.advance(1)
    fresh = b.allow(clock())                 # episode 2's only trial slot
    assert admission_kind(fresh) == Admission.TRIAL
    b.record(slow, True, clock())            # ...finishes now: stale, ignored
    assert b.state == "half_open"
    assert not b.allow(clock())              # the slot is still fresh's
    b.record(fresh, True, clock())
    assert b.state == "closed"


def test_cancelled_trial_frees_its_slot(clock, events) -> None:
    b = make(clock, events, consecutive_failures=1, reset_timeout=1)
    fail(b, clock, 1)
    clock.advance(1)
    t = b.allow(clock())
    assert not b.allow(clock())
    b.cancel(t)
    assert admission_kind(b.allow(clock())) == Admission.TRIAL


def test_reconfigure_keeps_an_open_breaker_open(clock, events) -> None:
    b = make(clock, events, consecutive_failures=1, reset_timeout=10)
    fail(b, clock, 1)
    assert b.reconfigure(BreakerConfig(consecutive_failures=3, reset_timeout=20))
    clock.advance(15)
    assert b.state == "open"
    assert not b.allow(clock())
    clock.advance(5)
    assert b.allow(clock())


def test_forced_open_and_close(clock, events) -> None:
    b = make(clock, events)
    b.force_open("maintenance")
    assert not b.allow(clock())
    assert "maintenance" in events.recent(kind="breaker.open")[-1].message
    b.force_close()
    assert b.allow(clock()) == Admission.PASS


def test_config_requires_a_trip_rule_and_sane_numbers() -> None:
    with pytest.raises(ValueError, match="consecutive_failures or failure_ratio"):
        BreakerConfig(consecutive_failures=None)
    with pytest.raises(SchemaError, match="failure_ratio: Expected `float` <= 1"):
        parse({"failure_ratio": 1.5}, BreakerConfig)
    with pytest.raises(SchemaError, match="fail_max: unknown field"):
        parse({"fail_max": 3}, BreakerConfig)
    with pytest.raises(TypeError, match="Unexpected keyword argument 'fail_max'"):
        BreakerConfig(fail_max=3)  # type: ignore[call-arg]


def test_group_keeps_per_endpoint_state_and_drops_departed(clock, events) -> None:
    g = BreakerGroup("cart", BreakerConfig(consecutive_failures=1), clock=clock, events=events)
    a = g.get("10.0.0.1:80")
    a.record(a.allow(clock()), False, clock())
    assert g.get("10.0.0.1:80") is a
    assert a.state == "open"
    assert g.get("10.0.0.2:80").state == "closed"
    g.retain(["10.0.0.2:80"])
    assert len(g) == 1
    assert g.get("10.0.0.1:80").state == "closed"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["allow", "ok", "fail", "wait"]),
                          st.floats(0, 3)), max_size=80))
def test_invariants_hold_for_any_sequence(steps) -> None:
    """Whatever happens: a closed breaker never refuses, trials in flight never exceed
    half_open_trials, and only an open breaker within its reset timeout or a full
    half-open refuses."""
    clock = ManualClock()
    b = Breaker("p", BreakerConfig(consecutive_failures=2, failure_ratio=0.5,
                                   minimum_calls=4, reset_timeout=2, half_open_trials=2,
                                   success_threshold=2), clock=clock)
    held: list[Admission] = []
    for op, dt in steps:
        if op == "wait":
            clock.advance(dt)
        elif op == "allow":
            before = b.state
            a = b.allow(clock())
            if before == "closed":
                assert a == Admission.PASS
            if a:
                held.append(a)
            kind = admission_kind(a)
            assert (kind == Admission.TRIAL) == (b.state == "half_open" and bool(a))
        elif held:
            b.record(held.pop(0), op == "ok", clock())
        current = Admission.TRIAL + b._episode
        in_flight = sum(1 for a in held if a == current) if b.state == "half_open" else 0
        assert b.statistics().trials_in_flight == in_flight
        assert in_flight <= 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["allow", "ok", "fail", "wait", "force_open",
                                           "force_close"]), st.floats(0, 3)), max_size=60),
       st.booleans())
def test_quiet_means_a_success_would_change_nothing(steps, with_ratio) -> None:
    """``quiet`` (read by the fused fast path to skip ``record`` for a successful PASS)
    is True exactly while the breaker is closed with no failure counted and no ratio
    window to feed, whatever happened before."""
    clock = ManualClock()
    b = Breaker("p", BreakerConfig(consecutive_failures=2,
                                   failure_ratio=0.5 if with_ratio else None,
                                   reset_timeout=2), clock=clock)
    held: list[int] = []
    for op, dt in steps:
        if op == "wait":
            clock.advance(dt)
        elif op == "allow":
            a = b.allow(clock())
            if a:
                held.append(a)
        elif op == "force_open":
            b.force_open()
        elif op == "force_close":
            b.force_close()
        elif held:
            b.record(held.pop(0), op == "ok", clock())
        expected = (not with_ratio and b.state == "closed"
                    and b.statistics().consecutive_failures == 0)
        assert b.quiet == expected, (op, b)
