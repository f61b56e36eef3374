"""The work queue: dedup, one worker per key, back-off growth and cap, forget, shutdown.

All timing runs on :class:`ManualClock`: a delayed key appears exactly when the clock
passes its due time, never because real time went by.
"""

from __future__ import annotations

import asyncio

import pytest

from control.client.clock import ManualClock
from control.client.ratelimit import ExponentialBackoff, MaxOf, TokenBucket
from control.client.workers import PermanentError, run_workers
from control.client.workqueue import QueueShutDown, WorkQueue


def _queue(clock: ManualClock, *, base: float = 1.0, cap: float = 16.0) -> WorkQueue[str]:
    return WorkQueue(rate_limiter=ExponentialBackoff(base, cap), clock=clock, name="test")


async def _get_now(q: WorkQueue[str]) -> str:
    """Get a key that must already be queued (fails fast instead of hanging)."""
    return await asyncio.wait_for(q.get(), timeout=5)


async def test_adding_a_key_many_times_hands_it_out_once() -> None:
    """Dedup: three adds of one key before anyone takes it yield one item."""
    q = _queue(ManualClock())
    for key in ("a", "b", "a", "a"):
        q.add(key)
    assert len(q) == 2
    assert [await _get_now(q), await _get_now(q)] == ["a", "b"]
    assert len(q) == 0


async def test_key_added_while_processing_waits_for_done_and_comes_back_once() -> None:
    """One worker per key: a key being processed is not handed out again until done();
    adds during processing are remembered (dirty) and requeue it exactly once."""
    q = _queue(ManualClock())
    q.add("a")
    assert await _get_now(q) == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0, "a key being processed must not be queued for a second worker"
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not second.done()
    q.done("a")
    assert await asyncio.wait_for(second, 5) == "a"
    q.done("a")
    assert len(q) == 0


async def test_backoff_doubles_per_failure_and_is_capped() -> None:
    """add_rate_limited delays 1, 2, 4, 8, 16, 16 s for successive failures (cap 16);
    the key appears exactly at its due time and not a moment earlier."""
    clock = ManualClock()
    q = _queue(clock, base=1.0, cap=16.0)
    delays = []
    for _ in range(6):
        q.add_rate_limited("k")
        waited = 0.0
        while len(q) == 0:
            assert waited <= 64, "key never became ready"
            clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
        assert await _get_now(q) == "k"
        q.done("k")
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0]
    assert q.num_requeues("k") == 6


async def test_forget_resets_backoff_to_the_base_delay() -> None:
    """After forget (a success), the next failure waits the base delay again."""
    clock = ManualClock()
    q = _queue(clock, base=1.0, cap=100.0)
    for _ in range(3):
        q.add_rate_limited("k")
        clock.advance(100)
        await _get_now(q)
        q.done("k")
    q.forget("k")
    assert q.num_requeues("k") == 0
    q.add_rate_limited("k")
    clock.advance(0.99)
    assert len(q) == 0
    clock.advance(0.01)
    assert len(q) == 1


async def test_backoff_is_per_key() -> None:
    """One failing key does not slow another: each has its own failure count."""
    clock = ManualClock()
    q = _queue(clock, base=1.0, cap=100.0)
    for _ in range(4):
        q.add_rate_limited("bad")
        clock.advance(100)
        await _get_now(q)
        q.done("bad")
    q.add_rate_limited("bad")
    q.add_rate_limited("good")
    clock.advance(1.0)
    assert len(q) == 1
    assert await _get_now(q) == "good"
    assert q.num_requeues("bad") == 5
    clock.advance(15.0)
    assert await _get_now(q) == "bad"


async def test_add_after_keeps_the_earliest_due_time() -> None:
    """A key waiting for 10 s that is asked for again in 2 s is ready at 2 s, once."""
    clock = ManualClock()
    q = _queue(clock)
    q.add_after("k", 10)
    q.add_after("k", 2)
    q.add_after("k", 5)
    assert q.waiting() == 1
    clock.advance(2)
    assert len(q) == 1
    clock.advance(10)
    assert len(q) == 1, "the superseded timers must not add the key again"


async def test_token_bucket_spreads_retries_beyond_the_burst() -> None:
    """Overall budget: with burst 2 at 1/s, the 3rd and 4th retries wait 1 s and 2 s."""
    clock = ManualClock()
    bucket = TokenBucket(qps=1.0, burst=2, clock=clock)
    assert [bucket.when(k) for k in "abcd"] == [0.0, 0.0, 1.0, 2.0]
    clock.advance(10)
    assert bucket.when("e") == 0.0
    limiter = MaxOf(ExponentialBackoff(0.5, 10), TokenBucket(qps=100, burst=10, clock=clock))
    assert limiter.when("x") == 0.5


