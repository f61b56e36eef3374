"""The open-loop generator against real loopback servers (no system packages needed).

Pins: every scheduled request is sent and counted; latency is measured from the
*scheduled* send time, so requests queued behind a stalled answer carry their wait
(coordinated omission corrected) -- shown on a controllable clock, no wall-clock
assertions; failures (error statuses, dropped connections) are counted per request,
the run still ends by itself, and the rate is then reported as not kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import uvloop

from loadtests.openloop import OpenLoopGenerator, OpenLoopResult, Schedule


class _Backend(asyncio.Protocol):
    """A tiny HTTP/1.1 server: one response per request head, in order, when allowed."""

    def __init__(self, app: _App) -> None:
        self.app = app
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.app.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.app.requests += 1
            drop = bool(self.app.drop_every) and self.app.requests % self.app.drop_every == 0
            task = asyncio.get_running_loop().create_task(self._answer(drop))
            self.app.tasks.add(task)
            task.add_done_callback(self.app.tasks.discard)

    async def _answer(self, drop: bool) -> None:
        await self.app.gate.wait()
        if self.transport is None or self.transport.is_closing():
            return
        if drop:
            self.transport.abort()
            return
        if self.app.garbage:
            self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
            return
        body = b"ok"
        close = b"Connection: close\r\n" if self.app.close_after_answer else b""
        self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (self.app.status, len(body), close, body))
        if self.app.close_after_answer:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _App:
    def __init__(self) -> None:
        self.status = 200
        self.drop_every = 0
        self.close_after_answer = False
        self.garbage = False
        self.requests = 0
        self.connections = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.tasks: set[asyncio.Task] = set()
        self.port = 0


@pytest.fixture
async def backend() -> AsyncIterator[_App]:
    app = _App()
    server = await asyncio.get_running_loop().create_server(
        lambda: _Backend(app), "127.0.0.1", 0)
    app.port = server.sockets[0].getsockname()[1]
    yield app
    app.gate.set()
    server.close()
    await server.wait_closed()
    if app.tasks:
        await asyncio.gather(*app.tasks, return_exceptions=True)


async def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``cond`` (generous timeout: the machine is shared); fail naming ``what``."""
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"timed out waiting for: {what}")


async def test_every_scheduled_request_is_sent_answered_and_counted(backend: _App) -> None:
    gen = OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/x", rate=400, duration=0.25,
                            connections=4)
    res = await gen.run()
    assert res.scheduled == 100
    assert res.sent == 100
    assert res.completed == 100
    assert backend.requests == 100
    assert backend.connections == 4
    assert res.errors == {}
    assert res.unfinished == 0
    assert len(res.latency) == len(res.service) == len(res.lag) == 100
    # Latency runs from the scheduled time, which is never after the actual send.
    assert res.latency.percentile(100) >= res.service.percentile(100)
    summary = res.as_dict()
    assert summary["latency"]["count"] == 100
    assert summary["achieved_rate"] > 0


async def test_latency_counts_from_scheduled_time_so_queued_requests_carry_the_stall(
        backend: _App) -> None:
    """Coordinated omission: 5 requests due at t=0, .1, .2, .3, .4 on one connection; the
    first answer is held until t=1.0, then all answer at once. A closed-loop tool would
    report one slow request; corrected latencies are 1.0, 0.9, 0.8, 0.7, 0.6 s."""
    now = [100.0]
    gen = OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/", rate=10, duration=0.5,
                            connections=1, clock=lambda: now[0])
    backend.gate.clear()
    task = asyncio.get_running_loop().create_task(gen.run())
    try:
        await _until(lambda: getattr(gen, "result", None) is not None
                     and gen.result.scheduled == 5, "schedule set")
        start = gen._schedule.start
        now[0] = start + 0.45  # all five are due; one goes out, four wait for the connection
        await _until(lambda: len(gen.result.lag) == 5, "all five dispatched")
        await _until(lambda: backend.requests == 1, "first request at the server")
        assert gen.result.sent == 1
        now[0] = start + 1.0
        backend.gate.set()
        res: OpenLoopResult = await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert res.completed == 5
    latencies = sorted(round(res.latency.percentile(p), 6) for p in (20, 40, 60, 80, 100))
    assert latencies == [0.6, 0.7, 0.8, 0.9, 1.0]
    # What a closed-loop tool would have seen: one 0.55 s answer, four instant ones.
    assert res.service.percentile(100) == pytest.approx(0.55)
    assert res.service.percentile(80) == pytest.approx(0.0)


async def test_error_statuses_are_failures_and_the_rate_is_not_kept(backend: _App) -> None:
    backend.status = 503
    res = await OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/", rate=200,
                                  duration=0.2, connections=2).run()
    assert res.scheduled == 40
    assert res.completed == 0
    assert res.errors == {"status_503": 40}
    assert len(res.latency) == 0
    assert not res.rate_kept
    assert "40 of 40 requests not completed" in res.rate_note


