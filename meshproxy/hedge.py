"""Hedged requests: after a delay with no answer, ask a second endpoint; first answer wins.

"The Tail at Scale" (Dean and Barroso): a few slow replicas dominate the p99; sending a
second copy of a still-unanswered request after about the p95 latency cuts the tail for
a few percent of extra load. Only idempotent methods are hedged (two endpoints will
both act on the request), and every hedge takes budget from the route's
:class:`~meshproxy.retry.RetryBudget`, so hedges and retries together stay within one
bounded share of traffic.

- :class:`HedgeConfig` (frozen, per route): fixed delay or the first endpoint's observed
  p95, with a floor and a fallback while too few samples are known; at most
  ``max_hedges`` extra attempts.
- :class:`LatencyWindow`: recent latencies of one endpoint on a controllable clock.
- :class:`HedgePolicy`: the runtime decisions (``allows``, ``delay_for``) and the
  per-endpoint windows (``observe``).
- :func:`run_hedged`: the hedging loop for attempts written as coroutines. The engine's
  callback-based request path can drive the same policy and budget itself; this
  function is the reference for that state machine and what the tests exercise.

Latencies of attempts cancelled because another won are not observed (they are only
known to be "longer than the winner"), so the p95 leans low under heavy hedging; the
``min_delay_s`` floor bounds the extra load that could cause.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Literal, TypeVar

from msgspec import Meta

from meshproxy.endpoint import Endpoint
from meshproxy.retry import RetryBudget, is_idempotent
from meshproxy.schema import Frozen

T = TypeVar("T")


class HedgeConfig(Frozen, kw_only=True):
    """A route's hedging settings (present only on routes that ask for hedging)."""

    # "fixed": hedge after delay_s; "p95": after the first endpoint's observed p95.
    delay: Literal["fixed", "p95"] = "p95"
    # Seconds: the fixed delay, and the p95 mode's delay until min_samples are known.
    # 50 ms is above a healthy in-cluster p95 and well under any human-visible wait.
    delay_s: Annotated[float, Meta(gt=0.0, le=60.0)] = 0.050
    # Seconds: never hedge sooner, whatever the p95 says; bounds the extra load when
    # the p95 is tiny or biased low.
    min_delay_s: Annotated[float, Meta(ge=0.0, le=60.0)] = 0.005
    # Extra attempts per request; 1 gets most of the tail benefit (Dean and Barroso).
    max_hedges: Annotated[int, Meta(ge=1, le=3)] = 1
    # Samples needed before the p95 is trusted: 20 gives a p95 from at least one sample
    # above it.
    min_samples: Annotated[int, Meta(ge=1, le=100_000)] = 20
    # Latency window: the last window_samples observations no older than window_s.
    window_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 30.0
    window_samples: Annotated[int, Meta(ge=1, le=100_000)] = 500


class LatencyWindow:
    """Recent latencies: at most ``max_samples``, none older than ``span_s``."""

    __slots__ = ("_clock", "_samples", "_span")

    def __init__(self, *, span_s: float, max_samples: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._span = span_s
        self._clock = clock

    def observe(self, latency_s: float) -> None:
        self._samples.append((self._clock(), latency_s))

    def _expire(self) -> None:
        oldest = self._clock() - self._span
        samples = self._samples
        while samples and samples[0][0] < oldest:
            samples.popleft()

    def __len__(self) -> int:
        self._expire()
        return len(self._samples)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1, nearest rank) of the window; None if empty."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {q}")
        self._expire()
        if not self._samples:
            return None
        ordered = sorted(lat for _, lat in self._samples)
        rank = min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1
        return ordered[rank]


