"""Watch fan-out under batching: shared feeds, spaced flushes, slow clients, bookmarks.

The cache writes every caught-up, selector-less subscription's events from one shared
feed per prefix, in batches whose spacing grows with the cost of a pass
(``control/api/watchcache.py``). These tests pin that batching changes only how events
are grouped into writes: never their order, never their count, never what a bookmark
promises, and that one client whose writes are refused does not hold up the others.
They drive a real :class:`WatchCache` on a real SQLite store; the sinks are plain
callables standing in for the connection (the seam ``watch.py`` plugs a socket into),
so a "slow client" is a sink that refuses, as the real one does past its high water.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from apitest import PODS, pod, start_server

from control.api.watchcache import Subscription, WatchCache
from control.store import Store, open_store

PREFIX = "/registry/core/pods/default/"
CHUNK = re.compile(rb"([0-9a-f]+)\r\n")


def parse_chunks(data: bytes) -> list[bytes]:
    """The event lines in a run of HTTP/1.1 chunks (what a sink was given)."""
    lines: list[bytes] = []
    pos = 0
    while pos < len(data):
        m = CHUNK.match(data, pos)
        assert m is not None, data[pos:pos + 40]
        size = int(m.group(1), 16)
        body = data[m.end():m.end() + size]
        assert data[m.end() + size:m.end() + size + 2] == b"\r\n"
        lines.extend(body.splitlines())
        pos = m.end() + size + 2
    return lines


def revisions(lines: list[bytes]) -> list[int]:
    return [int(json.loads(line)["object"]["metadata"]["resourceVersion"]) for line in lines]


class RecordingSink:
    """Accepts chunks (records them) until told to refuse, like a socket that fills up."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.refuse = False

    def __call__(self, chunk: bytes) -> bool:
        if self.refuse:
            return False
        self.chunks.append(chunk)
        return True

    @property
    def lines(self) -> list[bytes]:
        return parse_chunks(b"".join(self.chunks))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        yield s
    finally:
        await s.close()


async def started(cache: WatchCache) -> WatchCache:
    await cache.start()
    await cache.ready.wait()
    return cache


