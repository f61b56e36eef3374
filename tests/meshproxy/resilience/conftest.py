"""Shared fixtures for the resilience tests: a hand-driven clock and an event log."""

from __future__ import annotations

import pytest

from meshproxy.resilience.events import EventLog


class ManualClock:
    """Monotonic seconds that move only when a test says so (no real sleeps)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def events() -> EventLog:
    return EventLog(capacity=256, wall=lambda: 1_700_000_000.0)
