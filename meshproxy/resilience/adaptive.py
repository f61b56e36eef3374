"""Adaptive concurrency: a limit that follows the upstream's latency (Envoy's adaptive
concurrency filter, the gradient controller; Netflix concurrency-limits' gradient).

No static ``max_requests`` is right for long: the right number of requests in flight is
what the upstream serves without queueing, and queueing shows up as latency above its
unloaded round-trip time. So:

- **min RTT**: every ``min_rtt_interval`` (with jitter, so proxies do not measure in
  step) the limit is pinned to ``min_concurrency`` until ``min_rtt_requests`` samples are
  in; their ``percentile`` is the new min RTT, the latency with no queue.
- **sample RTT**: every ``update_interval`` the ``percentile`` of the samples since the
  last update.
- **gradient** = clamp((min_rtt + buffer) / sample_rtt, 0.5, 2.0) with
  ``buffer = min_rtt_buffer * min_rtt``: above 1 while latency is near the minimum (room
  to grow), below 1 when requests queue;
  **new limit** = gradient x limit, plus headroom sqrt(new limit) so the limit keeps
  probing upward, clamped to [min_concurrency, max_concurrency].

Recomputation runs when a response is reported and an interval is due: the request path
pays for one comparison; the sort of at most ``max_samples`` RTTs happens once per
interval. ``mode: shadow`` computes everything and counts what it would refuse, but admits.

Neighbours: :mod:`.shedding` uses :attr:`GradientLimit.limit` as its capacity and sheds
low priorities first; :mod:`.concurrency` holds the static limits.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta

from meshproxy.resilience.events import EventLog
from meshproxy.schema import Frozen


class AdaptiveConfig(Frozen, kw_only=True):
    """The gradient controller. Defaults follow Envoy's documented example."""

    mode: Literal["enforce", "shadow"] = "enforce"
    update_interval: Annotated[float, Meta(gt=0, le=60)] = 0.1
    """Seconds between limit updates (Envoy's example: 100 ms)."""
    percentile: Annotated[float, Meta(gt=0, le=100)] = 50.0
    """Latency percentile of a window used as its RTT (Envoy default: 50)."""
    min_rtt_interval: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    """Seconds between min-RTT measurements (Envoy's example: 60 s)."""
    min_rtt_jitter: Annotated[float, Meta(ge=0, le=1)] = 0.15
    """Random extra share of the interval, so proxies do not all pin at once."""
    min_rtt_requests: Annotated[int, Meta(ge=1, le=100_000)] = 50
    """Samples taken at pinned concurrency for a min-RTT measurement (Envoy: 50)."""
    min_rtt_buffer: Annotated[float, Meta(ge=0, le=10)] = 0.25
    """Latency above min RTT still considered "no queue", as a share of it (Envoy: 25%)."""
    min_concurrency: Annotated[int, Meta(ge=1)] = 3
    """Limit while measuring min RTT, and the floor (Envoy: 3)."""
    max_concurrency: Annotated[int, Meta(ge=1)] = 1000
    """Ceiling of the limit (Envoy's max_concurrency_limit: 1000)."""
    max_samples: Annotated[int, Meta(ge=10, le=1_000_000)] = 1000
    """RTTs kept per window (a ring): bounds memory and the per-interval sort."""

    def __post_init__(self) -> None:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(f"min_concurrency {self.min_concurrency} exceeds "
                             f"max_concurrency {self.max_concurrency}")


@dataclass(frozen=True, slots=True)
class AdaptiveStats:
    name: str
    limit: int
    in_flight: int
    min_rtt: float
    sample_rtt: float
    measuring_min_rtt: bool
    refused_total: int
    shadow_refused_total: int


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list (sorts a copy)."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


