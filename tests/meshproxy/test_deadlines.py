"""TimeoutWheel (meshproxy.http.deadlines): route timeouts without a timer per request.

Runs on a controllable clock: ``ManualLoop`` offers the two loop methods the wheel
uses (``time`` and ``call_at``) and runs due timers when the test advances it; it
stands in for the event loop only so that timing is exact. The fused path's 504
``route_timeout`` through a real proxy is pinned in ``test_http_proxy.py``
(``test_upstream_errors_map_to_reasons``) and below.
"""

from __future__ import annotations

import asyncio

from proxy_kit import http_config
from rawclient import RawConn, build

from meshproxy.http.deadlines import RESOLUTION, TimeoutWheel


class _Handle:
    def __init__(self, when: float, callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """A clock the test moves; timers run when their time has come."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.timers: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback) -> _Handle:
        h = _Handle(when, callback)
        self.timers.append(h)
        return h

    def live_timers(self) -> int:
        return sum(1 for h in self.timers if not h.cancelled)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while True:
            due = [h for h in self.timers if not h.cancelled and h.when <= self.now]
            if not due:
                return
            for h in due:
                self.timers.remove(h)
                h.callback()


class Thing:
    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1


def test_filed_item_is_cancelled_within_one_resolution_step() -> None:
    """An item filed for t+0.2 s is not cancelled before t+0.2 s, and is by t+0.2 s
    plus one resolution step."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    t = Thing()
    wheel.add(loop.now + 0.2, t)
    loop.advance(0.2 - RESOLUTION)
    assert t.cancelled == 0
    loop.advance(2 * RESOLUTION)
    assert t.cancelled == 1
    assert len(wheel) == 0
    assert loop.live_timers() == 0  # nothing left: no timer keeps running


def test_discarded_item_is_never_cancelled() -> None:
    """An item removed before its deadline (the request finished) is not touched."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    done, late = Thing(), Thing()
    k = wheel.add(loop.now + 0.1, done)
    wheel.add(loop.now + 0.1, late)
    wheel.discard(k, done)
    loop.advance(1.0)
    assert (done.cancelled, late.cancelled) == (0, 1)


def test_earlier_deadline_rearms_the_single_timer() -> None:
    """Filing an earlier deadline than any filed moves the one timer forward; items
    fire in deadline order, each once."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    slow, fast = Thing(), Thing()
    wheel.add(loop.now + 5.0, slow)
    wheel.add(loop.now + 0.05, fast)
    assert loop.live_timers() == 1
    loop.advance(0.1)
    assert (fast.cancelled, slow.cancelled) == (1, 0)
    loop.advance(5.0)
    assert (fast.cancelled, slow.cancelled) == (1, 1)


def test_buckets_emptied_in_time_need_no_timer_of_their_own() -> None:
    """Many requests that all finish in time: when the timer fires it skips their empty
    buckets and arms for the next one that still holds something."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    things = [Thing() for _ in range(50)]
    keys = [wheel.add(loop.now + 1.0 + i * RESOLUTION, t) for i, t in enumerate(things)]
    last = Thing()
    wheel.add(loop.now + 10.0, last)
    for k, t in zip(keys, things, strict=True):
        wheel.discard(k, t)
    fired_before = len(loop.timers)
    loop.advance(1.0 + RESOLUTION)  # the first (empty) bucket's timer fires
    assert loop.live_timers() == 1
    assert len(loop.timers) - fired_before <= 1  # one re-arm, not one per empty bucket
    loop.advance(10.0)
    assert last.cancelled == 1
    assert all(t.cancelled == 0 for t in things)


def test_no_deadline_files_nothing() -> None:
    """An infinite deadline (no route timeout, no caller budget) files nothing."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    t = Thing()
    key = wheel.add(float("inf"), t)
    wheel.discard(key, t)
    assert len(wheel) == 0
    assert loop.live_timers() == 0


def test_close_stops_the_timer_and_forgets_items() -> None:
    """A closed wheel cancels nothing and leaves no timer."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    t = Thing()
    wheel.add(loop.now + 0.1, t)
    wheel.close()
    loop.advance(1.0)
    assert t.cancelled == 0
    assert loop.live_timers() == 0


async def test_fused_requests_leave_nothing_filed_and_a_timeout_does_not_leak(
        upstream, proxy_factory) -> None:
    """Through a real proxy: keep-alive requests on the fused path file their route
    timeout and remove it when answered; a request that hangs past the route timeout
    gets 504 route_timeout and the next request on the same client connection is
    served."""
    p = await proxy_factory(http_config([upstream.address],
                                        routes="[{name: all, cluster: c, timeout: 0.3}]"))
    lst = p.listeners["web"]
    assert lst.router.routes[0].direct is not None
    conn = await RawConn.open(lst.port)
    try:
        for _ in range(5):
            await conn.send(build("GET", "/echo"))
            assert (await conn.read_reply()).status == 200
        assert len(lst.timeouts) == 0
        await conn.send(build("GET", "/hang"))
        r = await conn.read_reply()
        assert (r.status, r.reason) == (504, "route_timeout")
        assert r.keep_alive  # a local reply does not end the client's connection
        await conn.send(build("GET", "/echo"))
        assert (await conn.read_reply()).status == 200
        assert len(lst.timeouts) == 0
    finally:
        await conn.close()
    await asyncio.sleep(0)
