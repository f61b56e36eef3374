"""How long a work-queue key waits before its next try: per-key back-off, overall rate.

client-go's rate limiters, in Python. A :class:`RateLimiter` answers ``when(key)`` (the
delay before ``key`` may be retried, recording one more failure), ``forget(key)`` (the
key succeeded: reset its history) and ``failures(key)``.

- :class:`ExponentialBackoff`: ``base * 2**failures`` capped at ``max_delay``, per key, so
  one broken object backs off without slowing the others.
- :class:`TokenBucket`: an overall budget of retries per second with a burst, so a
  thousand keys failing at once cannot hammer the API server.
- :class:`MaxOf`: the longest delay any of its limiters asks for (client-go's default
  controller limiter is ``MaxOf(ExponentialBackoff, TokenBucket)``).

Used by :mod:`control.client.workqueue`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from control.client.clock import Clock, LoopClock


class RateLimiter(Protocol):
    def when(self, key: Hashable) -> float:
        """Record a failure of ``key``; return the seconds to wait before retrying it."""

    def forget(self, key: Hashable) -> None:
        """``key`` succeeded: clear its failure history."""

    def failures(self, key: Hashable) -> int:
        """How many failures of ``key`` are on record."""


class ExponentialBackoff:
    """Per-key exponential back-off: ``base``, ``2*base``, ``4*base`` ... up to ``max_delay``.

    Defaults: 5 ms first retry (a conflict usually clears at once) and 120 s ceiling (long
    enough to stop a broken object from spinning, short enough that a fixed one is picked
    up without waiting for a resync).
    """

    def __init__(self, base: float = 0.005, max_delay: float = 120.0) -> None:
        if base <= 0 or max_delay < base:
            raise ValueError(f"need 0 < base <= max_delay, got base={base} max={max_delay}")
        self.base = base
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}

    def when(self, key: Hashable) -> float:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        if n >= 64:  # 2**64 * base overflows any sensible cap; skip the float math
            return self.max_delay
        return min(self.base * (2 ** n), self.max_delay)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def __repr__(self) -> str:
        return (f"ExponentialBackoff(base={self.base}, max_delay={self.max_delay}, "
                f"keys_failing={len(self._failures)})")


class TokenBucket:
    """An overall retry budget: ``qps`` tokens per second, at most ``burst`` saved up.

    Each ``when`` reserves the next token and returns how long until it is available, so
    retries beyond the budget are spread out instead of refused. Keys are not tracked.
    """

    def __init__(self, qps: float = 10.0, burst: int = 100, *, clock: Clock | None = None) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"need qps > 0 and burst >= 1, got qps={qps} burst={burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock or LoopClock()
        self._tokens = float(burst)
        self._last: float | None = None

    def when(self, key: Hashable) -> float:
        now = self._clock.now()
        if self._last is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0  # may go negative: that is the reservation queue
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: Hashable) -> None:
        pass

    def failures(self, key: Hashable) -> int:
        return 0

    def __repr__(self) -> str:
        return f"TokenBucket(qps={self.qps}, burst={self.burst}, tokens={self._tokens:.1f})"


class MaxOf:
    """The longest delay any of ``limiters`` asks for; forget/failures go to all of them."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOf needs at least one rate limiter")
        self.limiters = limiters

    def when(self, key: Hashable) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def failures(self, key: Hashable) -> int:
        return max(limiter.failures(key) for limiter in self.limiters)


def default_controller_limiter(clock: Clock | None = None) -> RateLimiter:
    """Per-key back-off (5 ms .. 120 s) combined with 10 retries/s overall, burst 100."""
    return MaxOf(ExponentialBackoff(), TokenBucket(10.0, 100, clock=clock))
