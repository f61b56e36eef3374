"""The retry budget: retries stay a bounded share of traffic when an upstream dies.

Simulated on a fake clock: the budget only counts, so a dead or slow cluster is a loop
of failing attempts, and the numbers below are measured, not assumed.
"""

from __future__ import annotations

import heapq

import pytest

from meshproxy.retry import (
    CONNECT_FAILURE,
    Outcome,
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    RetryPolicy,
)


class Clock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def run_dead_cluster(budget: RetryBudget | None, clock: Clock, *, rate: float,
                     seconds: float) -> tuple[int, int, int]:
    """Requests at ``rate``/s to a cluster that refuses every connection at once.
    Returns (requests, retries, refusals) as counted by the caller."""
    policy = RetryPolicy(RetryConfig(attempts=3))
    requests = int(rate * seconds)
    retries = refused = 0
    for i in range(requests):
        clock.now = 5_000.0 + i / rate
        if budget:
            budget.request_started()
            budget.attempt_started()
        attempt = 1
        while policy.should_retry(CONNECT_FAILURE, attempt, "GET") == "retry":
            if budget is not None:
                if not budget.try_acquire_retry():
                    refused += 1
                    break
                budget.attempt_started()
                budget.release_retry()  # the retry failed instantly as well
            retries += 1
            attempt += 1
        if budget:
            budget.request_finished()
    return requests, retries, refused


def test_dead_cluster_retries_are_capped_at_the_budget_share() -> None:
    """Without a budget a dead cluster gets 3 attempts per request (a 3x retry storm).
    With the default budget (20% + 10/s floor over a 10 s window) retries measure at
    most 20% of requests plus the floor, and the budget is used up to that limit."""
    clock = Clock()
    requests, unbounded, _ = run_dead_cluster(None, clock, rate=200.0, seconds=120.0)
    assert unbounded == 2 * requests

    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(), clock=clock)
    requests, retries, refused = run_dead_cluster(budget, clock, rate=200.0, seconds=120.0)
    bound = 0.20 * requests + 10.0 * 120.0  # share + floor over the whole run
    assert retries <= bound
    assert retries / requests <= 0.25  # measured ~0.25: 20% plus 10/s on 200/s
    assert retries / requests >= 0.20  # and not needlessly stingy
    stats = budget.statistics()
    assert stats.retries_total == retries
    assert stats.refused_total == refused > 0.7 * requests
    assert stats.attempts_total == requests + retries
    assert stats.active_requests == stats.active_retries == 0


def test_quiet_route_can_still_retry_thanks_to_the_floor() -> None:
    """One request every 2 s: 20% of almost nothing is nothing, but the 10/s floor
    lets every failed request use all its retries."""
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(), clock=clock)
    requests, retries, _ = run_dead_cluster(budget, clock, rate=0.5, seconds=60.0)
    assert retries == 2 * requests
    assert budget.refused_total == 0


def test_zero_budget_and_zero_floors_refuse_every_retry() -> None:
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(budget_percent=0, min_retries_per_second=0,
                                           min_retry_concurrency=0), clock=clock)
    _, retries, _ = run_dead_cluster(budget, clock, rate=50.0, seconds=10.0)
    assert retries == 0


def test_slow_failing_cluster_keeps_retries_in_flight_under_the_share() -> None:
    """Each attempt hangs 2 s and then fails with 503. Retries in flight never exceed
    max(3, 20% of requests in flight), measured at every event of the simulation."""
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(min_retries_per_second=1000.0), clock=clock)
    policy = RetryPolicy(RetryConfig(attempts=3))
    events: list[tuple[float, int, int, bool]] = []  # (time, seq, attempt, is_retry)
    seq = 0
    worst = 0.0
    for i in range(100 * 60):
        t = 5_000.0 + i / 100.0
        while events and events[0][0] <= t:
            clock.now, _, attempt, is_retry = heapq.heappop(events)
            if is_retry:
                budget.release_retry()
            if policy.should_retry(Outcome.response(503), attempt, "GET") == "retry" \
                    and budget.try_acquire_retry():
                seq += 1
                heapq.heappush(events, (clock.now + 2.0, seq, attempt + 1, True))
            else:
                budget.request_finished()
            limit = max(3, int(0.2 * budget.active_requests))
            assert budget.active_retries <= limit
            worst = max(worst, budget.active_retries / max(budget.active_requests, 1))
        clock.now = t
        budget.request_started()
        seq += 1
        heapq.heappush(events, (t + 2.0, seq, 1, False))
    assert budget.refused_total > 0  # the concurrency limit did bite
    assert worst <= 0.2 + 3 / 200  # share plus the concurrency floor


def test_requests_leave_the_rate_window_after_window_s() -> None:
    """Traffic older than the window no longer earns retries: after a burst and a
    quiet minute, only the floor is left."""
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(min_retries_per_second=0.0,
                                           min_retry_concurrency=100), clock=clock)
    for _ in range(1000):
        budget.request_started()
        budget.request_finished()
    assert budget.retry_allowed()
    assert budget.statistics().window_requests == 1000
    clock.now += 60.0
    assert budget.statistics().window_requests == 0
    assert not budget.retry_allowed()


def test_hedges_share_the_budget_and_are_counted_apart() -> None:
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(min_retries_per_second=0.1), clock=clock)
    budget.request_started()
    assert budget.try_acquire_retry(kind="hedge")  # 0.1/s * 10 s = one extra attempt
    assert not budget.try_acquire_retry()
    stats = budget.statistics()
    assert (stats.hedges_total, stats.retries_total, stats.refused_total) == (1, 0, 1)


def test_unbalanced_calls_raise_instead_of_corrupting_counts() -> None:
    budget = RetryBudget()
    with pytest.raises(RuntimeError, match="request_started"):
        budget.request_finished()
    with pytest.raises(RuntimeError, match="try_acquire_retry"):
        budget.release_retry()
    assert budget.active_requests == budget.active_retries == 0
