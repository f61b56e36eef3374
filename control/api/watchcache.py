"""The API server's watch cache: one store watch, decoded once, fanned out to clients.

The store already fans changes out without polling (``control/store/watch.py``), but
every watcher there would decode each event's JSON and encode it again for its client:
500 watchers of 1,000 updates would be half a million decodes. Like kube-apiserver's
watch cache, :class:`WatchCache` holds ONE store watch on ``/registry/``, decodes each
event once, keeps the recent ones in a ring (so a client resuming from a recent
``resourceVersion`` is served from memory) and hands them to each
:class:`Subscription` whose prefix and selectors match; the wire line of an event is
encoded once and shared by every client that receives it. Selectors see the object
before and after a change, so an object that stops matching is sent as DELETED and one
that starts matching as ADDED, as Kubernetes does.

Writing is where the CPU goes with many watchers (a TLS record and a loopback send per
client per write), so the cache writes as few times as it can: subscriptions that are
caught up and have no selector share one feed per prefix (each event's line appended
once, each batch framed once, then one write per client), everything pending for a
client goes out in one write per flush, and flushes are spaced by their own cost (see
``WatchCache._flush``): the busier the server, the larger the batches. Batching changes
how events are grouped into writes, never their order or count; a bookmark never
carries a revision whose event is still waiting to be written.

A resume from a revision older than the ring falls back to a direct store watch (which
replays the store's history or raises ``Compacted``: 410 for the client). A subscriber
that falls more than ``max_pending`` events behind is ended with a 410 ERROR event, so
its informer re-lists instead of the server buffering without bound. Listeners
(``add_listener``) see every event; the garbage collector is one.

Neighbours: ``watch.py`` streams a subscription to an HTTP client; ``gc.py`` listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from control.api.storage import with_version_bytes
from control.store import Compacted, Event, Store

log = logging.getLogger(__name__)

ROOT = "/registry/"
#: a fan-out pass is followed by at least this many times its own duration without one
FLUSH_SPACING = 3.0
#: but never by more than this (seconds)
MAX_FLUSH_DELAY = 0.020


class CachedEvent:
    """One store change, decoded once for its dispatch; ``line(type)`` is its encoded
    watch event.

    Once dispatched, :meth:`release` drops the decoded object (it is decoded again on
    the rare later use, a selector watch replaying the ring). The ring keeps 20,000
    events; decoded, some 25 dicts and lists per Pod, hundreds of thousands of objects
    the cyclic garbage collector walks on every full collection, and with them full
    collections stopped the event loop for 50-200 ms (38 of them in one benchmark run)
    while watchers waited.
    Kept as bytes, the ring costs the collector nothing."""

    __slots__ = ("_lines", "_obj", "_prev", "_prev_raw", "_raw", "key", "revision", "type")

    def __init__(self, event: Event) -> None:
        self.type = event.type
        self.key = event.kv.key
        self.revision = event.revision
        self._raw = event.kv.value
        self._obj: dict[str, Any] | None = self._decode()
        self._prev_raw = event.prev_kv.value if event.prev_kv is not None else None
        self._prev: dict[str, Any] | None = None
        self._lines: dict[str, bytes] = {}

    def _decode(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self._raw)
        obj["metadata"]["resourceVersion"] = str(self.revision)
        return obj

    @property
    def obj(self) -> dict[str, Any]:
        """The object after this change, with its resourceVersion."""
        obj = self._obj
        if obj is None:
            obj = self._obj = self._decode()
        return obj

    def release(self) -> None:
        """Forget the decoded objects (see the class docstring); the bytes stay."""
        self._obj = self._prev = None

    @property
    def prev(self) -> dict[str, Any] | None:
        """The object before this change (None for ADDED or when the store omits it)."""
        if self._prev is None and self._prev_raw is not None:
            self._prev = json.loads(self._prev_raw)
        return self._prev

    def line(self, event_type: str) -> bytes:
        """The watch event line (JSON and a newline) of this change as ``event_type``,
        spliced from the stored bytes rather than encoded from :attr:`obj` again."""
        line = self._lines.get(event_type)
        if line is None:
            line = b'{"type":"%s","object":%s}\n' % (
                event_type.encode(), with_version_bytes(self._raw, self.revision))
            self._lines[event_type] = line
        return line


Matcher = Callable[[dict[str, Any]], bool]


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked HTTP/1.1 body (a watch stream is one)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Feed:
    """The caught-up subscriptions to one prefix without selectors, writing straight to
    their clients. They all get the same lines, so the cache appends each event's line
    here once (not once per subscription) and frames each batch once per flush: per
    client there is only the write itself."""

    __slots__ = ("lines", "members", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.members: dict[Subscription, None] = {}  # ordered set
        self.lines: list[bytes] = []  # dispatched since the last flush


class Subscription:
    """What one watching client receives: lines queued in order, then an end."""

    def __init__(self, prefix: str, from_revision: int, matcher: Matcher | None,
                 max_pending: int) -> None:
        self.prefix = prefix
        self.from_revision = from_revision
        self.matcher = matcher
        self.max_pending = max_pending
        self.pending: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.ended: str | None = None  # why the stream must stop, once it must
        self.gone = False  # ended because the client must re-list (410)
        self.last_revision = from_revision
        #: writes one HTTP chunk to the client at once when it can (``watch.py`` sets it
        #: once the stream is open); returns False when the lines must be queued instead
        self.sink: Callable[[bytes], bool] | None = None
        self.on_dirty: Callable[[Subscription], None] | None = None

    def offer(self, ev: CachedEvent) -> None:
        if self.ended is not None or ev.revision <= self.from_revision \
                or not ev.key.startswith(self.prefix):
            return
        event_type: str | None = ev.type
        if self.matcher is not None:
            now = ev.type != "DELETED" and self.matcher(ev.obj)
            if ev.type == "DELETED":
                event_type = "DELETED" if self.matcher(ev.obj) else None
            elif ev.type == "ADDED":
                event_type = "ADDED" if now else None
            else:
                prev = ev.prev
                before = self.matcher(prev) if prev is not None else now
                event_type = ("MODIFIED" if now and before else "ADDED" if now
                              else "DELETED" if before else None)
        self.last_revision = ev.revision
        if event_type is not None:
            self.push(ev.line(event_type))

    def push(self, line: bytes) -> None:
        if len(self.pending) >= self.max_pending:
            self.end("the watch fell too far behind; list again", gone=True)
            return
        self.pending.append(line)
        if self.sink is not None and self.on_dirty is not None:
            self.on_dirty(self)  # written by the cache's flush, see WatchCache._flush
        else:
            self.wakeup.set()

    def flush(self) -> None:
        """Write what is queued through the sink in one chunk; if the sink refuses
        (slow or gone client), wake the stream's task, which writes with flow control."""
        if not self.pending or self.ended is not None:
            return
        if self.sink is not None and self.sink(http_chunk(b"".join(self.pending))):
            self.pending.clear()
        else:
            self.wakeup.set()

    def end(self, why: str, *, gone: bool = False) -> None:
        if self.ended is None:
            self.ended, self.gone = why, gone
            if gone:  # the client re-lists: what is queued would only be repeated
                self.pending.clear()
            self.wakeup.set()