class GradientLimit:
    """A concurrency limit that adapts to latency. Counts its own requests in flight
    when used as a limiter (``try_acquire``/``release``); :mod:`.shedding` uses only
    :meth:`sample` and :attr:`limit`."""

    def __init__(self, name: str, config: AdaptiveConfig, *, now: float,
                 events: EventLog | None = None, rng: random.Random | None = None) -> None:
        self.name = name
        self.config = config
        self._events = events
        self._rng = rng or random.Random()
        self._limit = float(config.min_concurrency)
        self._peak = config.min_concurrency     # highest limit since the last decrease event
        self.min_rtt = 0.0
        self.sample_rtt = 0.0
        self._samples: list[float] = []
        self._n = 0
        self._measuring = True                  # start by learning the min RTT
        self._next_update = now + config.update_interval
        self._next_min_rtt = math.inf
        self.in_flight = 0
        self.refused_total = 0
        self.shadow_refused_total = 0

    @property
    def limit(self) -> int:
        if self._measuring:
            return self.config.min_concurrency
        return int(self._limit)

    @property
    def measuring_min_rtt(self) -> bool:
        return self._measuring

    # -- as a limiter -------------------------------------------------------------------
    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            if self.config.mode == "enforce":
                self.refused_total += 1
                return False
            self.shadow_refused_total += 1
        self.in_flight += 1
        return True

    def release(self, rtt: float | None, now: float) -> None:
        """A request ended; ``rtt`` in seconds for a success, None for a failure or a
        cancellation (not a latency sample)."""
        if self.in_flight > 0:
            self.in_flight -= 1
        if rtt is not None:
            self.sample(rtt, now)

    # -- learning ---------------------------------------------------------------------
    def sample(self, rtt: float, now: float) -> None:
        cfg = self.config
        n = self._n
        if n < cfg.max_samples:
            self._samples.append(rtt)
        else:
            self._samples[n % cfg.max_samples] = rtt
        self._n = n + 1
        if self._measuring:
            if self._n >= cfg.min_rtt_requests:
                self._finish_min_rtt(now)
        elif now >= self._next_min_rtt:       # before updates, which are due more often
            self._start_min_rtt(now)
        elif now >= self._next_update:
            self._update(now)

    def _take_window(self) -> float:
        rtt = percentile(self._samples, self.config.percentile)
        self._samples.clear()
        self._n = 0
        return rtt

    def _finish_min_rtt(self, now: float) -> None:
        cfg = self.config
        self.min_rtt = self._take_window()
        self._measuring = False
        self._limit = float(max(self._limit, cfg.min_concurrency))
        self._next_update = now + cfg.update_interval
        self._next_min_rtt = now + cfg.min_rtt_interval * (
            1 + cfg.min_rtt_jitter * self._rng.random())
        if self._events is not None:
            self._events.record("adaptive.min_rtt", self.name,
                                f"min RTT {self.min_rtt * 1000:.1f} ms measured at "
                                f"concurrency {cfg.min_concurrency}; limit {self.limit}",
                                min_rtt_ms=self.min_rtt * 1000, limit=self.limit)

    def _start_min_rtt(self, now: float) -> None:
        self._measuring = True
        self._samples.clear()
        self._n = 0

    def _update(self, now: float) -> None:
        cfg = self.config
        self.sample_rtt = rtt = self._take_window()
        self._next_update = now + cfg.update_interval
        if rtt <= 0:
            return
        gradient = min(2.0, max(0.5, self.min_rtt * (1 + cfg.min_rtt_buffer) / rtt))
        desired = gradient * self._limit
        new = desired + math.sqrt(desired)
        self._limit = min(float(cfg.max_concurrency), max(float(cfg.min_concurrency), new))
        limit = self.limit
        if limit > self._peak:
            self._peak = limit
        elif limit <= self._peak // 2:        # one event per halving, not one per window
            if self._events is not None:
                self._events.record(
                    "adaptive.decrease", self.name,
                    f"limit {self._peak} -> {limit}: sample RTT {rtt * 1000:.1f} ms vs "
                    f"min RTT {self.min_rtt * 1000:.1f} ms (gradient {gradient:.2f})",
                    old_limit=self._peak, limit=limit, sample_rtt_ms=rtt * 1000,
                    min_rtt_ms=self.min_rtt * 1000, gradient=gradient)
            self._peak = limit

    def reconfigure(self, config: AdaptiveConfig) -> bool:
        """Apply new bounds and intervals, keeping the learned min RTT and limit."""
        self.config = config
        self._limit = min(float(config.max_concurrency),
                          max(float(config.min_concurrency), self._limit))
        return True

    def statistics(self) -> AdaptiveStats:
        return AdaptiveStats(self.name, self.limit, self.in_flight, self.min_rtt,
                             self.sample_rtt, self._measuring, self.refused_total,
                             self.shadow_refused_total)

    def __repr__(self) -> str:
        phase = "measuring min RTT" if self._measuring else f"min RTT {self.min_rtt * 1e3:.1f} ms"
        return (f"<GradientLimit {self.name} {self.in_flight}/{self.limit} in flight, "
                f"{phase}, {self.config.mode}>")
