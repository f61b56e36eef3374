"""Load shedding by route priority under overload, with event-loop lag as a signal.

When a proxy is overloaded something must be refused, and it should not be the checkout
request. Every route has a :data:`Priority`; the shedder refuses the lowest first, on two
signals:

- **concurrency**: requests in flight against a capacity, which is the adaptive limit
  (:class:`~.adaptive.GradientLimit`) when configured, else ``max_requests``. Each
  priority may fill only its ``share`` of the capacity (best effort 50%, low 70%, normal
  85%, high 95%, critical 100% by default), so as load rises best-effort requests are
  refused first, and critical ones only at the full limit.
- **event-loop lag**: how late a periodic timer fires (:class:`LoopLagMonitor`). Lag is
  the proxy's own CPU saturation, which no upstream limit sees. At ``lag_threshold_ms``
  best-effort is shed; at 2x low, at 4x normal, at 8x high; critical never for lag.

Refusals are a reason constant for the response (503 with ``x-mesh-reason``), never an
exception. Each time a priority starts being shed (at most once per ``event_interval``)
an explainable event says why, with the numbers. ``mode: shadow`` counts would-be sheds
and admits.

Neighbours: :mod:`.adaptive` (capacity), :mod:`.concurrency` (hard per-cluster limits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from meshproxy.resilience.adaptive import AdaptiveConfig, GradientLimit
from meshproxy.resilience.events import Clock, EventLog
from meshproxy.schema import Frozen, field_error

Priority = Literal["critical", "high", "normal", "low", "best_effort"]
PRIORITIES: tuple[Priority, ...] = ("critical", "high", "normal", "low", "best_effort")
RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
"""0 is the most important; routes store the rank so the request path indexes a tuple."""

SHED_CONCURRENCY = "overload_concurrency"
SHED_LOOP_LAG = "overload_loop_lag"

_LAG_MULTIPLE = (float("inf"), 8.0, 4.0, 2.0, 1.0)  # by rank: lag/threshold that sheds it


class SheddingConfig(Frozen, kw_only=True):
    mode: Literal["enforce", "shadow"] = "enforce"
    max_requests: Annotated[int, Meta(ge=1)] = 1024
    """Capacity when ``adaptive`` is not set: requests in flight through this proxy."""
    adaptive: AdaptiveConfig | None = None
    """Learn the capacity from latency instead (see adaptive.py). Here only its limit is
    used; enforcement follows this config's ``mode``, not the adaptive config's."""
    shares: dict[Priority, float] = msgspec.field(default_factory=lambda: {
        "critical": 1.0, "high": 0.95, "normal": 0.85, "low": 0.7, "best_effort": 0.5})
    """Share of capacity each priority may fill. Gaps between them are what keeps room
    for the more important ones."""
    lag_threshold_ms: Annotated[float, Meta(gt=0)] | None = 50.0
    """Event-loop lag at which best-effort requests are shed (None: lag not used). 50 ms
    is far above a healthy loop's lag (well under 1 ms) yet shorter than a user notices."""
    lag_interval: Annotated[float, Meta(gt=0, le=10)] = 0.1
    """Seconds between lag measurements."""
    event_interval: Annotated[float, Meta(ge=0)] = 10.0
    """At most one "now shedding" event per priority per this many seconds."""

    def __post_init__(self) -> None:
        v = self.shares
        missing = [p for p in PRIORITIES if p not in v]
        if missing:
            raise field_error("shares", f"shares needs every priority; missing {missing}")
        for p, s in v.items():
            if not 0 < s <= 1:
                raise field_error("shares", f"share of {p!r} must be in (0, 1], got {s}")
        ranked = [v[p] for p in PRIORITIES]
        if ranked != sorted(ranked, reverse=True):
            raise field_error("shares", "shares must not grow as priority falls "
                              "(critical >= high >= normal >= low >= best_effort)")