async def test_dropped_connections_fail_their_request_and_are_replaced(backend: _App) -> None:
    backend.drop_every = 5  # every fifth request is answered by a reset
    res = await OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/", rate=200,
                                  duration=0.25, connections=2).run()
    assert res.scheduled == 50
    assert res.errors.get("connection_lost", 0) == 10
    assert res.completed == 40
    assert res.unfinished == 0
    assert backend.connections > 2  # replaced after each reset


async def test_connection_close_answers_are_counted_and_the_connection_replaced(
        backend: _App) -> None:
    backend.close_after_answer = True
    res = await OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/", rate=200,
                                  duration=0.2, connections=2).run()
    assert res.completed == 40
    assert res.errors == {}
    assert backend.connections >= 40  # a fresh connection for every request


async def test_a_malformed_answer_fails_its_request_and_the_connection_is_replaced(
        backend: _App) -> None:
    backend.garbage = True
    res = await OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/", rate=100,
                                  duration=0.1, connections=2).run()
    assert res.scheduled == 10
    assert res.completed == 0
    assert res.errors == {"bad_response": 10}
    assert backend.connections >= 10


async def test_a_server_that_never_answers_ends_the_run_with_unfinished_requests(
        backend: _App) -> None:
    backend.gate.clear()
    res = await OpenLoopGenerator(f"http://127.0.0.1:{backend.port}/", rate=100,
                                  duration=0.1, connections=2, drain_timeout=0.3).run()
    assert res.scheduled == 10
    assert res.completed == 0
    assert res.unfinished == 10
    assert "10 unfinished" in res.rate_note


def test_merge_adds_up_rounds() -> None:
    a, b = OpenLoopResult(100, 1, 2), OpenLoopResult(100, 1, 2)
    for r in (a, b):
        r.scheduled = r.sent = r.completed = 100
        r.elapsed = 1.0
        r.latency.extend([0.001] * 100)
    b.errors["status_500"] = 1
    a.merge(b)
    assert (a.scheduled, a.completed, a.elapsed, len(a.latency)) == (200, 200, 2.0, 200)
    assert a.errors == {"status_500": 1}
    with pytest.raises(ValueError, match="merge"):
        a.merge(OpenLoopResult(5000, 1, 2))


def test_schedule_never_releases_a_request_early() -> None:
    s = Schedule(start=10.0, rate=1000, duration=1.0)
    assert s.total == 1000
    assert s.due_until(0, 9.9) == 0
    assert s.due_until(0, 10.0) == 1  # request 0 is due exactly at start
    assert s.due_until(0, 10.0025) == 3  # 0, 1 and 2 are due; 3 (10.003) is not
    assert s.due_until(0, 99.0) == 1000  # never past the end of the schedule


def test_bad_arguments_are_refused_with_the_option_named() -> None:
    with pytest.raises(ValueError, match="url"):
        OpenLoopGenerator("https://127.0.0.1:1/", rate=1, duration=1)
    with pytest.raises(ValueError, match="rate"):
        OpenLoopGenerator("http://127.0.0.1:1/", rate=0, duration=1)
    with pytest.raises(ValueError, match="connections"):
        OpenLoopGenerator("http://127.0.0.1:1/", rate=1, duration=1, connections=0)


def _finished(rate: float, lags: list[float]) -> OpenLoopResult:
    r = OpenLoopResult(rate, 1.0, 2)
    r.scheduled = r.sent = r.completed = len(lags)
    r.elapsed = len(lags) / rate
    r.lag.extend(lags)
    return r


def test_a_generator_behind_schedule_does_not_claim_the_rate() -> None:
    """Median lag over 2 ms means the generator itself fell behind: not kept, and said."""
    late = _finished(1000, [0.003] * 100)
    assert not late.rate_kept
    assert "generator behind schedule: median lag 3.0 ms" in late.rate_note


def test_a_short_stall_in_the_tail_still_keeps_the_rate() -> None:
    """A machine-wide stall shows in the lag's tail only; every target sees it alike."""
    stalled = _finished(1000, [0.0003] * 95 + [0.010] * 5)
    assert stalled.rate_kept
    assert stalled.rate_note == ""
    slow = _finished(1000, [0.0003] * 100)
    slow.elapsed = 0.2  # 100 completions over 0.2 s at a 1000/s target
    assert not slow.rate_kept
    assert "achieved 500/s of 1000/s" in slow.rate_note


def test_under_uvloop_the_dispatcher_sleeps_between_requests_instead_of_spinning() -> None:
    """uvloop rounds timer delays under half a millisecond down to zero; a dispatcher
    re-armed with such a delay spins and takes a core from the servers under test. At
    1,000/s over 0.3 s it must wake about once per request, not tens of thousands of
    times."""
    async def scenario() -> OpenLoopResult:
        app = _App()
        server = await asyncio.get_running_loop().create_server(
            lambda: _Backend(app), "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            return await OpenLoopGenerator(f"http://127.0.0.1:{port}/", rate=1000,
                                           duration=0.3, connections=4).run()
        finally:
            server.close()
            await server.wait_closed()
            await asyncio.gather(*app.tasks, return_exceptions=True)

    res = uvloop.run(scenario())
    assert res.completed == 300
    assert 1 <= res.wakeups <= 2 * res.scheduled
