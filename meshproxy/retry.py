"""Retries: which failures retry, how long to wait, and the budget that stops a storm.

Objects with no I/O of their own, for the engine's retry layer to drive (see ``hedge``
for the second user of the budget and ``deadline`` for the time left to retry in):

- :class:`RetryConfig` (frozen, per route) and the runtime :class:`RetryPolicy` built
  from it: ``should_retry(outcome, attempt, method, body_replayable=...)`` returns a
  :data:`Verdict` (``"retry"`` or why not, usable as a metric label);
  ``policy.backoff.delay(retry_number, rng)`` is exponential backoff with full jitter
  (AWS's "Exponential Backoff And Jitter": uniform in [0, min(max, base * 2^(n-1))]).
- :class:`RetryBudget` (per route, shared by retries and hedges): a retry may start only
  when ``try_acquire_retry()`` says so, and ``release_retry()`` is called when it ends.
  Two limits, each with a floor, because each catches what the other misses:

  * concurrency (Envoy's retry budget): retries in flight <= ``budget_percent`` of the
    route's requests in flight, but at least ``min_retry_concurrency``. This bounds the
    extra load on a *slow* upstream, where failures take long and pile up.
  * rate (Linkerd's and Finagle's budget): retries started in the last ``window_s`` <=
    ``budget_percent`` of requests started in it, plus ``min_retries_per_second`` *
    ``window_s``. A *dead* upstream fails in microseconds, so nothing piles up and the
    concurrency limit never bites; this one still caps retries at a fixed share.

  Counters (``statistics()``): attempts, retries, hedges, refused by the budget.
- :class:`ReplayBuffer`: keeps a request body for replay up to a bound; beyond it the
  body is dropped and the request is not retried (Linkerd's 64 KiB rule).
- :func:`run_with_retries`: the retry loop that composes all of the above with a
  :class:`~meshproxy.deadline.Deadline`; what the engine's retry layer runs around its
  inner handler, and what the tests drive with coroutine endpoints.

The engine describes each finished attempt as an :class:`Outcome`. Mapping from the
request path's error tree (``meshproxy.errors``): ConnectFailure and ConnectTimeout →
``connect-failure``; UpstreamReset and UpstreamProtocolError → ``reset``; the per-try
timer firing → ``per-try-timeout``; a response → ``Outcome.response(status)``.
A connect failure is retried for any method: no byte of the request reached the
upstream. Every other retry needs an idempotent method (RFC 9110 §9.2.2) unless the
route sets ``retry_non_idempotent``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, Literal, TypeVar

from msgspec import Meta

from meshproxy.deadline import Deadline
from meshproxy.endpoint import Endpoint
from meshproxy.schema import Frozen, field_error

T = TypeVar("T")

Condition = Literal["connect-failure", "reset", "per-try-timeout", "502", "503", "504"]
OutcomeKind = Literal["response", "connect-failure", "reset", "per-try-timeout"]
Verdict = Literal["retry", "answered", "not-retriable", "attempts-exhausted",
                  "non-idempotent", "body-not-replayable"]
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def is_idempotent(method: str | bytes) -> bool:
    """Whether ``method`` (as text or as the parser's bytes) is idempotent."""
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    return method.upper() in IDEMPOTENT_METHODS


class BackoffConfig(Frozen, kw_only=True):
    # First retry waits up to 25 ms (Envoy's default base): long enough for a restarting
    # endpoint's listener to come back, short next to typical route timeouts.
    base_s: Annotated[float, Meta(gt=0.0, le=60.0)] = 0.025
    # Cap on the wait; 10x the base is Envoy's default and keeps tail latency bounded.
    max_s: Annotated[float, Meta(gt=0.0, le=300.0)] = 0.250

    def __post_init__(self) -> None:
        if self.max_s < self.base_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= base_s ({self.base_s})")


class RetryBudgetConfig(Frozen, kw_only=True):
    # Retries (and hedges) may add at most this share on top of the route's requests;
    # 20% is Linkerd's and Envoy's default: enough to hide sporadic failures, too
    # little to double the load on a struggling upstream.
    budget_percent: Annotated[float, Meta(ge=0.0, le=100.0)] = 20.0
    # Rate floor so a quiet route can still retry (Linkerd's default 10/s).
    min_retries_per_second: Annotated[float, Meta(ge=0.0, le=10_000.0)] = 10.0
    # Concurrency floor, Envoy's default 3 retries in flight.
    min_retry_concurrency: Annotated[int, Meta(ge=0, le=10_000)] = 3
    # Seconds over which requests and retries are counted for the rate limit (Linkerd's
    # 10 s TTL): long enough to smooth bursts, short enough to follow load changes.
    window_s: Annotated[float, Meta(gt=0.0, le=600.0)] = 10.0


class RetryConfig(Frozen, kw_only=True):
    """A route's retry settings."""

    # Total tries including the first; 2 = one retry, Envoy's default num_retries: 1.
    attempts: Annotated[int, Meta(ge=1, le=10)] = 2
    # Failures that retry. The default covers failures where another endpoint is likely
    # to succeed; per-try-timeout is opt-in since the first try may still be working.
    retry_on: frozenset[Condition] = frozenset(
        {"connect-failure", "reset", "502", "503", "504"})
    # Further response codes that retry (e.g. 429, 409), Envoy's retriable_status_codes.
    retriable_status_codes: frozenset[int] = frozenset()
    # Retry POST/PATCH/... too. Off by default: a reset or a 503 may come after the
    # upstream acted on the request, and replaying it would act twice.
    retry_non_idempotent: bool = False
    # Seconds per try; None lets each try run until the route deadline.
    per_try_timeout_s: Annotated[float, Meta(gt=0.0, le=3600.0)] | None = None
    # Bytes of request body kept for replay (Linkerd's 64 KiB); larger bodies stream
    # through unbuffered and their requests are not retried.
    max_replay_body_bytes: Annotated[int, Meta(ge=0, le=64 * 1024 * 1024)] = 64 * 1024
    backoff: BackoffConfig = BackoffConfig()

    def __post_init__(self) -> None:
        bad = sorted(c for c in self.retriable_status_codes if not 400 <= c <= 599)
        if bad:
            raise field_error("retriable_status_codes",
                              f"retriable status codes must be 400-599, got {bad}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, as the retry decision needs it."""

    kind: OutcomeKind
    status: int = 0  # the response status when kind == "response"

    @classmethod
    def response(cls, status: int) -> Outcome:
        return cls("response", status)


CONNECT_FAILURE = Outcome("connect-failure")
RESET = Outcome("reset")
PER_TRY_TIMEOUT = Outcome("per-try-timeout")


class Backoff:
    """Exponential backoff with full jitter."""

    __slots__ = ("base", "cap")

    def __init__(self, base_s: float, max_s: float) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s, got {base_s}, {max_s}")
        self.base = base_s
        self.cap = max_s

    def ceiling(self, retry: int) -> float:
        """The upper bound of the wait before retry number ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry number starts at 1, got {retry}")
        return min(self.cap, self.base * 2.0 ** min(retry - 1, 62))

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry``: uniform in [0, ceiling]."""
        return rng.uniform(0.0, self.ceiling(retry))


class RetryPolicy:
    """A route's retry decisions, built from its :class:`RetryConfig`."""

    def __init__(self, config: RetryConfig) -> None:
        self.config = config
        self.backoff = Backoff(config.backoff.base_s, config.backoff.max_s)
        on = config.retry_on
        self._connect = "connect-failure" in on
        self._reset = "reset" in on
        self._timeout = "per-try-timeout" in on
        self._codes = frozenset(int(c) for c in on if c.isdigit()) | config.retriable_status_codes

    def retriable(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` is one of the configured retry conditions."""
        match outcome.kind:
            case "response":
                return outcome.status in self._codes
            case "connect-failure":
                return self._connect
            case "reset":
                return self._reset
            case "per-try-timeout":
                return self._timeout
        return False

    def should_retry(self, outcome: Outcome, attempt: int, method: str | bytes, *,
                     body_replayable: bool = True) -> Verdict:
        """Whether to try again after ``attempt`` (1-based) ended with ``outcome``.

        Does not consult the budget: after ``"retry"`` the caller still needs
        ``budget.try_acquire_retry()``. Checks run cheapest-first and the first
        refusal names itself.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        if outcome.kind == "response" and outcome.status < 500 \
                and outcome.status not in self._codes:
            return "answered"  # a final answer, not a failure
        if not self.retriable(outcome):
            return "not-retriable"
        if attempt >= self.config.attempts:
            return "attempts-exhausted"
        if outcome.kind != "connect-failure" and not self.config.retry_non_idempotent \
                and not is_idempotent(method):
            return "non-idempotent"
        if not body_replayable:
            return "body-not-replayable"
        return "retry"

    def attempt_timeout(self, remaining_s: float | None) -> float | None:
        """Timeout for the next try: the per-try timeout, cut to what the deadline leaves."""
        per_try = self.config.per_try_timeout_s
        if remaining_s is None:
            return per_try
        return remaining_s if per_try is None else min(per_try, remaining_s)


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    """A snapshot of a :class:`RetryBudget` (counters are totals since creation)."""

    active_requests: int
    active_retries: int
    window_requests: int
    window_retries: int
    attempts_total: int
    retries_total: int
    hedges_total: int
    refused_total: int


class _Window:
    """Event counts over the last ``span`` seconds, in ``buckets`` slices."""

    __slots__ = ("_counts", "_stamps", "_width")

    def __init__(self, span: float, buckets: int = 10) -> None:
        self._width = span / buckets
        self._counts = [0] * buckets
        self._stamps = [-1] * buckets  # which slice index each bucket currently holds

    def _bucket(self, now: float) -> int:
        index = int(now // self._width)
        b = index % len(self._counts)
        if self._stamps[b] != index:
            self._stamps[b] = index
            self._counts[b] = 0
        return b

    def add(self, now: float) -> None:
        self._counts[self._bucket(now)] += 1

    def total(self, now: float) -> int:
        index = int(now // self._width)
        oldest = index - len(self._counts) + 1
        return sum(c for c, s in zip(self._counts, self._stamps, strict=True) if s >= oldest)


class RetryBudget:
    """Per-route limit on retries and hedges (see the module docstring for the rules).

    Not a rate limiter for first attempts: requests always go through; only the extra
    attempts are refused when the budget is spent.
    """

    def __init__(self, config: RetryBudgetConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or RetryBudgetConfig()
        self._clock = clock
        self._share = self.config.budget_percent / 100.0
        self._floor = self.config.min_retries_per_second * self.config.window_s
        self._requests = _Window(self.config.window_s)
        self._retries = _Window(self.config.window_s)
        self.active_requests = 0
        self.active_retries = 0
        self.attempts_total = 0
        self.retries_total = 0
        self.hedges_total = 0
        self.refused_total = 0

    def request_started(self) -> None:
        """A request entered the route (call once per request, not per attempt)."""
        self.active_requests += 1
        self._requests.add(self._clock())

    def request_finished(self) -> None:
        if self.active_requests <= 0:
            raise RuntimeError("request_finished() without a matching request_started()")
        self.active_requests -= 1

    def attempt_started(self) -> None:
        """Count one attempt (first tries, retries and hedges alike)."""
        self.attempts_total += 1

    def retry_allowed(self) -> bool:
        """Whether a retry could start now (does not take it or count anything)."""
        concurrency = max(self.config.min_retry_concurrency,
                          int(self._share * self.active_requests))
        if self.active_retries >= concurrency:
            return False
        now = self._clock()
        rate = self._share * self._requests.total(now) + self._floor
        return self._retries.total(now) + 1 <= rate

    def try_acquire_retry(self, kind: Literal["retry", "hedge"] = "retry") -> bool:
        """Take budget for one retry (or hedge); False, and counted, when it is spent.
        After True the caller must call :meth:`release_retry` when that attempt ends."""
        if not self.retry_allowed():
            self.refused_total += 1
            return False
        self.active_retries += 1
        self._retries.add(self._clock())
        if kind == "hedge":
            self.hedges_total += 1
        else:
            self.retries_total += 1
        return True

    def release_retry(self) -> None:
        if self.active_retries <= 0:
            raise RuntimeError("release_retry() without a matching try_acquire_retry()")
        self.active_retries -= 1

    def statistics(self) -> BudgetStatistics:
        now = self._clock()
        return BudgetStatistics(
            active_requests=self.active_requests, active_retries=self.active_retries,
            window_requests=self._requests.total(now), window_retries=self._retries.total(now),
            attempts_total=self.attempts_total, retries_total=self.retries_total,
            hedges_total=self.hedges_total, refused_total=self.refused_total)

    def __repr__(self) -> str:
        return (f"<RetryBudget {self.config.budget_percent}% active={self.active_requests} "
                f"retrying={self.active_retries} refused={self.refused_total}>")


class ReplayBuffer:
    """A request body kept for replay, up to ``limit`` bytes.

    ``append`` returns False once the body outgrows the limit: the chunks are dropped
    (memory stays bounded) and ``replayable`` turns False for good.
    """

    __slots__ = ("_chunks", "_size", "limit", "replayable")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"replay buffer limit must be >= 0 bytes, got {limit}")
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.replayable = True

    def append(self, chunk: bytes) -> bool:
        if not self.replayable:
            return False
        self._size += len(chunk)
        if self._size > self.limit:
            self.replayable = False
            self._chunks = []
            return False
        self._chunks.append(bytes(chunk))
        return True

    @property
    def size(self) -> int:
        return self._size

    def chunks(self) -> list[bytes]:
        """The buffered body, for a replay; an error if it was not kept."""
        if not self.replayable:
            raise RuntimeError(f"body of {self._size} bytes exceeded the {self.limit}-byte "
                               "replay buffer and cannot be replayed")
        return list(self._chunks)


@dataclass(frozen=True, slots=True)
class Attempt(Generic[T]):
    """One finished attempt: how it ended, what it produced (a response, or the error
    it raised) and the endpoint it went to."""

    outcome: Outcome
    value: T
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class RetryResult(Generic[T]):
    """The attempt that ends the request, and why no further one was made."""

    last: Attempt[T]
    attempts: int
    stopped: Verdict | Literal["budget-refused", "deadline-expired"]


async def run_with_retries(attempt: Callable[[Sequence[Endpoint], float | None],
                                             Awaitable[Attempt[T]]], *,
                           policy: RetryPolicy, budget: RetryBudget, method: str | bytes,
                           rng: random.Random, deadline: Deadline | None = None,
                           now: Callable[[], float] = time.monotonic,
                           body_replayable: Callable[[], bool] = lambda: True,
                           discard: Callable[[T], None] = lambda _: None,
                           sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                           ) -> RetryResult[T]:
    """Make attempts until one is final. ``attempt(tried, timeout)`` sends one try,
    avoiding the endpoints in ``tried`` (the balancer's ``exclude``) within
    ``timeout`` seconds (None: no per-try limit), and reports it as an :class:`Attempt`
    rather than raising. ``discard`` releases a result that a retry replaces.
    ``now`` must be the clock of ``deadline`` (the loop's time in the engine). Failing
    fast on a deadline already spent before the first attempt is the caller's job
    (it answers 504 without calling this); later attempts are not started when the
    deadline would be spent by the end of the backoff.
    """
    tried: list[Endpoint] = []
    number = 0
    budget.request_started()
    holding = False  # budget taken for the attempt in flight
    try:
        while True:
            number += 1
            remaining = deadline.remaining(now()) if deadline is not None else None
            budget.attempt_started()
            if remaining is not None:
                remaining = max(remaining, 0.0)
            last = await attempt(tuple(tried), policy.attempt_timeout(remaining))
            if holding:
                budget.release_retry()
                holding = False
            tried.append(last.endpoint)
            verdict = policy.should_retry(last.outcome, number, method,
                                          body_replayable=body_replayable())
            if verdict != "retry":
                return RetryResult(last, number, verdict)
            wait = policy.backoff.delay(number, rng)
            if deadline is not None and deadline.expired(now() + wait):
                return RetryResult(last, number, "deadline-expired")
            if not budget.try_acquire_retry():
                return RetryResult(last, number, "budget-refused")
            holding = True
            discard(last.value)
            await sleep(wait)
    finally:
        if holding:
            budget.release_retry()
        budget.request_finished()
