"""Concurrency limits: immediate refusal with a reason, bounded FIFO waiting, cancellation
safety, resizing in place under load, and a model-based property test."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.resilience.concurrency import (
    ConcurrencyConfig,
    EndpointLimits,
    Limiter,
    LimitSet,
)


def test_excess_is_refused_immediately_with_a_reason() -> None:
    lim = Limiter(2, name="catalog max_requests")
    assert lim.try_acquire()
    assert lim.try_acquire()
    assert not lim.try_acquire()
    assert lim.refusal == "catalog max_requests limit 2 reached"
    lim.release()
    assert lim.try_acquire()
    st_ = lim.statistics()
    assert (st_.in_use, st_.acquired_total, st_.refused_total) == (2, 3, 1)
    assert "2/2 in use" in repr(lim)


def test_release_without_acquire_is_an_error() -> None:
    lim = Limiter(1, name="x")
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        lim.release()


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_setters_validate_and_change_nothing_on_bad_input(bad) -> None:
    lim = Limiter(3, name="x", max_waiting=2)
    with pytest.raises(ValueError, match="limit must be an integer"):
        lim.limit = bad
    with pytest.raises(ValueError, match="max_waiting must be an integer"):
        lim.max_waiting = bad
    assert (lim.limit, lim.max_waiting) == (3, 2)


async def test_concurrent_load_never_exceeds_the_limit() -> None:
    """200 tasks hammer a limit of 7 with random hold times: in-flight never exceeds 7,
    and every task either got in or was refused."""
    lim = Limiter(7, name="load")
    peak = 0
    admitted = refused = 0
    rnd = random.Random(5)

    async def one() -> None:
        nonlocal peak, admitted, refused
        for _ in range(20):
            if lim.try_acquire():
                admitted += 1
                peak = max(peak, lim.in_use)
                for _ in range(rnd.randrange(1, 4)):   # hold across a few loop turns
                    await asyncio.sleep(0)
                lim.release()
            else:
                refused += 1
                await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(200)))
    assert peak == 7
    assert admitted + refused == 4000
    assert refused > 0
    assert lim.in_use == 0


async def test_waiters_are_served_in_order_and_the_line_is_bounded() -> None:
    lim = Limiter(1, name="conn", max_waiting=2)
    assert await lim.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await lim.acquire()
        order.append(i)

    t1 = asyncio.create_task(wait(1))
    t2 = asyncio.create_task(wait(2))
    await asyncio.sleep(0)
    assert not await lim.acquire()          # line full: refused at once
    assert not lim.try_acquire()            # a newcomer does not barge past the line
    assert lim.statistics().waiting == 2
    lim.release()
    await asyncio.sleep(0)
    assert order == [1]
    lim.release()
    await asyncio.gather(t1, t2)
    assert order == [1, 2]
    lim.release()
    assert lim.in_use == 0


async def test_cancelled_waiter_leaves_no_slot_taken() -> None:
    lim = Limiter(1, name="conn", max_waiting=5)
    assert lim.try_acquire()
    t = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    lim.release()
    assert lim.in_use == 0
    assert lim.statistics().waiting == 0

    # cancelled in the same tick as the slot is handed over: the slot is given back
    assert lim.try_acquire()
    t = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.release()                            # hands the slot to t
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert lim.in_use == 0


async def test_resizing_keeps_holders_and_wakes_waiters() -> None:
    lim = Limiter(2, name="r", max_waiting=3)
    assert lim.try_acquire()
    assert lim.try_acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.limit = 3                            # grow: the waiter gets in
    assert await waiter
    assert lim.in_use == 3
    lim.limit = 1                            # shrink below holders: nobody cut off...
    assert lim.in_use == 3
    lim.release()
    lim.release()
    assert not lim.try_acquire()             # ...but no new holder until below 1
    lim.release()
    assert lim.try_acquire()


def test_limit_set_reconfigure_resizes_in_place() -> None:
    s = LimitSet("cart", ConcurrencyConfig(max_requests=2, max_retries=1))
    assert s.requests.try_acquire()
    req = s.requests
    assert s.reconfigure(ConcurrencyConfig(max_requests=1, max_retries=0,
                                           max_pending_requests=0))
    assert s.requests is req
    assert s.requests.in_use == 1
    assert not s.requests.try_acquire()
    assert not s.retries.try_acquire()
    assert s.connections.max_waiting == 0
    assert (s.requests.code, s.retries.code, s.connections.code) == (
        "max_requests", "max_retries", "max_pending_requests")
    assert "requests 1/1" in repr(s)


def test_endpoint_limits_are_per_address_and_forget_departed() -> None:
    e = EndpointLimits("cart", ConcurrencyConfig(max_requests=1))
    a = e.get("10.0.0.1:80")
    assert a.requests.try_acquire()
    assert e.get("10.0.0.2:80").requests.try_acquire()   # independent
    assert not e.get("10.0.0.1:80").requests.try_acquire()
    e.retain(["10.0.0.2:80"])
    assert len(e) == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5), st.lists(st.sampled_from(["acq", "rel", "grow", "shrink"]),
                                   max_size=60))
def test_try_acquire_matches_a_counting_model(limit, ops) -> None:
    """Against a trivial model (held count, limit): admits iff held < limit."""
    lim = Limiter(limit, name="m")
    held = 0
    for op in ops:
        if op == "acq":
            ok = lim.try_acquire()
            assert ok == (held < lim.limit)
            held += ok
        elif op == "rel" and held:
            lim.release()
            held -= 1
        elif op == "grow":
            lim.limit = lim.limit + 1
        elif op == "shrink" and lim.limit:
            lim.limit = lim.limit - 1
        assert lim.in_use == held
