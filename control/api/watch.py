"""Streaming a watch to an HTTP client: newline-delimited JSON events.

``GET ...?watch=true`` answers 200 with ``Transfer-Encoding: chunked`` and one JSON event
per line (``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": ...}``).
Without ``resourceVersion`` (or with ``"0"``) the stream starts with an ADDED event per
existing object, then follows changes; with ``resourceVersion=N`` it sends every change
after N. A revision that has been compacted is a 410 ``Status`` before the stream
starts (or an ERROR event carrying it, if discovered later); with
``allowWatchBookmarks=true`` a BOOKMARK carrying the latest revision is sent when the
stream has been quiet for ``bookmark_interval``, so a client can resume cheaply;
``timeoutSeconds`` ends the stream cleanly. Events are written in batches by the watch
cache's flush, straight to the connection (:func:`_direct_sink`); a client that falls
behind is written by its stream's task instead, with flow control.

Neighbours: ``watchcache.py`` produces the subscriptions; ``handlers.py`` authorizes
the request and calls :func:`stream_watch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from control.api.errors import gone, status_body, too_many_requests
from control.api.resources import Resource
from control.api.watchcache import Matcher, Subscription, WatchCache

DEFAULT_TIMEOUT = 1800.0  # kube-apiserver picks 30-60 min; a client reconnects after


@dataclass(frozen=True, slots=True)
class WatchLimits:
    max_watchers: int = 1000
    bookmark_interval: float = 5.0
    max_timeout: float = DEFAULT_TIMEOUT


def _encode(event_type: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":"),
                      ensure_ascii=False).encode() + b"\n"


async def stream_watch(
    request: web.Request,
    cache: WatchCache,
    res: Resource,
    prefix: str,
    *,
    from_revision: int | None,
    matcher: Matcher | None,
    initial: Callable[[], Awaitable[tuple[list[dict[str, Any]], int]]],
    bookmarks: bool,
    timeout: float | None,
    limits: WatchLimits,
) -> web.StreamResponse:
    """Serve one watch. ``initial()`` lists the current objects (used when no
    ``from_revision`` is given) and returns them with the list's revision."""
    if cache.watchers >= limits.max_watchers:
        raise too_many_requests(f"too many watches open ({limits.max_watchers}); retry "
                                f"later", retry_after=1)
    first: list[bytes] = []
    if from_revision is None:
        items, from_revision = await initial()
        first = [_encode("ADDED", obj) for obj in items]
    else:
        compacted_revision = getattr(cache.store, "compacted_revision", None)
        if compacted_revision is not None and from_revision > 0 \
                and from_revision < await compacted_revision():
            raise gone(f"too old resource version: {from_revision} "
                       f"({await compacted_revision()})")
    sub = cache.subscribe(prefix, from_revision, matcher)
    try:
        if getattr(sub, "direct_task", None) is not None:
            # Replaying from the store: a compacted revision shows up at once; answer it
            # as a plain 410 rather than a 200 stream holding only an error.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wakeup.wait(), 0.2)
            if sub.gone and not sub.pending:
                raise gone(f"too old resource version: {from_revision} ({sub.ended})")
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "application/json", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if first:
            await resp.write(b"".join(first))
        # StreamResponse.prepare() has sent the headers (it does not hold them back for
        # the first body write as Response does), so raw chunks may follow from here.
        cache.attach(sub, _direct_sink(request))
        await _pump(resp, cache, res, sub, bookmarks=bookmarks,
                    timeout=min(timeout or limits.max_timeout, limits.max_timeout),
                    bookmark_interval=limits.bookmark_interval)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
    finally:
        cache.unsubscribe(sub)


WRITE_HIGH_WATER = 256 * 1024  # bytes buffered in the transport before lines queue up


def _direct_sink(request: web.Request) -> Callable[[bytes], bool]:
    """Write an HTTP chunk framed by the watch cache straight to the connection (the
    response is chunked, so it is indistinguishable from one aiohttp frames). Refuses
    (so the lines are queued and the stream's task writes them with flow control) when
    the client is slow or gone."""
    transport = request.transport

    def sink(chunk: bytes) -> bool:
        if transport is None or transport.is_closing() or \
                transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            return False
        transport.write(chunk)
        return True
    return sink


async def _pump(resp: web.StreamResponse, cache: WatchCache, res: Resource,
                sub: Subscription, *, bookmarks: bool, timeout: float,
                bookmark_interval: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if not sub.pending and sub.ended is None:
            sub.wakeup.clear()
            wait = min(remaining, bookmark_interval) if bookmarks else remaining
            try:
                await asyncio.wait_for(sub.wakeup.wait(), wait)
            except TimeoutError:
                if sub.pending:
                    continue  # queued while waiting: written first, bookmark later
                if bookmarks and time.monotonic() < deadline:
                    # never past an event this client has not been sent yet
                    rv = cache.bookmark_revision if sub in cache.subscriptions \
                        else sub.last_revision
                    bookmark = {"kind": res.kind, "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(rv)}}
                    try:
                        await resp.write(_encode("BOOKMARK", bookmark))
                    except ConnectionError:
                        return
                continue
        if sub.pending:
            batch = b"".join(sub.pending)
            sub.pending.clear()
            try:
                await resp.write(batch)
            except ConnectionError:
                return
        if sub.ended is not None and not sub.pending:
            if sub.gone:
                with contextlib.suppress(ConnectionError):
                    await resp.write(_encode("ERROR", status_body(
                        410, "Expired", f"too old resource version: {sub.ended}")))
            return
