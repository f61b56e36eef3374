"""Retry decisions, backoff with full jitter, the replay buffer and retry config."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.retry import (
    CONNECT_FAILURE,
    PER_TRY_TIMEOUT,
    RESET,
    Backoff,
    Outcome,
    ReplayBuffer,
    RetryConfig,
    RetryPolicy,
)
from meshproxy.schema import SchemaError, format_path, parse

DEFAULT = RetryPolicy(RetryConfig(attempts=3))


@pytest.mark.parametrize(("outcome", "method", "verdict"), [
    (Outcome.response(200), "GET", "answered"),
    (Outcome.response(404), "GET", "answered"),
    (Outcome.response(500), "GET", "not-retriable"),  # not in the default conditions
    (Outcome.response(502), "GET", "retry"),
    (Outcome.response(503), "PUT", "retry"),
    (Outcome.response(504), "DELETE", "retry"),
    (Outcome.response(503), "POST", "non-idempotent"),
    (RESET, "GET", "retry"),
    (RESET, "PATCH", "non-idempotent"),
    (CONNECT_FAILURE, "POST", "retry"),  # nothing reached the upstream: always safe
    (PER_TRY_TIMEOUT, "GET", "not-retriable"),  # opt-in only
])
def test_default_conditions_and_idempotency(outcome: Outcome, method: str, verdict: str) -> None:
    """The default retries connect failures, resets and 502/503/504; a non-idempotent
    method only retries when the request provably never reached the upstream."""
    assert DEFAULT.should_retry(outcome, 1, method) == verdict


def test_attempts_count_includes_the_first_try() -> None:
    """attempts=3 means two retries: the third failure is final."""
    assert DEFAULT.should_retry(RESET, 2, "GET") == "retry"
    assert DEFAULT.should_retry(RESET, 3, "GET") == "attempts-exhausted"
    once = RetryPolicy(RetryConfig(attempts=1))
    assert once.should_retry(CONNECT_FAILURE, 1, "GET") == "attempts-exhausted"


def test_configured_status_codes_and_per_try_timeout_retry() -> None:
    """Extra codes (429 here) and per-try timeouts retry only when configured; a
    condition left out of retry_on no longer retries."""
    p = RetryPolicy(RetryConfig(attempts=2, retry_on={"per-try-timeout", "503"},
                                retriable_status_codes={429}))
    assert p.should_retry(Outcome.response(429), 1, "GET") == "retry"
    assert p.should_retry(PER_TRY_TIMEOUT, 1, "GET") == "retry"
    assert p.should_retry(Outcome.response(502), 1, "GET") == "not-retriable"
    assert p.should_retry(CONNECT_FAILURE, 1, "GET") == "not-retriable"


def test_route_may_allow_retrying_non_idempotent_methods() -> None:
    p = RetryPolicy(RetryConfig(retry_non_idempotent=True))
    assert p.should_retry(Outcome.response(503), 1, "post") == "retry"


def test_method_may_be_the_parsers_bytes() -> None:
    """The engine holds methods as bytes from httptools; both spellings work."""
    assert DEFAULT.should_retry(RESET, 1, b"GET") == "retry"
    assert DEFAULT.should_retry(RESET, 1, b"POST") == "non-idempotent"


def test_body_beyond_the_replay_buffer_is_not_retried() -> None:
    """A request whose body was not kept cannot be replayed, even on a connect failure."""
    assert DEFAULT.should_retry(CONNECT_FAILURE, 1, "PUT",
                                body_replayable=False) == "body-not-replayable"


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        DEFAULT.should_retry(RESET, 0, "GET")


def test_attempt_timeout_is_cut_to_the_remaining_deadline() -> None:
    p = RetryPolicy(RetryConfig(per_try_timeout_s=0.5))
    assert p.attempt_timeout(None) == 0.5
    assert p.attempt_timeout(2.0) == 0.5
    assert p.attempt_timeout(0.2) == 0.2
    assert RetryPolicy(RetryConfig()).attempt_timeout(1.5) == 1.5
    assert RetryPolicy(RetryConfig()).attempt_timeout(None) is None


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    b = Backoff(0.025, 0.25)
    assert [b.ceiling(n) for n in range(1, 7)] == [0.025, 0.05, 0.1, 0.2, 0.25, 0.25]
    assert b.ceiling(10_000) == 0.25  # no overflow for absurd retry numbers


def test_backoff_is_full_jitter_uniform_over_the_ceiling() -> None:
    """Full jitter: delays spread evenly over [0, ceiling] (mean ~ ceiling/2, both ends
    reached), so clients that failed together do not retry together."""
    b = Backoff(0.1, 10.0)
    rng = random.Random(42)
    delays = [b.delay(3, rng) for _ in range(20_000)]
    assert min(delays) >= 0.0
    assert max(delays) <= 0.4
    assert statistics.fmean(delays) == pytest.approx(0.2, rel=0.03)
    assert min(delays) < 0.01
    assert max(delays) > 0.39


@settings(deadline=None)  # no per-example time limit: the machine is shared
@given(base=st.floats(0.001, 1.0), factor=st.floats(1.0, 100.0), retry=st.integers(1, 200),
       seed=st.integers(0, 2**32))
def test_backoff_delay_always_within_zero_and_cap(base: float, factor: float, retry: int,
                                                  seed: int) -> None:
    b = Backoff(base, base * factor)
    d = b.delay(retry, random.Random(seed))
    assert 0.0 <= d <= b.ceiling(retry) <= base * factor


def test_replay_buffer_keeps_bodies_up_to_the_limit_and_drops_beyond() -> None:
    """Up to the limit the body is kept for replay; one byte more and it is released
    for good (memory stays bounded) and replay is refused with the sizes named."""
    buf = ReplayBuffer(10)
    assert buf.append(b"hello")
    assert buf.append(b"world")
    assert buf.chunks() == [b"hello", b"world"]
    assert not buf.append(b"!")
    assert not buf.replayable
    assert not buf.append(b"")
    with pytest.raises(RuntimeError, match="11 bytes exceeded the 10-byte"):
        buf.chunks()


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"attempts": 0}, "attempts", ">= 1"),
    ({"retry_on": ["connect-failure", "500"]}, "retry_on[1]", "Invalid enum value '500'"),
    ({"retriable_status_codes": [200]}, "retriable_status_codes", "400-599"),
    ({"per_try_timeout_s": 0}, "per_try_timeout_s", "> 0"),
    ({"backoff": {"base_s": 1.0, "max_s": 0.5}}, "backoff", "must be >= base_s"),
    ({"max_replay_body_bytes": -1}, "max_replay_body_bytes", ">= 0"),
    ({"attempt": 3}, "attempt", "unknown field"),
])
def test_bad_retry_config_names_the_field(data: dict, field: str, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse(data, RetryConfig)
    [problem] = info.value.problems
    assert format_path(problem.path).startswith(field)
    assert message in problem.message
