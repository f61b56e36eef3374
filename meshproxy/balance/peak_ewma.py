"""Peak-EWMA, Linkerd's default load balancer (tower's ``PeakEwma`` with P2C).

Each endpoint carries a latency estimate. An observed latency *above* the estimate
replaces it at once (the "peak": a slowing endpoint is noticed on its first slow
answer); one below it is blended in with an exponential moving average whose weight
depends on the time since the last update, ``decay = exp(-elapsed / decay_s)``. Between
observations the estimate also decays towards zero, so an endpoint that was avoided
after a bad spell is eventually tried again instead of being starved forever.

The cost of an endpoint is ``estimate * (active_requests + 1) / weight``: latency times
the queue it would join, scaled down by weight. A pick samples two distinct candidates
(power of two choices) and takes the cheaper.

Two priors, as the issue asks ("penalty for new endpoints and failures"):

- a new endpoint starts at ``default_rtt_s`` (Linkerd: 30 ms) rather than zero, so it is
  not flooded before anything is known about it;
- a failed attempt counts as at least ``failure_penalty_s``: connection refusals are
  fast, and without a penalty a dead endpoint would look like the fastest one.

Time comes from ``clock`` (default ``time.monotonic``; pass the event loop's ``time``
in the engine, a fake clock in tests) for both picks and observations, so decay never
mixes two time bases.
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from meshproxy.balance.base import DEFAULT_PANIC_THRESHOLD, EndpointPool, PickContext
from meshproxy.endpoint import Endpoint


@dataclass(slots=True)
class _Estimate:
    rtt: float      # seconds
    updated: float  # clock time of the last update or decay


class PeakEwma:
    """Latency-aware P2C: cost = decayed peak-EWMA latency * (active + 1) / weight."""

    #: ``observe`` feeds the latency estimates: the cluster calls it after every attempt.
    learns = True

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
                 decay_s: float = 10.0, default_rtt_s: float = 0.030,
                 failure_penalty_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 rng: _random.Random | None = None) -> None:
        for name, value in (("decay_s", decay_s), ("default_rtt_s", default_rtt_s)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if failure_penalty_s < 0:
            raise ValueError(f"failure_penalty_s must be >= 0 seconds, got {failure_penalty_s!r}")
        self._pool = EndpointPool(endpoints, panic_threshold=panic_threshold)
        self._decay = float(decay_s)
        self._default_rtt = float(default_rtt_s)
        self._penalty = float(failure_penalty_s)
        self._clock = clock
        self._rng = rng or _random.Random()
        self._estimates: dict[Endpoint, _Estimate] = {}
        self.update(self._pool.endpoints)

    @property
    def panic_total(self) -> int:
        return self._pool.panic_total

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._pool.replace(endpoints)
        now = self._clock()
        old = self._estimates
        self._estimates = {e: old.get(e) or _Estimate(self._default_rtt, now)
                           for e in self._pool.endpoints}

    def estimate(self, endpoint: Endpoint) -> float:
        """The decayed latency estimate of ``endpoint`` now, in seconds (for /clusters)."""
        est = self._estimates.get(endpoint)
        if est is None:
            return self._default_rtt
        return self._decayed(est, self._clock())

    def cost(self, endpoint: Endpoint) -> float:
        return self.estimate(endpoint) * (endpoint.active_requests + 1) / endpoint.weight

    def _decayed(self, est: _Estimate, now: float) -> float:
        elapsed = now - est.updated
        if elapsed > 0:
            est.rtt *= math.exp(-elapsed / self._decay)
            est.updated = now
        return est.rtt

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self._pool.candidates(ctx.now, exclude)
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)  # random order also breaks cost ties
        return a if self.cost(a) <= self.cost(b) else b

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        est = self._estimates.get(endpoint)
        if est is None:
            return  # removed by an update while the attempt was in flight
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency!r}")
        if not ok:
            latency = max(latency, self._penalty)
        now = self._clock()
        if latency > est.rtt:
            est.rtt = latency
        else:
            decay = math.exp(-max(now - est.updated, 0.0) / self._decay)
            est.rtt = est.rtt * decay + latency * (1.0 - decay)
        est.updated = now

    def __repr__(self) -> str:
        costs = [(e.address, round(self.estimate(e) * 1000, 3)) for e in self._pool.endpoints]
        return f"<PeakEwma {costs} ms>"
