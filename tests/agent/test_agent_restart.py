"""Restart policy and crash-loop back-off on a ManualClock."""

from __future__ import annotations

import pytest

from control.agent.clock import ManualClock
from control.agent.restart import BackOff, should_restart


@pytest.mark.parametrize(("policy", "code", "restart"), [
    ("Always", 0, True), ("Always", 1, True),
    ("OnFailure", 0, False), ("OnFailure", 137, True),
    ("Never", 0, False), ("Never", 2, False),
])
def test_restart_policy_table(policy, code, restart):
    """Always restarts every exit, OnFailure only non-zero ones, Never none."""
    assert should_restart(policy, code) is restart


def test_back_off_doubles_from_ten_seconds_and_caps_at_five_minutes():
    """First restart immediate; then 10, 20, 40, 80, 160 s, then 300 s for ever after."""
    clock = ManualClock()
    b = BackOff(clock)
    waits = []
    for _ in range(8):
        finished = clock.now()  # the container exits right after it started
        wait = b.remaining("pod/c", finished_at=finished)
        waits.append(wait)
        clock.advance(wait)
        assert b.remaining("pod/c", finished_at=finished) == 0
        b.next("pod/c")
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300]


def test_back_off_counts_from_the_exit_not_from_the_restart():
    """A container that ran 7 s after a restart armed with 10 s waits only the 3 s left."""
    clock = ManualClock()
    b = BackOff(clock)
    b.next("k")  # first restart, arms 10 s
    clock.advance(7)
    assert b.remaining("k", finished_at=clock.now() - 7) == pytest.approx(3)


def test_back_off_forgets_a_key_after_a_long_healthy_run():
    """After reset_after seconds without a restart the next crash starts again at 10 s."""
    clock = ManualClock()
    b = BackOff(clock, reset_after=600)
    for _ in range(4):
        b.next("k")
    assert b.delay("k") == 80
    clock.advance(600 + 80)
    assert b.delay("k") == 0
    assert b.next("k") == 10


def test_back_off_keys_are_independent_and_bad_bounds_are_refused():
    """One crashing container does not slow another; initial > cap is a ValueError."""
    clock = ManualClock()
    b = BackOff(clock)
    b.next("a")
    b.next("a")
    assert b.delay("a") == 20
    assert b.delay("b") == 0
    with pytest.raises(ValueError, match="initial"):
        BackOff(clock, initial=400, cap=300)


async def test_manual_clock_wakes_sleepers_only_when_advanced_past_them():
    """ManualClock.sleep returns once advance() has moved time past its deadline."""
    import asyncio
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    clock.advance(4)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1)
    await asyncio.wait_for(task, 1)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