async def test_shut_down_wakes_waiting_getters_and_drops_pending_work() -> None:
    """After shut_down, get raises QueueShutDown (also for a getter already waiting),
    queued and delayed keys are dropped and timers cancelled."""
    clock = ManualClock()
    q = _queue(clock)
    waiter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.add_after("later", 5)
    q.shut_down()
    with pytest.raises(QueueShutDown):
        await asyncio.wait_for(waiter, 5)
    assert clock.pending_timers() == 0
    q.add("x")
    assert len(q) == 0
    with pytest.raises(QueueShutDown):
        await q.get()


async def test_shut_down_with_drain_waits_for_keys_in_progress() -> None:
    """Drain: shutdown completes only once the worker holding a key calls done()."""
    q = _queue(ManualClock())
    q.add("a")
    key = await _get_now(q)
    drain = asyncio.ensure_future(q.shut_down_with_drain())
    await asyncio.sleep(0.01)
    assert not drain.done()
    q.done(key)
    await asyncio.wait_for(drain, 5)


async def test_run_workers_never_runs_one_key_twice_at_once() -> None:
    """With four workers and keys re-added while being reconciled, no key is ever
    reconciled concurrently with itself, and every added key is reconciled."""
    q: WorkQueue[str] = WorkQueue(rate_limiter=ExponentialBackoff(0.001, 0.01), name="w")
    active: set[str] = set()
    overlaps: list[str] = []
    seen: list[str] = []

    async def reconcile(key: str) -> None:
        if key in active:
            overlaps.append(key)
        active.add(key)
        await asyncio.sleep(0.002)
        seen.append(key)
        if len(seen) < 30:
            q.add(key)  # a change arrives while the key is being handled
            q.add(f"other-{len(seen) % 3}")
        active.discard(key)

    q.add("a")
    q.add("b")
    task = asyncio.ensure_future(run_workers(q, reconcile, workers=4))
    for _ in range(500):
        if len(seen) >= 30 and len(q) == 0 and not q.processing():
            break
        await asyncio.sleep(0.01)
    await q.shut_down_with_drain()
    await asyncio.wait_for(task, 5)
    assert overlaps == []
    assert {"a", "b", "other-0", "other-1", "other-2"} <= set(seen)


async def test_failed_reconcile_backs_off_and_permanent_error_is_dropped() -> None:
    """A raising reconcile is retried with growing delays until it succeeds, then
    forgotten; a PermanentError is not retried at all."""
    clock = ManualClock()
    q = _queue(clock, base=1.0)
    calls: dict[str, int] = {"flaky": 0, "invalid": 0}

    async def reconcile(key: str) -> None:
        calls[key] += 1
        if key == "invalid":
            raise PermanentError("spec.replicas must be >= 0")
        if calls[key] < 3:
            raise RuntimeError("conflict")

    task = asyncio.ensure_future(run_workers(q, reconcile, workers=1))
    q.add("flaky")
    q.add("invalid")

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    await settle()
    assert calls == {"flaky": 1, "invalid": 1}
    assert q.num_requeues("flaky") == 1
    clock.advance(1.0)
    await settle()
    assert calls["flaky"] == 2
    clock.advance(1.9)
    await settle()
    assert calls["flaky"] == 2, "second retry waits 2 s, not 1 s"
    clock.advance(0.1)
    await settle()
    assert calls["flaky"] == 3
    assert q.num_requeues("flaky") == 0, "success forgets the back-off"
    clock.advance(1000)
    await settle()
    assert calls == {"flaky": 3, "invalid": 1}
    q.shut_down()
    await asyncio.wait_for(task, 5)


async def test_conflict_is_retried_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A 409 Conflict (a cache older than the server) is requeued with back-off and
    logged in one line without a traceback; other errors keep their traceback."""
    from control.client.errors import Conflict

    clock = ManualClock()
    q = _queue(clock, base=1.0)
    calls = {"n": 0}

    async def reconcile(key: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Conflict(409, "Conflict", "the object has been modified")

    task = asyncio.ensure_future(run_workers(q, reconcile, workers=1))
    with caplog.at_level("INFO", logger="control.client.workers"):
        q.add("k")
        for _ in range(20):
            await asyncio.sleep(0)
        clock.advance(1.0)
        for _ in range(20):
            await asyncio.sleep(0)
    assert calls["n"] == 2
    records = [r for r in caplog.records if r.name == "control.client.workers"]
    assert len(records) == 1
    assert records[0].levelname == "INFO"
    assert records[0].exc_info is None
    q.shut_down()
    await asyncio.wait_for(task, 5)
