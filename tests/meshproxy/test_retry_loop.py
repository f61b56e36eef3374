"""The retry loop: policy, budget, backoff, deadline and endpoint exclusion together.

Endpoints are coroutines and time is a fake clock that the attempts and the backoff
sleeps move forward, so every timeout and wait is exact and nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from meshproxy.balance import PickContext, RoundRobin
from meshproxy.deadline import Deadline
from meshproxy.endpoint import Endpoint
from meshproxy.retry import (
    PER_TRY_TIMEOUT,
    Attempt,
    Outcome,
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    RetryPolicy,
    run_with_retries,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Cluster:
    """Three endpoints behind round robin; ``status`` says what each answers."""

    def __init__(self, clock: Clock, status: dict[str, int], *, takes: float = 0.01) -> None:
        self.eps = [Endpoint(h, 80) for h in ("a", "b", "c")]
        self.lb = RoundRobin(self.eps)
        self.clock = clock
        self.status = status
        self.takes = takes
        self.calls: list[tuple[str, float | None, tuple[str, ...]]] = []
        self.discarded: list[str] = []
        self.sleeps: list[float] = []

    async def attempt(self, tried: Sequence[Endpoint], timeout: float | None) -> Attempt[str]:
        ep = self.lb.pick(PickContext(now=self.clock.now), exclude=tried)
        self.calls.append((ep.host, timeout, tuple(e.host for e in tried)))
        code = self.status[ep.host]
        if code == 0:  # hangs until the per-try timeout fires
            self.clock.now += timeout
            return Attempt(PER_TRY_TIMEOUT, f"timeout at {ep.host}", ep)
        self.clock.now += self.takes
        return Attempt(Outcome.response(code), f"{code} from {ep.host}", ep)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.now += seconds


def run(cluster: Cluster, *, config: RetryConfig, budget: RetryBudget | None = None,
        method: str = "GET", deadline: Deadline | None = None):
    return run_with_retries(cluster.attempt, policy=RetryPolicy(config),
                            budget=budget or RetryBudget(clock=cluster.clock), method=method,
                            rng=random.Random(4), deadline=deadline, now=cluster.clock,
                            discard=cluster.discarded.append, sleep=cluster.sleep)


async def test_each_retry_goes_to_an_endpoint_not_tried_yet() -> None:
    """Three 503s: three attempts on three different endpoints, the two replaced
    answers discarded, backoff with full jitter before each retry, budget counted
    and fully returned."""
    clock = Clock()
    cluster = Cluster(clock, {"a": 503, "b": 503, "c": 503})
    budget = RetryBudget(clock=clock)
    result = await run(cluster, config=RetryConfig(attempts=3), budget=budget)
    assert [c[0] for c in cluster.calls] == ["a", "b", "c"]
    assert [c[2] for c in cluster.calls] == [(), ("a",), ("a", "b")]
    assert (result.stopped, result.attempts, result.last.value) == (
        "attempts-exhausted", 3, "503 from c")
    assert cluster.discarded == ["503 from a", "503 from b"]
    assert 0 <= cluster.sleeps[0] <= 0.025
    assert 0 <= cluster.sleeps[1] <= 0.050
    stats = budget.statistics()
    assert (stats.attempts_total, stats.retries_total) == (3, 2)
    assert stats.active_requests == stats.active_retries == 0


async def test_success_after_a_failure_ends_the_loop() -> None:
    clock = Clock()
    cluster = Cluster(clock, {"a": 502, "b": 200, "c": 200})
    result = await run(cluster, config=RetryConfig(attempts=5))
    assert (result.stopped, result.attempts, result.last.value) == ("answered", 2, "200 from b")


async def test_non_idempotent_request_is_not_retried_after_a_503() -> None:
    clock = Clock()
    cluster = Cluster(clock, {"a": 503, "b": 200, "c": 200})
    result = await run(cluster, config=RetryConfig(attempts=3), method="POST")
    assert (result.stopped, result.attempts) == ("non-idempotent", 1)
    assert cluster.discarded == []


async def test_spent_budget_returns_the_failure_instead_of_retrying() -> None:
    clock = Clock()
    cluster = Cluster(clock, {"a": 503, "b": 200, "c": 200})
    budget = RetryBudget(RetryBudgetConfig(budget_percent=0, min_retries_per_second=0),
                         clock=clock)
    result = await run(cluster, config=RetryConfig(attempts=3), budget=budget)
    assert (result.stopped, result.attempts, result.last.value) == (
        "budget-refused", 1, "503 from a")
    assert budget.refused_total == 1
    assert cluster.discarded == []  # the caller still owns the answer it gets back


async def test_tries_are_cut_to_the_deadline_and_stop_when_it_is_spent() -> None:
    """Route deadline 0.5 s, per-try timeout 0.3 s, every endpoint hangs: the first try
    gets 0.3 s, the second only what is left (< 0.2 s), and no third is started."""
    clock = Clock()
    cluster = Cluster(clock, {"a": 0, "b": 0, "c": 0})
    deadline = Deadline.start(clock.now, route_timeout_s=0.5, incoming_s=None)
    config = RetryConfig(attempts=5, per_try_timeout_s=0.3,
                         retry_on={"per-try-timeout", "connect-failure"})
    result = await run(cluster, config=config, deadline=deadline)
    timeouts = [c[1] for c in cluster.calls]
    assert timeouts[0] == pytest.approx(0.3)
    assert timeouts[1] == pytest.approx(0.2 - cluster.sleeps[0])
    assert (result.stopped, result.attempts) == ("deadline-expired", 2)
    assert clock.now == pytest.approx(deadline.expires_at)


async def test_cancelled_during_backoff_gives_back_budget_and_request() -> None:
    """The client leaves (or the route timeout fires) while the loop waits to retry:
    nothing stays counted as in flight."""
    clock = Clock()
    cluster = Cluster(clock, {"a": 503, "b": 503, "c": 503})
    budget = RetryBudget(clock=clock)
    gate = asyncio.Event()

    async def blocked_sleep(seconds: float) -> None:
        gate.set()
        await asyncio.Event().wait()  # never set: only cancellation ends it

    task = asyncio.ensure_future(run_with_retries(
        cluster.attempt, policy=RetryPolicy(RetryConfig(attempts=3)), budget=budget,
        method="GET", rng=random.Random(1), now=clock, sleep=blocked_sleep))
    await gate.wait()
    assert budget.active_retries == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.active_requests == budget.active_retries == 0