async def write_pods(store: Store, names: list[str], *, writers: int) -> list[int]:
    """Create the pods from ``writers`` concurrent tasks; their revisions, sorted."""
    queue = list(names)
    revs: list[int] = []

    async def writer() -> None:
        while queue:
            name = queue.pop()
            obj = pod(name)
            obj["metadata"]["namespace"] = "default"
            kv = await store.create(PREFIX + name, json.dumps(obj).encode())
            revs.append(kv.mod_revision)
    await asyncio.gather(*(writer() for _ in range(writers)))
    return sorted(revs)


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` (state changed by the cache's callbacks, which signal nothing a
    test could await) until it holds."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert check(), what


async def test_feed_batches_deliver_every_event_once_in_order(store):
    """Concurrent writers (group commits, several events per flush): every plain
    subscriber and a selector subscriber get every event exactly once, in revision
    order, and the plain ones were served from the shared feed."""
    cache = await started(WatchCache(store))
    try:
        start = await store.current_revision()
        plain = [cache.subscribe(PREFIX, start) for _ in range(6)]
        sinks = [RecordingSink() for _ in plain]
        for sub, sink in zip(plain, sinks, strict=True):
            cache.attach(sub, sink)
        selective = cache.subscribe(PREFIX, start, lambda obj: True)
        selective_sink = RecordingSink()
        cache.attach(selective, selective_sink)
        await asyncio.sleep(0.05)  # a flush: the plain ones join the feed
        assert cache.feed_members(PREFIX) == 6
        expected = await write_pods(store, [f"p{i:03d}" for i in range(150)], writers=8)
        await until(lambda: all(len(s.lines) >= 150 for s in [*sinks, selective_sink]),
                    "every subscriber got 150 events")
        await asyncio.sleep(0.05)
        for sink in [*sinks, selective_sink]:
            assert revisions(sink.lines) == expected
        for sub in [*plain, selective]:
            cache.unsubscribe(sub)
    finally:
        await cache.stop()


async def test_refused_writes_move_only_that_subscriber_to_its_queue(store):
    """A client whose writes are refused leaves the feed: the others keep getting
    every event as it comes, and the refused events wait in its own queue, in order,
    with its stream's task woken to write them with flow control."""
    cache = await started(WatchCache(store))
    try:
        start = await store.current_revision()
        fast, slow = cache.subscribe(PREFIX, start), cache.subscribe(PREFIX, start)
        fast_sink, slow_sink = RecordingSink(), RecordingSink()
        cache.attach(fast, fast_sink)
        cache.attach(slow, slow_sink)
        await asyncio.sleep(0.05)
        assert cache.feed_members(PREFIX) == 2
        first = await write_pods(store, ["a0", "a1"], writers=1)
        await until(lambda: len(slow_sink.lines) == 2, "both got the first two")
        slow_sink.refuse = True
        slow.wakeup.clear()
        rest = await write_pods(store, [f"b{i}" for i in range(20)], writers=4)
        await until(lambda: len(fast_sink.lines) == 22, "the fast one got all 22")
        assert revisions(fast_sink.lines) == first + rest
        assert cache.feed_members(PREFIX) == 1
        assert slow.wakeup.is_set()
        assert revisions(slow_sink.lines) == first
        assert revisions(list(slow.pending)) == rest
        cache.unsubscribe(fast)
        cache.unsubscribe(slow)
    finally:
        await cache.stop()


async def test_flushes_are_spaced_by_their_own_cost(store):
    """After a pass that took (on the cache's clock) long, the next waits up to
    ``max_flush_delay``: events written meanwhile go out together in one write."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    cache = await started(WatchCache(store, flush_spacing=2.0, max_flush_delay=2.0,
                                     clock=clock))
    try:
        sub = cache.subscribe(PREFIX, await store.current_revision())

        def slow_sink(chunk: bytes) -> bool:
            now[0] += 10.0  # every write "takes" 10 s: the next pass waits the cap, 2 s
            chunks.append(chunk)
            return True
        chunks: list[bytes] = []
        cache.attach(sub, slow_sink)
        await asyncio.sleep(0.05)
        await write_pods(store, ["x"], writers=1)
        await until(lambda: len(chunks) == 1, "the first event went out alone")
        await write_pods(store, ["y"], writers=1)
        await write_pods(store, ["z"], writers=1)
        await until(lambda: len(chunks) == 2, "the next two went out", timeout=10)
        assert len(parse_chunks(chunks[1])) == 2
        cache.unsubscribe(sub)
    finally:
        await cache.stop()


async def test_bookmark_revision_never_passes_an_unwritten_event(store):
    """While a flush is due, a bookmark may promise only what has been written; once
    it ran, the latest revision."""
    now = [0.0]
    cache = await started(WatchCache(store, flush_spacing=1.0, max_flush_delay=1.0,
                                     clock=lambda: now[0]))
    try:
        sub = cache.subscribe(PREFIX, await store.current_revision())
        written: list[bytes] = []

        def sink(chunk: bytes) -> bool:
            now[0] += 5.0
            written.append(chunk)
            return True
        cache.attach(sub, sink)
        await asyncio.sleep(0.05)
        [r1] = await write_pods(store, ["one"], writers=1)
        await until(lambda: len(written) == 1, "the first event was written")
        [r2] = await write_pods(store, ["two"], writers=1)
        await until(lambda: cache.last_revision == r2, "the cache saw the second")
        assert len(written) == 1  # within the 1 s spacing: not written yet
        assert cache.bookmark_revision == r1
        await until(lambda: len(written) == 2, "the second was written")
        assert cache.bookmark_revision == r2
        cache.unsubscribe(sub)
    finally:
        await cache.stop()


async def test_many_http_watchers_get_every_concurrent_update_in_order(api):
    """End to end over real connections: 12 watch streams and 8 concurrent patchers;
    each stream gets each update once, with resourceVersions strictly increasing."""
    for i in range(40):
        await api.post(PODS, pod(f"w{i}"))
    _, listed = await api.get(PODS)
    rv = listed["metadata"]["resourceVersion"]
    headers = {"Authorization": f"Bearer {api.token}"}

    async def watch() -> list[int]:
        got: list[int] = []
        async with aiohttp.ClientSession() as session, session.get(
                api.server.url + PODS, params={"watch": "true", "resourceVersion": rv},
                headers=headers) as resp:
            assert resp.status == 200
            async with asyncio.timeout(60):
                async for line in resp.content:
                    got.append(int(json.loads(line)["object"]["metadata"]
                                   ["resourceVersion"]))
                    if len(got) >= 40:
                        break
        return got
    watchers = [asyncio.create_task(watch()) for _ in range(12)]
    await asyncio.sleep(0.3)
    queue = list(range(40))
    answered: list[int] = []

    async def patcher() -> None:
        while queue:
            i = queue.pop()
            status, body = await api.patch(f"{PODS}/w{i}", {"metadata": {"labels": {
                "n": str(i)}}})
            assert status == 200, body
            answered.append(int(body["metadata"]["resourceVersion"]))
    await asyncio.gather(*(patcher() for _ in range(8)))
    for got in await asyncio.gather(*watchers):
        assert got == sorted(answered)


def test_subscription_flush_frames_one_chunk_for_everything_queued():
    """A subscription on the per-event path writes all it has queued as ONE chunk."""
    sub = Subscription(PREFIX, 0, None, max_pending=10)
    sink = RecordingSink()
    sub.sink = sink
    sub.pending.extend([b'{"a":1}\n', b'{"b":2}\n'])
    sub.flush()
    assert sink.chunks == [b'10\r\n{"a":1}\n{"b":2}\n\r\n']
    assert not sub.pending


async def test_ring_replay_to_a_selector_watch_decodes_released_events_again(store):
    """Dispatched events keep only their bytes (the decoded objects are dropped so the
    ring costs the garbage collector nothing); a selector watch resuming from the ring
    later still sees each object, its resourceVersion and the selector transitions."""
    cache = await started(WatchCache(store))
    try:
        start = await store.current_revision()
        [r1] = await write_pods(store, ["keep"], writers=1)
        obj = pod("keep", labels={"tier": "web"})
        obj["metadata"]["namespace"] = "default"
        r2 = (await store.update(PREFIX + "keep", json.dumps(obj).encode(),
                                 expected_revision=r1)).mod_revision
        await until(lambda: cache.last_revision == r2, "the cache saw both writes")
        assert all(ev._obj is None for ev in cache.ring)  # released after dispatch

        def web(o):
            return (o["metadata"].get("labels") or {}).get("tier") == "web"
        sub = cache.subscribe(PREFIX, start, web)
        sink = RecordingSink()
        cache.attach(sub, sink)
        await until(lambda: len(sink.lines) == 1, "the replay was written")
        [line] = sink.lines
        event = json.loads(line)
        # created without the label (not matching), then labelled: joins as ADDED
        assert event["type"] == "ADDED"
        assert event["object"]["metadata"]["resourceVersion"] == str(r2)
        assert event["object"]["metadata"]["labels"]["tier"] == "web"
        cache.unsubscribe(sub)
    finally:
        await cache.stop()


async def test_server_freezes_its_startup_heap_and_gives_it_back(data_dir):
    """Once up, the server has moved its long-lived startup objects out of the cyclic
    collector's reach (so full collections stop costing the watchers 50-100 ms); when
    it stops they are handed back."""
    assert gc.get_freeze_count() == 0
    async with start_server(data_dir):
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
