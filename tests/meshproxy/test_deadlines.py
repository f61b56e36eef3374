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

from meshproxy.http.deadlines import SLACK, TimeoutWheel


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


def test_filed_item_is_cancelled_at_its_deadline() -> None:
    """An item filed for t+0.2 s is not cancelled before t+0.2 s, and is then; nothing
    (no queue, no timer) is left afterwards."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    t = Thing()
    wheel.add(loop.now + 0.2, t, length=0.2)
    loop.advance(0.2 - 2 * SLACK)
    assert t.cancelled == 0
    loop.advance(2 * SLACK)
    assert t.cancelled == 1
    assert len(wheel) == 0
    assert loop.live_timers() == 0


def test_discarded_item_is_never_cancelled() -> None:
    """An item removed before its deadline (the request finished) is not touched."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    done, late = Thing(), Thing()
    wheel.add(loop.now + 0.1, done, length=0.1)
    wheel.add(loop.now + 0.1, late, length=0.1)
    wheel.discard(done, length=0.1)
    loop.advance(1.0)
    assert (done.cancelled, late.cancelled) == (0, 1)


def test_shorter_timeout_filed_later_fires_first() -> None:
    """Two routes' timeouts: a 0.05 s one filed after a 5 s one moves the single timer
    forward; each item is cancelled once, in deadline order."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    slow, fast = Thing(), Thing()
    wheel.add(loop.now + 5.0, slow, length=5.0)
    wheel.add(loop.now + 0.05, fast, length=0.05)
    assert loop.live_timers() == 1
    loop.advance(0.1)
    assert (fast.cancelled, slow.cancelled) == (1, 0)
    loop.advance(5.0)
    assert (fast.cancelled, slow.cancelled) == (1, 1)


def test_only_items_in_flight_are_held() -> None:
    """Thousands of requests that finish in time leave nothing filed; the timer, when it
    fires, re-arms for the next item still in flight and cancels only that."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    finished = [Thing() for _ in range(5000)]
    for i, t in enumerate(finished):
        loop.now += 0.0001
        wheel.add(loop.now + 1.0, t, length=1.0)
        if i < 4999:
            wheel.discard(t, length=1.0)
    assert len(wheel) == 1
    loop.advance(0.6)  # the first filing's deadline passes: nothing of it is left
    assert loop.live_timers() == 1
    assert sum(t.cancelled for t in finished) == 0
    loop.advance(1.0)
    assert [i for i, t in enumerate(finished) if t.cancelled] == [4999]
    assert len(wheel) == 0
    assert loop.live_timers() == 0


def test_no_deadline_files_nothing() -> None:
    """An infinite deadline (no route timeout, no caller budget) files nothing."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    t = Thing()
    wheel.add(float("inf"), t, length=float("inf"))
    wheel.discard(t, length=float("inf"))
    assert len(wheel) == 0
    assert loop.live_timers() == 0


def test_close_stops_the_timer_and_forgets_items() -> None:
    """A closed wheel cancels nothing and leaves no timer."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    t = Thing()
    wheel.add(loop.now + 0.1, t, length=0.1)
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


def test_items_filed_inline_in_a_live_queue_fire_and_can_be_removed() -> None:
    """The plain lane's way of filing: ``queue(length)`` is a live queue kept after it
    empties; an item put there (arming only when earlier than ``timer_at``) is
    cancelled at its deadline, one removed with ``pop`` is not; ``add`` returns the
    same queue."""
    loop = ManualLoop()
    wheel = TimeoutWheel(loop)  # type: ignore[arg-type]
    queue = wheel.queue(0.1)
    hit, done = Thing(), Thing()
    for t in (hit, done):
        when = loop.now + 0.1
        queue[t] = when
        if when < wheel.timer_at:
            wheel.arm(when)
    assert loop.live_timers() == 1
    queue.pop(done, None)
    loop.advance(0.2)
    assert (hit.cancelled, done.cancelled) == (1, 0)
    assert wheel.queue(0.1) is queue  # kept, empty, for the next request
    assert wheel.add(loop.now + 0.1, done, length=0.1) is queue
    assert wheel.add(float("inf"), done, length=0.1) is None
    wheel.close()
    assert len(queue) == 0
    assert loop.live_timers() == 0
