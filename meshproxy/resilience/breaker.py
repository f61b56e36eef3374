"""Circuit breakers per cluster and per endpoint, on pybreaker, read as a gate.

A breaker stops sending traffic to something that keeps failing, then lets a bounded
number of trial requests through after a reset timeout and closes again when they
succeed. pybreaker lives here and nowhere else; it is driven, not wrapped around calls:

- The request layer asks :meth:`Breaker.allow` (a branch on a cached state string, plus
  the timeout check when open) and later reports the classified outcome with
  :meth:`Breaker.record`. The outcome is fed to pybreaker through its ``calling()``
  context manager (a failure is raised inside it), so pybreaker's own state machine counts
  consecutive failures, trips, re-opens on a failed trial and closes on a trial success.
  Successful trials are counted here up to ``success_threshold`` and only the last is
  fed to pybreaker (its own ``success_threshold`` exists only from pybreaker 1.4 on,
  and this keeps the module working with every version the project's range allows).
- Two pybreaker features are *not* used, on purpose. Its open-to-half-open timer compares
  ``datetime.now()`` (wall clock) with its ``opened_at``: a wall clock jumps, and a test
  would have to sleep. So no outcome is ever fed while open; :meth:`allow` checks the
  reset timeout against our injected monotonic clock and moves pybreaker to half-open
  through its state API (``half_open()``). Its async helper needs Tornado; ``calling()``
  is synchronous and cheap, so we use that. Tests therefore drive time with a manual
  clock and never sleep.
- pybreaker counts only consecutive failures. The failure-ratio rule (ratio over at
  least ``minimum_calls`` in a rolling ``window``) is computed here with a
  :class:`~.window.RollingWindow` and trips pybreaker through ``open()``.
- pybreaker admits every call in half-open; the bound on concurrent trials
  (``half_open_trials``) is ours, which is why :meth:`allow` returns a token (an int:
  0 refused, 1 normal pass, 2 and up a trial of one half-open episode) that the caller
  hands back to :meth:`record`. A trial token from an earlier episode (the breaker
  re-opened and half-opened again meanwhile) is stale and ignored, so slow trials of a
  past episode can never let more than ``half_open_trials`` into the current one.

Every transition (a pybreaker listener) updates the cached state, counts a transition for
the metrics layer and records an explainable event. Outcomes of requests admitted before a
trip that finish after it are ignored: they say nothing about the state now.

Neighbours: :mod:`.outlier` ejects single endpoints of a cluster (a softer tool);
:mod:`.concurrency` bounds load; the rescue layer maps a refusal to 503 ``circuit_open``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import pybreaker
from msgspec import Meta

from meshproxy.resilience.events import Clock, EventLog
from meshproxy.resilience.window import RollingWindow
from meshproxy.schema import Frozen

BreakerState = Literal["closed", "open", "half_open"]
REASON = "circuit_open"
"""The ``x-mesh-reason`` of a request refused by an open breaker (503)."""
STATE_VALUE: dict[str, int] = {"closed": 0, "open": 1, "half_open": 2}
"""Values for the ``state`` gauge (0 closed, 1 open, 2 half-open)."""

_FROM_PYBREAKER: dict[str, BreakerState] = {
    pybreaker.STATE_CLOSED: "closed", pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open"}


class BreakerConfig(Frozen, kw_only=True):
    """When a breaker trips and how it recovers. At least one trip rule must be set."""

    consecutive_failures: Annotated[int, Meta(ge=1)] | None = 5
    """Trip after this many failures in a row (None: rule off). 5, as Envoy's consecutive
    5xx default: few enough to react within a second at modest rates."""
    failure_ratio: Annotated[float, Meta(gt=0, le=1)] | None = None
    """Trip when this share of calls in ``window`` failed (None: rule off)."""
    minimum_calls: Annotated[int, Meta(ge=1)] = 20
    """Calls the window must hold before ``failure_ratio`` is judged: a ratio over three
    calls is noise."""
    window: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    """Seconds of history for ``failure_ratio`` (10 s, resilience4j/Hystrix-like)."""
    reset_timeout: Annotated[float, Meta(gt=0, le=86400)] = 30.0
    """Seconds open before trial requests go through (pybreaker's ``reset_timeout``)."""
    half_open_trials: Annotated[int, Meta(ge=1, le=10000)] = 1
    """Trial requests in flight at once while half-open; others are refused."""
    success_threshold: Annotated[int, Meta(ge=1, le=10000)] = 1
    """Successful trials needed to close."""

    def __post_init__(self) -> None:
        if self.consecutive_failures is None and self.failure_ratio is None:
            raise ValueError("breaker needs consecutive_failures or failure_ratio (or both)")


class Admission(enum.IntEnum):
    """The kinds of token :meth:`Breaker.allow` returns (see :func:`admission_kind`)."""

    REFUSED = 0
    PASS = 1    # normal request while closed
    TRIAL = 2   # one of the bounded half-open trials (tokens 2, 3, ...: one per episode)


_PASS, _TRIAL = int(Admission.PASS), int(Admission.TRIAL)  # plain ints: cheaper compares


def admission_kind(token: int) -> Admission:
    return Admission(min(token, Admission.TRIAL))


@dataclass(frozen=True, slots=True)
class BreakerStats:
    name: str
    state: BreakerState
    state_value: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    trials_in_flight: int
    rejected_total: int
    transitions: dict[tuple[str, str], int]


class _Failure(Exception):
    """Raised inside ``pybreaker.calling()`` to report a failed outcome."""


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self.owner = owner

    def state_change(self, cb, old_state, new_state) -> None:  # type: ignore[no-untyped-def]
        old = _FROM_PYBREAKER[old_state.name] if old_state is not None else "closed"
        self.owner._on_transition(old, _FROM_PYBREAKER[new_state.name])


_NO_CONSECUTIVE = 2**62  # pybreaker always counts; "rule off" is an unreachable fail_max


class Breaker:
    """One circuit breaker (a cluster's, or one endpoint's). Not a limiter: it never
    queues, it answers at once."""

    def __init__(self, name: str, config: BreakerConfig, *, clock: Clock,
                 events: EventLog | None = None) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._events = events
        #: The breaker's state (a plain attribute: the fused fast path reads it inline).
        self.state: BreakerState = "closed"
        self._opened_at = 0.0
        self._trials = 0
        self._episode = 0                # half-open episodes so far: trial tokens name one
        self._trial_successes = 0        # in the current half-open episode
        self._reason = ""
        #: pybreaker may hold a failure count (a failure was fed since the last success):
        #: a success then has to be fed to reset it. Mirrors ``_cb.fail_counter != 0``
        #: without the property calls on every successful request.
        self._fail_pending = False
        #: True when a successful outcome of a ``PASS`` admission changes nothing
        #: (closed, no failure pending, no failure-ratio window to count): callers on
        #: the hot path may then skip :meth:`record` for it. Kept by ``_refresh_quiet``.
        self.quiet = config.failure_ratio is None
        self.rejected_total = 0
        self.transitions: dict[tuple[str, str], int] = {}
        self._window = RollingWindow(config.window)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.consecutive_failures or _NO_CONSECUTIVE,
            reset_timeout=config.reset_timeout,
            listeners=[_Listener(self)], name=name)

    # -- the gate -------------------------------------------------------------------
    def _refresh_quiet(self) -> None:
        self.quiet = (self.state == "closed" and not self._fail_pending
                      and self.config.failure_ratio is None)

    def allow(self, now: float) -> int:
        """May a request go through now? A token, falsy when refused. O(1); hand the
        token to :meth:`record` (or :meth:`cancel`) when the request ends."""
        state = self.state
        if state == "closed":
            return _PASS
        if state == "open":
            if now < self._opened_at + self.config.reset_timeout:
                self.rejected_total += 1
                return Admission.REFUSED
            self._reason = f"reset timeout {self.config.reset_timeout:g} s elapsed"
            self._cb.half_open()          # pybreaker's state API; our listener follows
        if self._trials < self.config.half_open_trials:
            self._trials += 1
            return _TRIAL + self._episode
        self.rejected_total += 1
        return Admission.REFUSED

    def _current_trial(self, token: int) -> bool:
        return token == _TRIAL + self._episode and self.state == "half_open"

    def record(self, admission: int, ok: bool, now: float) -> None:
        """The classified outcome of a request ``allow`` admitted (ok: not a failure as
        the route defines failure; the caller classifies, e.g. 5xx and resets fail)."""
        if admission >= _TRIAL:
            if self._current_trial(admission):
                self._trials -= 1
                if ok:
                    self._trial_successes += 1
                    if self._trial_successes < self.config.success_threshold:
                        return
                self._feed(ok)
            return                       # a trial of an earlier episode: stale
        if admission != _PASS or self.state != "closed":
            return                       # refused, or admitted before a trip: stale
        ratio = self.config.failure_ratio
        if ratio is not None:
            self._window.record(now, not ok)
        if ok and not self._fail_pending:
            return                       # fast path: nothing for pybreaker to reset
        self._feed(ok)
        if not ok and ratio is not None and self.state == "closed":
            calls, failures, _ = self._window.totals(now)
            if calls >= self.config.minimum_calls and failures >= ratio * calls:
                self._reason = (f"failure ratio {failures / calls:.0%} over {calls} calls in "
                                f"{self.config.window:g} s (threshold {ratio:.0%})")
                self._cb.open()

    def cancel(self, admission: int) -> None:
        """A request admitted by :meth:`allow` ended without an outcome (cancelled by the
        client): frees its trial slot, judges nothing."""
        if admission >= _TRIAL and self._current_trial(admission):
            self._trials -= 1

    def _feed(self, ok: bool) -> None:
        self._fail_pending = not ok
        try:
            with self._cb.calling():
                if not ok:
                    raise _Failure
        except (_Failure, pybreaker.CircuitBreakerError):
            pass
        self._refresh_quiet()

    # -- manual control (admin API) ---------------------------------------------------
    def force_open(self, reason: str = "forced open") -> None:
        self._reason = reason
        self._cb.open()

    def force_close(self, reason: str = "forced closed") -> None:
        self._reason = reason
        self._cb.close()

    def reconfigure(self, config: BreakerConfig) -> bool:
        """Apply a reloaded config in place, keeping state (an open breaker stays open)."""
        self._cb.fail_max = config.consecutive_failures or _NO_CONSECUTIVE
        self._cb.reset_timeout = config.reset_timeout
        if config.window != self.config.window:
            self._window = RollingWindow(config.window)
        self.config = config
        self._refresh_quiet()
        return True

    # -- transitions and stats -------------------------------------------------------
    def _on_transition(self, old: BreakerState, new: BreakerState) -> None:
        now = self._clock()
        if new == "closed":              # pybreaker's closed state starts a fresh count
            self._fail_pending = False
            self._refresh_quiet()
        if old == new:                   # e.g. forced open while open: restart the timer
            if new == "open":
                self._opened_at = now
            self._reason = ""
            return
        if new == "open":
            self._opened_at = now
            if not self._reason:
                self._reason = (f"{self._cb.fail_counter} consecutive failures"
                                if old == "closed" else "trial request failed")
        self.state = new
        self._refresh_quiet()
        self._trials = self._trial_successes = 0
        if new == "half_open":
            self._episode += 1
        if new != "half_open":
            self._window.reset()
        key = (old, new)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        reason, self._reason = self._reason or "trial requests succeeded", ""
        if self._events is not None:
            level = logging.WARNING if new == "open" else logging.INFO
            self._events.record(
                f"breaker.{new}", self.name, f"circuit {old} -> {new}: {reason}",
                level=level, state=STATE_VALUE[new],
                consecutive_failures=self._cb.fail_counter,
                reset_timeout_s=self.config.reset_timeout)

    def statistics(self) -> BreakerStats:
        calls, failures, _ = self._window.totals(self._clock())
        return BreakerStats(self.name, self.state, STATE_VALUE[self.state],
                            self._cb.fail_counter, calls, failures, self._trials,
                            self.rejected_total, dict(self.transitions))

    def __repr__(self) -> str:
        return (f"<Breaker {self.name} {self.state} failures={self._cb.fail_counter} "
                f"trials={self._trials}/{self.config.half_open_trials} "
                f"rejected={self.rejected_total}>")


