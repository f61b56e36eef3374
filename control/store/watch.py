"""In-process watch fan-out shared by the store backends.

One :class:`WatchHub` per store receives every committed change once (``publish``) and
hands it to each registered :class:`Watch` whose prefix matches. Nobody polls per
watcher: a backend publishes after each commit (SQLite) or after each blocking query
(Consul), and 500 watchers cost one prefix test per event each.

Every published event has a *position*: a number that grows with each event. For
SQLite it is the revision itself; for Consul, where several deletes seen in one
blocking query share one revision, it is the store's own event counter. A watch that
starts from an old revision first replays history through the backend's ``history``
callable (the SQLite event log, Consul's bounded in-memory ring), then follows live
events. The ordering problem (an event published while history is being read) is solved
by registering first and de-duplicating by position: every live event buffered before a
history read begins is also in that history, so the buffer is cleared before each
history page and events at or below the last delivered position are skipped
afterwards.

A watcher that stops reading cannot grow memory without bound: past ``buffer_limit``
buffered events it is marked as overflowed, its buffer is dropped, and on its next read
it catches up from history like a new watch (or gets :class:`~control.store.base.Compacted`
when that history is gone, which the API server reports as 410 Gone).

Neighbours: ``sqlite.py`` and ``consul.py`` own a hub each; ``base.py`` defines
:class:`~control.store.base.Event`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

from control.store.base import Event

#: ``history(prefix, after_position, after_revision, limit)``: ``(position, event)`` pairs
#: under ``prefix`` in order, after ``after_position`` when it is not None, else with
#: revision > ``after_revision``; at most ``limit``; raises Compacted when that history is
#: incomplete.
HistoryReader = Callable[[str, int | None, int, int], Awaitable[list[tuple[int, Event]]]]

HISTORY_PAGE = 1000


class WatchHub:
    """The single notifier of one store: registered watches and the last published
    revision."""

    def __init__(self, history: HistoryReader, *, buffer_limit: int = 10_000) -> None:
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {buffer_limit}")
        self._history = history
        self.buffer_limit = buffer_limit
        self._watches: set[Watch] = set()
        #: revision of the newest event published (or known current at start-up)
        self.last_revision = 0
        #: position of the newest event published
        self.last_position = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._watches)

    def publish(self, events: list[tuple[int, Event]], revision: int | None = None) -> None:
        """Deliver committed ``(position, event)`` pairs (in order) to matching watches;
        must run on the watches' event loop. ``revision`` advances ``last_revision`` when
        the commit's newest revision is not the last event's (it never is lower)."""
        if events:
            self.last_position = max(self.last_position, events[-1][0])
            self.last_revision = max(self.last_revision, events[-1][1].revision)
        if revision is not None:
            self.last_revision = max(self.last_revision, revision)
        if not events:
            return
        for w in self._watches:
            w._offer(events)

    def watch(self, prefix: str, from_revision: int) -> Watch:
        """Register a watch now (so "from now" means from this call)."""
        if from_revision < 0:
            raise ValueError(f"from_revision must be >= 0, got {from_revision}")
        w = Watch(self, prefix, from_revision)
        if not self.closed:
            self._watches.add(w)
        return w

    def _remove(self, w: Watch) -> None:
        self._watches.discard(w)

    def close(self) -> None:
        """End every watch: their iterators stop after the events already delivered."""
        self.closed = True
        for w in list(self._watches):
            w._end()
        self._watches.clear()


class Watch:
    """An async iterator of :class:`Event` for one prefix; see :class:`WatchHub`.

    Use ``async with`` or ``aclose()`` to unregister promptly; iteration raises
    :class:`~control.store.base.Compacted` when the requested history is gone.
    """

    def __init__(self, hub: WatchHub, prefix: str, from_revision: int) -> None:
        self._hub = hub
        self.prefix = prefix
        self._wakeup = asyncio.Event()
        self._buffer: deque[tuple[int, Event]] = deque()
        self._ready: deque[tuple[int, Event]] = deque()
        self._overflowed = False
        self._closed = hub.closed
        self._from_revision = from_revision if from_revision else hub.last_revision
        #: position of the last event handed out; None until the first history read
        #: has turned from_revision into a position
        self._position: int | None = None if from_revision else hub.last_position
        self._catch_up = bool(from_revision)
        self._last = self._from_revision

    @property
    def last_revision(self) -> int:
        """The revision of the last event handed out (or the start revision)."""
        return self._last

    def _offer(self, events: list[tuple[int, Event]]) -> None:
        if self._overflowed:
            return
        prefix = self.prefix
        matched = [pe for pe in events if pe[1].kv.key.startswith(prefix)]
        if not matched:
            return
        if len(self._buffer) + len(matched) > self._hub.buffer_limit:
            # Too slow a reader: drop the buffer and re-read from history later.
            self._overflowed = True
            self._buffer.clear()
        else:
            self._buffer.extend(matched)
        self._wakeup.set()

    def _end(self) -> None:
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._ready:
                self._position, event = self._ready.popleft()
                self._last = event.revision
                return event
            if self._closed:
                raise StopAsyncIteration
            if self._overflowed:
                self._overflowed = False
                self._catch_up = True
            if self._catch_up:
                await self._read_history_page()
                continue
            while self._buffer:
                position, event = self._buffer.popleft()
                if self._position is not None and position <= self._position:
                    continue
                if event.revision <= self._from_revision:
                    continue  # committed before the watch's start, not yet seen by history
                self._position = position
                self._last = event.revision
                return event
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _read_history_page(self) -> None:
        # Everything buffered so far was committed before this read starts, so the
        # read returns it too: drop it to keep revision order.
        self._buffer.clear()
        published = self._hub.last_position
        page = await self._hub._history(self.prefix, self._position, self._from_revision,
                                        HISTORY_PAGE)
        if self._closed:
            return
        self._catch_up = len(page) >= HISTORY_PAGE
        if self._position is None and not page:
            # Nothing after from_revision was committed when the read began, so every
            # event published by then is behind us; later ones come live.
            self._position = published
        self._ready.extend(page)

    async def aclose(self) -> None:
        """Stop the watch and unregister it."""
        self._closed = True
        self._ready.clear()
        self._buffer.clear()
        self._hub._remove(self)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
