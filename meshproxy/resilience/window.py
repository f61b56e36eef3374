"""A rolling count of outcomes over a time window, in fixed buckets: O(1) per record.

Breakers (failure ratio), degradation switches (error and slow-call ratios) and the
admin views all ask the same question: "of the calls in the last ``window`` seconds, how
many failed and how many were slow?". Keeping every call would allocate per request;
instead the window is cut into ``buckets`` slots of ``window / buckets`` seconds, each
holding three integers, and a slot is cleared when time comes back round to it. The answer
is therefore exact to within one bucket's width (the window slides in steps), which is the
usual trade (Hystrix, resilience4j's time-based sliding window).

Neighbours: :mod:`.breaker` and :mod:`.degrade` own one each.
"""

from __future__ import annotations

import math


class RollingWindow:
    """Counts of (calls, failures, slow calls) over the last ``window`` seconds.

    Time comes in as an argument (monotonic seconds) so the owner's clock is the only
    clock. Time going backwards (never with a monotonic clock) is treated as "now".
    """

    __slots__ = ("_calls", "_epoch", "_failures", "_slow", "_width", "buckets", "window")

    def __init__(self, window: float, buckets: int = 10) -> None:
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets!r}")
        self.window = float(window)
        self.buckets = buckets
        self._width = self.window / buckets
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets
        self._epoch = [-1] * buckets   # which bucket number each slot currently holds

    def record(self, now: float, failed: bool, *, slow: bool = False) -> None:
        # the slot is found inline: this runs once per request for every breaker and
        # switch window
        n = int(now // self._width)
        i = n % self.buckets
        if self._epoch[i] != n:
            self._epoch[i] = n
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._calls[i] += 1
        if failed:
            self._failures[i] += 1
        if slow:
            self._slow[i] += 1

    def totals(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow) in the window ending at ``now``."""
        n = int(now // self._width)
        oldest = n - self.buckets + 1
        calls = failures = slow = 0
        for i in range(self.buckets):
            if oldest <= self._epoch[i] <= n:
                calls += self._calls[i]
                failures += self._failures[i]
                slow += self._slow[i]
        return calls, failures, slow

    def reset(self) -> None:
        for i in range(self.buckets):
            self._epoch[i] = -1
            self._calls[i] = self._failures[i] = self._slow[i] = 0

    def __repr__(self) -> str:
        return f"<RollingWindow {self.window:g}s/{self.buckets} buckets>"