class WatchCache:
    """See the module docstring."""

    def __init__(self, store: Store, *, ring_size: int = 20_000, max_pending: int = 50_000,
                 flush_spacing: float = FLUSH_SPACING, max_flush_delay: float = MAX_FLUSH_DELAY,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if flush_spacing < 0 or max_flush_delay < 0:
            raise ValueError(f"flush_spacing and max_flush_delay must be >= 0, got "
                             f"{flush_spacing} and {max_flush_delay}")
        self.store = store
        self.ring: deque[CachedEvent] = deque(maxlen=ring_size)
        self.max_pending = max_pending
        self.covered_from = 0  # the ring holds every event with revision > this
        self.last_revision = 0
        self.subscriptions: set[Subscription] = set()  # fed by this cache
        self._offered: set[Subscription] = set()  # of those, the ones offered each event
        self._feeds: dict[str, _Feed] = {}  # the others, by prefix
        #: every event up to this revision has been written to, or queued for, every
        #: subscription fed by this cache (what a bookmark may promise)
        self.delivered_revision = 0
        self.streams: set[Subscription] = set()  # every open one, direct ones included
        self.listeners: list[Callable[[CachedEvent], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._direct: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        self._dirty: dict[Subscription, None] = {}  # ordered set
        self._flush_handle: asyncio.Handle | None = None
        self.flush_spacing = flush_spacing
        self.max_flush_delay = max_flush_delay
        self._clock = clock
        self._quiet_until = 0.0  # loop time before which no flush starts
        self.flushes = 0  # fan-out passes so far
        self.dispatched = 0  # events taken from the store so far
        #: told the duration (seconds) of every fan-out pass (the server's metrics)
        self.on_flush: Callable[[float], None] | None = None

    def _mark_dirty(self, sub: Subscription) -> None:
        self._dirty[sub] = None
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            wait = self._quiet_until - loop.time()
            self._flush_handle = loop.call_later(wait, self._flush) if wait > 0 \
                else loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write every subscription's queued lines in one pass over the dirty ones.

        Writing from here (not from 500 woken tasks) saves a task switch per client per
        event, and because this runs only once dispatching pauses, every event of a
        burst (one group commit of the store) goes to a client in ONE write. Each write
        is a TLS record and a syscall per client whatever its size, so under load the
        passes are also spaced out: the next one starts no sooner than
        ``flush_spacing`` times this one's duration later (at most ``max_flush_delay``),
        which bounds fan-out to about 1 / (1 + flush_spacing) of the loop's time and
        lets the events of that gap go out together. With few watchers a pass takes
        microseconds and the spacing is nothing; with 500 busy ones it is milliseconds,
        and the batches grow with the load instead of the queue in front of them."""
        self._flush_handle = None
        dirty, self._dirty = self._dirty, {}
        start = self._clock()
        revision = self.last_revision
        for sub in dirty:
            sub.flush()
        for feed in self._feeds.values():
            if feed.lines:
                self._flush_feed(feed)
        # A subscription that is caught up (everything offered to it written) and needs
        # no selector joins its prefix's feed; the feeds' lines were just written, so
        # from here on the feed carries exactly the events it has not seen.
        for sub in dirty:
            if sub in self._offered and sub.matcher is None and sub.sink is not None \
                    and not sub.pending and sub.ended is None \
                    and sub.from_revision <= self.last_revision:
                self._offered.discard(sub)
                feed = self._feeds.get(sub.prefix)
                if feed is None:
                    feed = self._feeds[sub.prefix] = _Feed(sub.prefix)
                feed.members[sub] = None
        self.delivered_revision = revision
        self.flushes += 1
        took = self._clock() - start
        if self.on_flush is not None:
            self.on_flush(took)
        self._quiet_until = asyncio.get_running_loop().time() + \
            min(took * self.flush_spacing, self.max_flush_delay)

    def _flush_feed(self, feed: _Feed) -> None:
        lines, feed.lines = feed.lines, []
        chunk = http_chunk(b"".join(lines))
        left: list[Subscription] = []
        for sub in feed.members:
            if sub.ended is not None or not sub.sink(chunk):  # type: ignore[misc]
                left.append(sub)
        for sub in left:
            # A slow (or closing) client leaves the feed for the per-event path, where
            # its lines queue and its stream's task writes them with flow control.
            del feed.members[sub]
            if sub.ended is None:
                self._offered.add(sub)
                for line in lines:
                    sub.push(line)
                    if sub.ended is not None:
                        break
                sub.wakeup.set()

    @property
    def bookmark_revision(self) -> int:
        """The revision a bookmark may carry to a subscription with nothing queued:
        every event up to it has been written (the latest one unless a flush is due)."""
        return self.delivered_revision if self._flush_handle is not None \
            else self.last_revision

    def attach(self, sub: Subscription, sink: Callable[[bytes], bool]) -> None:
        """Start writing ``sub``'s events through ``sink`` (see ``Subscription.sink``):
        what is queued goes at the next flush, which may also move ``sub`` to a feed."""
        sub.sink = sink
        self._mark_dirty(sub)

    async def start(self) -> None:
        start = await self.store.current_revision()
        self.covered_from = self.last_revision = start
        self._task = asyncio.create_task(self._run(start), name="watch-cache")

    async def _run(self, start: int) -> None:
        watch = self.store.watch(ROOT, from_revision=start)
        self.ready.set()
        try:
            async for event in watch:
                self._dispatch(CachedEvent(event))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the store failed: every client must reconnect
            log.exception("watch cache lost its store watch")
            for sub in list(self.subscriptions):
                sub.end(f"the server's store watch failed: {e}", gone=True)
        finally:
            closer = getattr(watch, "aclose", None)
            if closer is not None:
                await closer()

    def _dispatch(self, ev: CachedEvent) -> None:
        if len(self.ring) == self.ring.maxlen:
            self.covered_from = self.ring[0].revision
        self.ring.append(ev)
        self.last_revision = ev.revision
        self.dispatched += 1
        for listener in self.listeners:
            try:
                listener(ev)
            except Exception:
                log.exception("watch cache listener failed")
        for feed in self._feeds.values():
            if feed.members and ev.key.startswith(feed.prefix):
                feed.lines.append(ev.line(ev.type))
                self._schedule_flush()
        for sub in self._offered:
            sub.offer(ev)
        ev.release()

    @property
    def healthy(self) -> bool:
        """True while the store watch runs (a failed one means stale watches: not ready)."""
        return self._task is not None and not self._task.done()

    def add_listener(self, fn: Callable[[CachedEvent], None]) -> None:
        self.listeners.append(fn)

    def subscribe(self, prefix: str, from_revision: int, matcher: Matcher | None = None
                  ) -> Subscription:
        """Events under ``prefix`` after ``from_revision``; served from the ring when it
        covers that revision, else from a direct store watch (410 if compacted)."""
        sub = Subscription(prefix, from_revision, matcher, self.max_pending)
        sub.on_dirty = self._mark_dirty
        self.streams.add(sub)
        if from_revision >= self.covered_from:
            for ev in self.ring:
                if ev.revision > from_revision:
                    sub.offer(ev)
                    ev.release()
            self.subscriptions.add(sub)
            self._offered.add(sub)
        else:
            task = asyncio.create_task(self._pump_direct(sub), name="watch-direct")
            self._direct.add(task)
            task.add_done_callback(self._direct.discard)
            sub.direct_task = task  # type: ignore[attr-defined]
        return sub

    async def _pump_direct(self, sub: Subscription) -> None:
        watch = self.store.watch(sub.prefix, from_revision=sub.from_revision)
        try:
            async for event in watch:
                sub.offer(CachedEvent(event))
                if sub.ended is not None:
                    return
        except Compacted as e:
            sub.end(str(e), gone=True)
        except Exception as e:
            log.exception("direct watch failed")
            sub.end(f"watch failed: {e}", gone=True)
        else:
            sub.end("the store closed")
        finally:
            closer = getattr(watch, "aclose", None)
            if closer is not None:
                await closer()

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)
        self._offered.discard(sub)
        feed = self._feeds.get(sub.prefix)
        if feed is not None:
            feed.members.pop(sub, None)
            if not feed.members:
                del self._feeds[sub.prefix]
        self.streams.discard(sub)
        self._dirty.pop(sub, None)
        task = getattr(sub, "direct_task", None)
        if task is not None:
            task.cancel()

    def feed_members(self, prefix: str) -> int:
        """How many subscriptions to ``prefix`` are served from its shared feed."""
        feed = self._feeds.get(prefix)
        return len(feed.members) if feed is not None else 0

    @property
    def watchers(self) -> int:
        return len(self.streams)

    def end_all(self, why: str) -> None:
        for sub in list(self.streams):
            sub.end(why)

    async def stop(self) -> None:
        self.end_all("the server is shutting down")
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        tasks = [t for t in (self._task, *self._direct) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