class HedgePolicy:
    """Hedging decisions for one route, with the latency windows of its endpoints."""

    def __init__(self, config: HedgeConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._windows: dict[Endpoint, LatencyWindow] = {}

    def allows(self, method: str | bytes, hedges_sent: int) -> bool:
        """Whether a request with ``method`` that already sent ``hedges_sent`` hedges
        may send another (the budget is asked separately)."""
        return is_idempotent(method) and hedges_sent < self.config.max_hedges

    def observe(self, endpoint: Endpoint, latency_s: float) -> None:
        window = self._windows.get(endpoint)
        if window is None:
            window = self._windows[endpoint] = LatencyWindow(
                span_s=self.config.window_s, max_samples=self.config.window_samples,
                clock=self._clock)
        window.observe(latency_s)

    def forget(self, keep: Sequence[Endpoint]) -> None:
        """Drop the windows of endpoints no longer in the cluster."""
        alive = set(keep)
        self._windows = {e: w for e, w in self._windows.items() if e in alive}

    def delay_for(self, endpoint: Endpoint) -> float:
        """Seconds to wait for ``endpoint``'s answer before hedging."""
        cfg = self.config
        if cfg.delay == "fixed":
            return cfg.delay_s
        window = self._windows.get(endpoint)
        if window is None or len(window) < cfg.min_samples:
            return max(cfg.delay_s, cfg.min_delay_s)
        p95 = window.percentile(0.95)
        assert p95 is not None
        return max(p95, cfg.min_delay_s)


async def run_hedged(send: Callable[[Endpoint], Awaitable[T]],
                     pick: Callable[[Sequence[Endpoint]], Endpoint | None], *,
                     policy: HedgePolicy, budget: RetryBudget, method: str | bytes,
                     succeeded: Callable[[T], bool] = lambda _: True,
                     clock: Callable[[], float] = time.monotonic) -> tuple[T, Endpoint]:
    """Send to ``pick(())``; while unanswered after the hedge delay, and while policy
    and budget allow, send to ``pick(tried)`` too. Returns the first result for which
    ``succeeded`` holds and its endpoint; the losers are cancelled. When none succeeds,
    returns the first unsuccessful result, or raises the first exception if every
    attempt raised. ``LookupError`` when there is no endpoint at all.

    Each attempt is counted with ``budget.attempt_started()``; bracketing the request
    with ``budget.request_started()``/``request_finished()`` is the caller's (the
    retry layer's) job, once per request however many attempts it makes.
    """
    first = pick(())
    if first is None:
        raise LookupError("no endpoint to send the request to")
    loop = asyncio.get_running_loop()
    attempts: dict[asyncio.Future[T], tuple[Endpoint, bool, float]] = {}

    def launch(ep: Endpoint, is_hedge: bool) -> None:
        budget.attempt_started()
        attempts[asyncio.ensure_future(send(ep), loop=loop)] = (ep, is_hedge, clock())

    tried = [first]
    launch(first, False)
    hedging = True
    # The hedge timer runs from the latest launch; an answer that does not end the
    # request (a failure while others are out) does not restart it.
    hedge_at = loop.time() + policy.delay_for(first)
    fallback: tuple[T, Endpoint] | None = None
    error: BaseException | None = None
    try:
        while attempts:
            hedging = hedging and policy.allows(method, len(tried) - 1)
            wait_s = max(0.0, hedge_at - loop.time()) if hedging else None
            done, _ = await asyncio.wait(attempts, timeout=wait_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:  # the hedge timer fired with every attempt still out
                ep = pick(tried)
                if ep is None or ep in tried or not budget.try_acquire_retry("hedge"):
                    hedging = False  # nowhere new to go, or no budget: just wait
                    continue
                tried.append(ep)
                launch(ep, True)
                hedge_at = loop.time() + policy.delay_for(ep)
                continue
            for fut in done:
                ep, is_hedge, started = attempts.pop(fut)
                if is_hedge:
                    budget.release_retry()
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                    continue
                policy.observe(ep, clock() - started)
                result = fut.result()
                if succeeded(result):
                    return result, ep
                fallback = fallback or (result, ep)
        if fallback is not None:
            return fallback
        assert error is not None
        raise error
    finally:
        for fut, (_, is_hedge, _) in attempts.items():
            fut.cancel()
            if is_hedge:
                budget.release_retry()
        if attempts:
            await asyncio.gather(*attempts, return_exceptions=True)
