"""Route timeouts of the fused fast path without a timer per request.

A request on the fused path (:meth:`meshproxy.layers.forward.Forward.try_direct`) must
be cancelled when its route timeout passes. A loop timer per request (``call_at`` and
``cancel``) cost about 3 µs of the 75 µs a keep-alive request costs the proxy,
for a timer that almost never fires. A :class:`TimeoutWheel` instead files each
request under its deadline rounded up to :data:`RESOLUTION` (a "bucket": a set of the
things to cancel) and keeps one loop timer for the earliest bucket. Adding and
removing are a set insert and a set discard; a timeout fires between its deadline and
one resolution step later.

What is filed is anything with a ``cancel()`` method (the fused path files the
:class:`~meshproxy.http.upstream.UpstreamConnection` carrying the request; its
``cancel`` fails the exchange with ``route_timeout``). Neighbours: the downstream
protocol (:mod:`meshproxy.http.server`) files and removes; the listener
(:mod:`meshproxy.listener`) owns one wheel and closes it.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol

#: Seconds per bucket: how late a timeout may fire, and how often the wheel's timer
#: runs while something is filed.
RESOLUTION = 0.005


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class TimeoutWheel:
    """Deadlines (loop-clock seconds) of many things, each cancelled when it passes."""

    __slots__ = ("_buckets", "_keys", "_loop", "_timer", "_timer_key")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, set[Cancellable]] = {}
        self._keys: list[int] = []     # heap of the bucket keys in _buckets
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key = 0            # the bucket the timer is armed for

    def add(self, when: float, item: Cancellable) -> int:
        """File ``item`` to be cancelled at ``when``; returns the key for :meth:`discard`."""
        key = math.ceil(when / RESOLUTION) if when != math.inf else -1
        if key < 0:
            return key  # no deadline: nothing to file
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._keys, key)
            if self._timer is None or key < self._timer_key:
                self._arm(key)
        bucket.add(item)
        return key

    def discard(self, key: int, item: Cancellable) -> None:
        """Remove ``item`` filed under ``key`` (nothing happens if it is not there)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(item)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def close(self) -> None:
        """Forget everything and stop the timer (the owner is going away)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._keys.clear()

    def _arm(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_key = key
        self._timer = self._loop.call_at(key * RESOLUTION, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # The bucket the timer was armed for is due even if the clock reads a hair
        # earlier (timers are rounded to milliseconds).
        now_key = max(math.floor(self._loop.time() / RESOLUTION), self._timer_key)
        keys = self._keys
        due: list[Cancellable] = []
        while keys and keys[0] <= now_key:
            bucket = self._buckets.pop(heapq.heappop(keys), None)
            if bucket:
                due.extend(bucket)
        # Empty buckets (everything in them finished in time) need no timer of their own.
        while keys and not self._buckets.get(keys[0]):
            self._buckets.pop(heapq.heappop(keys), None)
        if keys:
            self._arm(keys[0])
        for item in due:
            item.cancel()
