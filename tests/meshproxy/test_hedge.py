"""Hedging: the delay (fixed or p95), idempotent-only, the shared budget, first answer wins.

``run_hedged`` is exercised on the real event loop with coroutine "endpoints"; a slow
endpoint sleeps far longer than any test may take, so which attempt wins never depends
on timing, only on the hedge being sent.
"""

from __future__ import annotations

import asyncio

import pytest

from meshproxy.endpoint import Endpoint
from meshproxy.hedge import HedgeConfig, HedgePolicy, LatencyWindow, run_hedged
from meshproxy.retry import RetryBudget, RetryBudgetConfig
from meshproxy.schema import SchemaError, parse


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_latency_window_percentile_is_nearest_rank_and_forgets_old_samples() -> None:
    clock = Clock()
    w = LatencyWindow(span_s=10.0, max_samples=1000, clock=clock)
    assert w.percentile(0.95) is None
    for ms in range(1, 101):
        w.observe(ms / 1000)
    assert w.percentile(0.95) == 0.095
    assert w.percentile(1.0) == 0.100
    assert w.percentile(0.01) == 0.001
    clock.now += 5.0
    w.observe(0.5)
    clock.now += 6.0  # the first hundred are now 11 s old
    assert len(w) == 1
    assert w.percentile(0.5) == 0.5
    with pytest.raises(ValueError, match="quantile"):
        w.percentile(0.0)


def test_latency_window_keeps_only_the_latest_samples() -> None:
    w = LatencyWindow(span_s=100.0, max_samples=10, clock=Clock())
    for ms in range(100):
        w.observe(ms / 1000)
    assert len(w) == 10
    assert w.percentile(0.01) == 0.090


def test_delay_is_fixed_or_the_endpoints_p95_with_floor_and_fallback() -> None:
    """p95 mode uses the default delay until min_samples are known, then the endpoint's
    own p95, never below min_delay_s; fixed mode ignores observations."""
    ep, other = Endpoint("a", 1), Endpoint("b", 1)
    clock = Clock()
    p = HedgePolicy(HedgeConfig(delay="p95", delay_s=0.05, min_delay_s=0.01, min_samples=20),
                    clock=clock)
    for _ in range(19):
        p.observe(ep, 0.2)
    assert p.delay_for(ep) == 0.05
    p.observe(ep, 0.2)
    assert p.delay_for(ep) == 0.2
    for _ in range(40):
        p.observe(other, 0.001)
    assert p.delay_for(other) == 0.01
    p.forget([other])
    assert p.delay_for(ep) == 0.05
    fixed = HedgePolicy(HedgeConfig(delay="fixed", delay_s=0.03))
    for _ in range(40):
        fixed.observe(ep, 1.0)
    assert fixed.delay_for(ep) == 0.03


def test_only_idempotent_methods_hedge_and_at_most_max_hedges() -> None:
    p = HedgePolicy(HedgeConfig(max_hedges=2))
    assert p.allows("GET", 0)
    assert p.allows("get", 1)
    assert not p.allows("GET", 2)
    assert not p.allows("POST", 0)
    assert not p.allows("PATCH", 0)
    assert p.allows(b"HEAD", 0)
    assert not p.allows(b"POST", 0)


def picker(eps: list[Endpoint]):
    def pick(tried):
        return next((e for e in eps if e not in tried), None)
    return pick


def backend(latency: dict[str, float], log: list[str], *, fail: set[str] = frozenset()):
    async def send(ep: Endpoint) -> str:
        log.append(f"start {ep.host}")
        try:
            await asyncio.sleep(latency[ep.host])
        except asyncio.CancelledError:
            log.append(f"cancelled {ep.host}")
            raise
        if ep.host in fail:
            raise ConnectionResetError(f"{ep.host} reset")
        return f"answer from {ep.host}"
    return send


FAST_HEDGE = HedgeConfig(delay="fixed", delay_s=0.02)


async def test_slow_first_endpoint_is_hedged_and_the_hedge_wins() -> None:
    """The first endpoint hangs; after the delay a hedge goes to the second, its answer
    is returned, the first attempt is cancelled and the budget is given back."""
    eps = [Endpoint("slow", 1), Endpoint("fast", 1)]
    log: list[str] = []
    budget = RetryBudget()
    result, ep = await run_hedged(backend({"slow": 30.0, "fast": 0.0}, log), picker(eps),
                                  policy=HedgePolicy(FAST_HEDGE), budget=budget, method="GET")
    assert (result, ep) == ("answer from fast", eps[1])
    assert log == ["start slow", "start fast", "cancelled slow"]
    stats = budget.statistics()
    assert (stats.hedges_total, stats.attempts_total, stats.active_retries) == (1, 2, 0)