class BreakerGroup:
    """Per-endpoint breakers of one cluster, all on one config, made on first use.

    ``retain`` drops breakers of endpoints that left the cluster; endpoints that stay
    keep their breaker (and its state) through endpoint updates and reloads.
    """

    def __init__(self, cluster: str, config: BreakerConfig, *, clock: Clock,
                 events: EventLog | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self._clock = clock
        self._events = events
        self._by_key: dict[str, Breaker] = {}

    def get(self, address: str) -> Breaker:
        b = self._by_key.get(address)
        if b is None:
            b = self._by_key[address] = Breaker(f"{self.cluster}/{address}", self.config,
                                                clock=self._clock, events=self._events)
        return b

    def retain(self, addresses: Iterable[str]) -> None:
        keep = set(addresses)
        for addr in [a for a in self._by_key if a not in keep]:
            del self._by_key[addr]

    def reconfigure(self, config: BreakerConfig) -> bool:
        """Apply a reloaded config to every endpoint's breaker (each keeps its state)."""
        for b in self._by_key.values():
            b.reconfigure(config)
        self.config = config
        return True

    def statistics(self) -> list[BreakerStats]:
        return [b.statistics() for b in self._by_key.values()]

    def __len__(self) -> int:
        return len(self._by_key)

    def __repr__(self) -> str:
        open_ = sum(1 for b in self._by_key.values() if b.state != "closed")
        return f"<BreakerGroup {self.cluster} {len(self._by_key)} endpoints, {open_} not closed>"
