"""A rate-limited work queue of keys, as client-go's ``workqueue`` (sample-controller).

Event handlers only ``add`` keys (``"namespace/name"``); workers ``get`` a key,
reconcile it and call ``done``. The queue guarantees:

- **dedup**: a key added many times before a worker takes it is handed out once;
- **one worker per key**: a key being processed is never handed to a second worker; if
  it is added meanwhile it is marked dirty and queued again when the first calls
  ``done`` (so the change is not lost, and two workers never race on one object);
- **back-off**: ``add_rate_limited`` re-adds a failed key after its rate limiter's delay
  (exponential per key by default); ``forget`` clears the history after a success;
- **delayed adds**: ``add_after(key, seconds)``; the earliest pending time wins;
- **shutdown**: ``shut_down`` makes every ``get`` raise :class:`QueueShutDown` and drops
  keys not yet handed out (the next start relists and resyncs, level-triggered);
  ``shut_down_with_drain`` also waits until keys already handed out are ``done``.

Single event loop, not thread-safe. Timers are clock callbacks (no background task),
driven by a :class:`~control.client.clock.Clock` so tests control time.

Neighbours: :mod:`control.client.ratelimit` (delays), :mod:`control.client.workers`
(the worker loop that calls reconcile), :mod:`control.client.informer` (feeds keys).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from control.client.clock import Clock, LoopClock, TimerHandle
from control.client.ratelimit import RateLimiter, default_controller_limiter

K = TypeVar("K", bound=Hashable)


class QueueShutDown(Exception):
    """``get`` on a queue that is shutting down."""


class WorkQueue(Generic[K]):
    """Deduplicating, rate-limited queue of keys with one worker per key at a time."""

    def __init__(self, *, rate_limiter: RateLimiter | None = None, clock: Clock | None = None,
                 name: str = "") -> None:
        self.name = name
        self._clock = clock or LoopClock()
        self._limiter = rate_limiter or default_controller_limiter(self._clock)
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: dict[K, tuple[float, TimerHandle]] = {}
        self._getters: list[asyncio.Future[None]] = []
        self._drained: asyncio.Event | None = None
        self._shutting_down = False

    # -- producers -------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Queue ``key`` unless it is already queued; if it is being processed, queue it
        again once its worker calls :meth:`done`. Ignored after shutdown."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._wake()

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds. If it is already waiting, the earlier of
        the two times is kept."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._clock.now() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        handle = self._clock.call_later(delay, lambda: self._fire(key))
        self._waiting[key] = (due, handle)

    def add_rate_limited(self, key: K) -> None:
        """Re-queue ``key`` after the delay its rate limiter gives (one more failure)."""
        self.add_after(key, self._limiter.when(key))

    def forget(self, key: K) -> None:
        """``key`` was processed successfully: reset its back-off history."""
        self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        """Failures on record for ``key`` since the last :meth:`forget`."""
        return self._limiter.failures(key)

    # -- consumers -------------------------------------------------------------------

    async def get(self) -> K:
        """The next key to process; it stays "processing" until :meth:`done`.

        Raises :class:`QueueShutDown` once the queue is shutting down.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            if self._queue:
                key = self._queue.popleft()
                self._processing.add(key)
                self._dirty.discard(key)
                return key
            fut: asyncio.Future[None] = loop.create_future()
            self._getters.append(fut)
            try:
                await fut
            finally:
                if fut in self._getters:
                    self._getters.remove(fut)

    def done(self, key: K) -> None:
        """The worker finished ``key``; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._wake()
        if self._drained is not None and not self._processing:
            self._drained.set()

    # -- lifecycle -------------------------------------------------------------------

    def shut_down(self) -> None:
        """Stop now: every ``get`` raises :class:`QueueShutDown`; queued and waiting keys
        are dropped; keys being processed may still call :meth:`done`."""
        self._shutting_down = True
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        self._queue.clear()
        self._dirty.clear()
        self._wake()

    async def shut_down_with_drain(self) -> None:
        """:meth:`shut_down`, then wait until every key handed out is :meth:`done`."""
        self.shut_down()
        if self._processing:
            self._drained = asyncio.Event()
            await self._drained.wait()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Keys ready to be handed out (not counting those waiting or processing)."""
        return len(self._queue)

    def waiting(self) -> int:
        """Keys scheduled for a later add (back-off or ``add_after``)."""
        return len(self._waiting)

    def processing(self) -> frozenset[K]:
        return frozenset(self._processing)

    def __repr__(self) -> str:
        return (f"<WorkQueue {self.name!r} queued={len(self._queue)} "
                f"processing={len(self._processing)} waiting={len(self._waiting)}"
                f"{' shut down' if self._shutting_down else ''}>")

    # -- internals -------------------------------------------------------------------

    def _fire(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def _wake(self) -> None:
        # Wake every idle getter: each re-checks the queue, so a getter cancelled after
        # being woken can never strand a key (there are only a handful of workers).
        for fut in self._getters:
            if not fut.done():
                fut.set_result(None)
