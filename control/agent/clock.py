"""Clocks for the agent's time-dependent logic (probe periods, restart back-off).

Everything that waits or measures time takes a :class:`Clock`, so tests drive probes
and back-off with :class:`ManualClock` instead of sleeping real seconds. Only
``monotonic`` time is used for decisions; ``wall`` is for timestamps shown to users.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds; only differences mean anything."""

    def wall(self) -> datetime:
        """The current wall-clock time (for status timestamps)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to (``advance``); sleepers wake as it passes them.

    Not a mock of anything: it is the clock the agent runs on in tests, and in a
    simulation where time is driven by the caller.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._epoch = datetime(2026, 1, 1, tzinfo=UTC).timestamp() - start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self._epoch + self._now, UTC)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, fut))
        try:
            await fut
        finally:
            self._sleepers = [(t, f) for t, f in self._sleepers if f is not fut]

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting for the clock to move (tests wait for this)."""
        return sum(1 for _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds})")
        self._now += seconds
        for deadline, fut in self._sleepers:
            if deadline <= self._now and not fut.done():
                fut.set_result(None)
