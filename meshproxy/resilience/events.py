"""Explainable events: a bounded ring of structured records of every resilience decision.

When a breaker opens, an endpoint is ejected, a switch trips or load is shed, an operator's
first question is *why*. Each such decision is recorded here once, as an :class:`Event`
with its numbers (``p50_ms=480, cluster_p50_ms=12, requests=200``) and a sentence built
from them, so the admin API's ``/events`` can serve the recent history, the log carries
the same sentence, and the metrics layer exports :meth:`EventLog.counts` as a counter by
kind. The ring is bounded (old events fall off) so a flapping breaker cannot grow memory.

Events are rare by design (state changes, not requests), so recording one may allocate and
log; nothing on the per-request path records an event unless a state changes.

Neighbours: every other module of :mod:`meshproxy.resilience` takes an ``EventLog``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("meshproxy.events")

Clock = Callable[[], float]
"""Monotonic seconds, as ``loop.time()``; every state machine here takes one so tests can
drive time by hand."""


@dataclass(frozen=True, slots=True)
class Event:
    """One decision: when (wall clock, for humans), what kind, about whom, the numbers
    behind it and a sentence saying it. Not a log line: the numbers stay structured."""

    seq: int
    time: float
    kind: str             # dotted: "breaker.open", "outlier.eject", "switch.trip", ...
    subject: str          # what it is about: a cluster, an endpoint address, a switch name
    message: str
    numbers: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind,
                "subject": self.subject, "message": self.message,
                "numbers": dict(self.numbers)}


class EventLog:
    """A bounded ring of :class:`Event`, with per-kind counts that never wrap.

    ``capacity`` bounds memory; ``counts()`` keeps counting after old events fall off, so
    a counter exported from it is monotonic. ``wall`` is the clock stamped on events (wall
    time, because people read it), separate from the monotonic clocks the state machines
    use.
    """

    def __init__(self, capacity: int = 1024, *, wall: Clock = time.time,
                 logger: logging.Logger = log) -> None:
        if capacity < 1:
            raise ValueError(f"EventLog capacity must be >= 1, got {capacity}")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._counts: dict[str, int] = {}
        self._seq = itertools.count(1)
        self._wall = wall
        self._log = logger

    @property
    def capacity(self) -> int:
        return self._ring.maxlen or 0

    def record(self, kind: str, subject: str, message: str, *,
               level: int = logging.INFO, **numbers: float) -> Event:
        """Store, log and count one event; returns it."""
        event = Event(next(self._seq), self._wall(), kind, subject, message, numbers)
        self._ring.append(event)
        self._counts[kind] = self._counts.get(kind, 0) + 1
        self._log.log(level, "%s %s: %s", kind, subject, message,
                      extra={"event_kind": kind, "event_subject": subject,
                             "event_numbers": numbers})
        return event

    def recent(self, limit: int | None = None, *, kind: str | None = None,
               since_seq: int = 0) -> list[Event]:
        """Newest last. ``kind`` matches exactly or as a prefix ending in a dot
        (``"breaker."`` selects every breaker event); ``since_seq`` skips events already
        seen, so a poller can ask only for what is new."""
        out = [e for e in self._ring
               if e.seq > since_seq and (kind is None or e.kind == kind
                                          or (kind.endswith(".") and e.kind.startswith(kind)))]
        return out[-limit:] if limit else out

    def counts(self) -> dict[str, int]:
        """Events recorded by kind since start (monotonic, for a Prometheus counter)."""
        return dict(self._counts)

    def __iter__(self) -> Iterator[Event]:
        return iter(tuple(self._ring))

    def __len__(self) -> int:
        return len(self._ring)

    def __repr__(self) -> str:
        return f"<EventLog {len(self._ring)}/{self.capacity} events, kinds={self._counts}>"
