"""Route timeouts of the fused fast path without a timer per request.

A request on the fused path (:meth:`meshproxy.layers.forward.Forward.try_direct`) must
be cancelled when its route timeout passes. A loop timer per request (``call_at`` and
``cancel``) cost several microseconds of the few tens a keep-alive request costs the
proxy, for a timer that almost never fires. A :class:`TimeoutWheel` instead files each
request in a queue per timeout length (a route's timeout is the same for all its
requests, so a queue's deadlines arrive in order) and keeps one loop timer, for the
earliest deadline at the queues' fronts. Filing is a dict insert, removal a dict
delete (a dict keeps insertion order and deletes in O(1)); only requests in flight are
held. A timeout fires at its deadline or up to :data:`SLACK` later (deadlines that
close together are handled in one run of the timer, and a request dispatched after
a later one of the same length may wait for it).

The queues are live dicts that stay once made (one per timeout length in use), so the
hottest caller, the plain lane (:mod:`meshproxy.http.lane`), keeps its route's queue
and files without a call: ``queue[item] = when``, then ``arm(when)`` only when
``when < timer_at``; it removes with ``queue.pop(item, None)``. :meth:`add` returns the
queue it filed into for the same kind of removal.

What is filed is anything with a ``cancel()`` method (the fused path files the
:class:`~meshproxy.http.upstream.UpstreamConnection` carrying the request; its
``cancel`` fails the exchange with ``route_timeout``). Neighbours: the downstream
protocol (:mod:`meshproxy.http.server`) files and removes; the listener
(:mod:`meshproxy.listener`) owns one wheel and closes it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final, Protocol

#: Seconds a timeout may fire late: the timer handles every deadline this close.
SLACK: Final = 0.005


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class TimeoutWheel:
    """Deadlines (loop-clock seconds) of many things, each cancelled when it passes."""

    __slots__ = ("_loop", "_queues", "_timer", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # timeout length -> {item: deadline}, in filing order
        self._queues: dict[float, dict[Cancellable, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        #: When the timer fires (inf: no timer). Read-only outside this class.
        self.timer_at = math.inf

    def queue(self, length: float) -> dict[Cancellable, float]:
        """The live queue of ``length`` (made on first use, kept after)."""
        queue = self._queues.get(length)
        if queue is None:
            queue = self._queues[length] = {}
        return queue

    def add(self, when: float, item: Cancellable, *,
            length: float) -> dict[Cancellable, float] | None:
        """File ``item`` to be cancelled at ``when`` (``length``: the timeout it comes
        from, the queue it joins); the queue filed into, for ``queue.pop(item, None)``.
        An infinite deadline files nothing (None)."""
        if when == math.inf:
            return None
        queue = self._queues.get(length)
        if queue is None:
            queue = self._queues[length] = {}
        queue[item] = when
        if when < self.timer_at:
            self.arm(when)
        return queue

    def discard(self, item: Cancellable, *, length: float) -> None:
        """Remove ``item`` (nothing happens if it is not filed)."""
        queue = self._queues.get(length)
        if queue is not None:
            queue.pop(item, None)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Forget everything and stop the timer (the owner is going away)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.timer_at = math.inf
        for queue in self._queues.values():
            queue.clear()  # a queue still held by a lane files into nothing that fires
        self._queues.clear()

    def arm(self, when: float) -> None:
        """Make the timer fire at ``when`` (call only when ``when < timer_at``)."""
        if self._timer is not None:
            self._timer.cancel()
        self.timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.timer_at = math.inf
        due_by = self._loop.time() + SLACK
        due: list[Cancellable] = []
        nxt = math.inf
        for queue in self._queues.values():
            while queue:
                item = next(iter(queue))
                when = queue[item]
                if when > due_by:
                    nxt = min(nxt, when)
                    break
                del queue[item]
                due.append(item)
        if nxt != math.inf:
            self.arm(nxt)
        for item in due:
            item.cancel()