async def test_answer_before_the_delay_sends_no_hedge() -> None:
    eps = [Endpoint("a", 1), Endpoint("b", 1)]
    log: list[str] = []
    budget = RetryBudget()
    result, _ = await run_hedged(backend({"a": 0.0, "b": 0.0}, log), picker(eps),
                                 policy=HedgePolicy(HedgeConfig(delay="fixed", delay_s=30.0)),
                                 budget=budget, method="GET")
    assert result == "answer from a"
    assert log == ["start a"]
    assert budget.hedges_total == 0


async def test_non_idempotent_request_is_never_hedged() -> None:
    eps = [Endpoint("a", 1), Endpoint("b", 1)]
    log: list[str] = []
    result, _ = await run_hedged(backend({"a": 0.1, "b": 0.0}, log), picker(eps),
                                 policy=HedgePolicy(FAST_HEDGE), budget=RetryBudget(),
                                 method="POST")
    assert result == "answer from a"
    assert log == ["start a"]


async def test_spent_budget_means_no_hedge_and_the_refusal_is_counted() -> None:
    """Hedges draw on the retry budget: when it is spent the request just waits for
    its first attempt."""
    eps = [Endpoint("a", 1), Endpoint("b", 1)]
    log: list[str] = []
    budget = RetryBudget(RetryBudgetConfig(budget_percent=0, min_retries_per_second=0))
    result, _ = await run_hedged(backend({"a": 0.1, "b": 0.0}, log), picker(eps),
                                 policy=HedgePolicy(FAST_HEDGE), budget=budget, method="GET")
    assert result == "answer from a"
    assert log == ["start a"]
    assert (budget.refused_total, budget.hedges_total) == (1, 0)


async def test_failed_hedge_leaves_the_first_attempt_to_answer() -> None:
    """An attempt that fails while another is out does not end the request."""
    eps = [Endpoint("a", 1), Endpoint("b", 1)]
    log: list[str] = []
    result, ep = await run_hedged(backend({"a": 0.2, "b": 0.0}, log, fail={"b"}), picker(eps),
                                  policy=HedgePolicy(FAST_HEDGE), budget=RetryBudget(),
                                  method="GET")
    assert (result, ep) == ("answer from a", eps[0])


async def test_all_attempts_failing_raises_the_first_error() -> None:
    eps = [Endpoint("a", 1), Endpoint("b", 1)]
    log: list[str] = []
    budget = RetryBudget()
    with pytest.raises(ConnectionResetError, match="a reset"):
        await run_hedged(backend({"a": 0.1, "b": 0.2}, log, fail={"a", "b"}), picker(eps),
                         policy=HedgePolicy(FAST_HEDGE), budget=budget, method="GET")
    assert budget.active_retries == 0


async def test_unsuccessful_answer_waits_for_the_hedge_then_is_the_fallback() -> None:
    """A 503-like answer is held while the hedge is out; if the hedge also fails to
    succeed, the held answer is returned."""
    eps = [Endpoint("a", 1), Endpoint("b", 1)]

    async def send(ep: Endpoint) -> int:
        await asyncio.sleep(0.1 if ep.host == "a" else 0.2)
        return 503 if ep.host == "a" else 500

    status, ep = await run_hedged(send, picker(eps), policy=HedgePolicy(FAST_HEDGE),
                                  budget=RetryBudget(), method="GET",
                                  succeeded=lambda s: s < 500)
    assert (status, ep) == (503, eps[0])


async def test_cancelling_the_request_cancels_every_attempt_and_returns_budget() -> None:
    eps = [Endpoint("a", 1), Endpoint("b", 1)]
    log: list[str] = []
    budget = RetryBudget()
    task = asyncio.ensure_future(run_hedged(
        backend({"a": 30.0, "b": 30.0}, log), picker(eps), policy=HedgePolicy(FAST_HEDGE),
        budget=budget, method="GET"))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if "start b" in log:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(x for x in log if x.startswith("cancelled")) == ["cancelled a", "cancelled b"]
    assert budget.active_retries == 0


async def test_no_endpoint_at_all_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        await run_hedged(backend({}, []), lambda tried: None, policy=HedgePolicy(FAST_HEDGE),
                         budget=RetryBudget(), method="GET")


def test_bad_hedge_config_is_refused() -> None:
    with pytest.raises(SchemaError, match="max_hedges: Expected `int` >= 1"):
        parse({"max_hedges": 0}, HedgeConfig)
    with pytest.raises(SchemaError, match="delay: Invalid enum value 'p99'"):
        parse({"delay": "p99"}, HedgeConfig)
