"""Clocks for the client machinery: the event loop's, and one a test moves by hand.

The work queue's back-off timers and the informer's resync read time only through a
:class:`Clock`, so tests drive them with :class:`ManualClock` instead of sleeping real
seconds (house style: time-dependent logic runs on a controllable clock).

A clock offers two things: ``now()`` (monotonic seconds) and ``call_later(delay, fn)``,
which returns a handle with ``cancel()``. Timers are callbacks, not tasks, so nothing is
left pending when a queue shuts down. ``sleep()`` is built on ``call_later`` for loops
that want to wait (the informer's resync loop).

Neighbours: :mod:`control.client.workqueue` (delayed adds, back-off),
:mod:`control.client.informer` (resync period).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and one-shot timers."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    """The running event loop's monotonic clock and timers (the production clock)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when :meth:`advance` is called; timers fire in due order.

    Not a double of anything: it is the controllable clock that the queue and informer
    accept in place of :class:`LoopClock`. Timers whose time has come fire synchronously
    inside ``advance``, earliest first, with ``now()`` set to their due time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer due on the way."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = target

    def pending_timers(self) -> int:
        """How many timers are scheduled and not cancelled (for tests and debugging)."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)


async def sleep(clock: Clock, seconds: float) -> None:
    """Wait ``seconds`` on ``clock`` (real time on :class:`LoopClock`)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    handle = clock.call_later(seconds, wake)
    try:
        await fut
    finally:
        handle.cancel()