class LoopLagMonitor:
    """Measures how late the event loop runs a timer: the loop's own saturation.

    A timer set for ``interval`` seconds later; the lateness when it fires is one sample.
    :attr:`lag` rises to a new sample at once and halves towards lower ones on each
    sample, so a stall is seen immediately and forgotten within a few intervals.
    """

    def __init__(self, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = interval
        self.lag = 0.0
        self.max_lag = 0.0
        self.samples = 0
        self._handle: asyncio.TimerHandle | None = None

    def feed(self, lateness: float) -> None:
        lateness = max(0.0, lateness)
        self.samples += 1
        self.lag = lateness if lateness >= self.lag else (self.lag + lateness) / 2
        self.max_lag = max(self.max_lag, lateness)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stop()

        def fire(expected: float) -> None:
            now = loop.time()
            self.feed(now - expected)
            self._handle = loop.call_later(self.interval, fire, now + self.interval)

        self._handle = loop.call_later(self.interval, fire, loop.time() + self.interval)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass(frozen=True, slots=True)
class SheddingStats:
    in_flight: int
    capacity: int
    lag_ms: float
    shed_total: dict[str, int]
    shadow_shed_total: dict[str, int]


class LoadShedder:
    """Admission by priority for one proxy (or one listener). Not a per-cluster limit:
    it protects this process and its upstreams as a whole."""

    def __init__(self, config: SheddingConfig, *, clock: Clock,
                 lag: Callable[[], float] = lambda: 0.0,
                 events: EventLog | None = None) -> None:
        self.config = config
        self._clock = clock
        self._lag = lag
        self._events = events
        self.adaptive = (GradientLimit("shedding", config.adaptive, now=clock(),
                                       events=events) if config.adaptive else None)
        self._shares = tuple(config.shares[p] for p in PRIORITIES)
        self._lag_thr = (config.lag_threshold_ms / 1000.0
                         if config.lag_threshold_ms is not None else None)
        self.in_flight = 0
        self._shed = [0] * len(PRIORITIES)
        self._shadow = [0] * len(PRIORITIES)
        self._last_event = [float("-inf")] * len(PRIORITIES)

    @property
    def capacity(self) -> int:
        return self.adaptive.limit if self.adaptive is not None else self.config.max_requests

    def admit(self, rank: int) -> str | None:
        """None: admitted (call :meth:`done` when it ends). Otherwise the reason constant
        for the 503. ``rank`` is ``RANK[priority]``."""
        reason = None
        thr = self._lag_thr
        if thr is not None and rank:
            lag = self._lag()
            if lag >= thr * _LAG_MULTIPLE[rank]:
                reason = SHED_LOOP_LAG
        if reason is None and self.in_flight >= self.capacity * self._shares[rank]:
            reason = SHED_CONCURRENCY
        if reason is not None:
            if self.config.mode == "enforce":
                self._shed[rank] += 1
                self._explain(rank, reason)
                return reason
            self._shadow[rank] += 1
            self._explain(rank, reason)
        self.in_flight += 1
        return None

    def done(self, rtt: float | None, now: float) -> None:
        """An admitted request ended; ``rtt`` (seconds) for a success feeds the adaptive
        limit, None for a failure or cancellation."""
        if self.in_flight > 0:
            self.in_flight -= 1
        if rtt is not None and self.adaptive is not None:
            self.adaptive.sample(rtt, now)

    def _explain(self, rank: int, reason: str) -> None:
        now = self._clock()
        if self._events is None or now - self._last_event[rank] < self.config.event_interval:
            return
        self._last_event[rank] = now
        pr = PRIORITIES[rank]
        shadow = " (shadow mode: admitted)" if self.config.mode == "shadow" else ""
        if reason == SHED_LOOP_LAG:
            lag_ms = self._lag() * 1000
            msg = (f"shedding {pr} requests: event-loop lag {lag_ms:.0f} ms (threshold "
                   f"{self.config.lag_threshold_ms:g} ms x{_LAG_MULTIPLE[rank]:g}){shadow}")
            self._events.record("shed.start", pr, msg, lag_ms=lag_ms, rank=rank)
        else:
            cap = self.capacity
            msg = (f"shedding {pr} requests: {self.in_flight} in flight of capacity {cap} "
                   f"({pr} may use {self._shares[rank]:.0%}){shadow}")
            self._events.record("shed.start", pr, msg, in_flight=self.in_flight,
                                capacity=cap, share=self._shares[rank], rank=rank)

    def reconfigure(self, config: SheddingConfig) -> bool:
        """Keep in-flight counts and the learned adaptive limit across a reload."""
        if (config.adaptive is None) != (self.adaptive is None):
            return False
        if self.adaptive is not None and config.adaptive is not None:
            self.adaptive.reconfigure(config.adaptive)
        self.config = config
        self._shares = tuple(config.shares[p] for p in PRIORITIES)
        self._lag_thr = (config.lag_threshold_ms / 1000.0
                         if config.lag_threshold_ms is not None else None)
        return True

    def statistics(self) -> SheddingStats:
        return SheddingStats(self.in_flight, self.capacity, self._lag() * 1000,
                             dict(zip(PRIORITIES, self._shed, strict=True)),
                             dict(zip(PRIORITIES, self._shadow, strict=True)))

    def __repr__(self) -> str:
        return (f"<LoadShedder {self.in_flight}/{self.capacity} in flight, "
                f"lag {self._lag() * 1000:.1f} ms, {self.config.mode}>")
