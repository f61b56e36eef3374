"""Open-loop, constant-rate HTTP/1.1 load with coordinated omission corrected.

A closed-loop tool (wrk, ab) sends the next request only after the previous answer, so
when the server stalls the tool stops sending and the stall is recorded once instead of
once per request that *should* have been sent: the tail looks far better than any user
would see (Gil Tene's "coordinated omission"). Here request ``i`` is *scheduled* at
``t0 + i / rate`` whatever happens, and its latency is measured from that scheduled
time to the end of its response, as wrk2 and fortio do. A request that has to wait for
a free connection (because earlier answers are slow) therefore carries its wait.

How it runs (uvloop, asyncio ``Protocol`` + ``httptools``, no per-request tasks):

- ``connections`` keep-alive connections are opened up front; each carries one request
  at a time (no pipelining, so a response always belongs to the oldest request sent).
- A dispatcher callback wakes at the next scheduled time, moves every request that is
  due into a FIFO, and hands the FIFO to idle connections; a connection that finishes a
  response takes the next waiting request at once. Requests are never sent early.
- Three durations are kept per request: ``latency`` (scheduled -> response end, the
  corrected number the reports use), ``service`` (actual send -> response end, what a
  closed-loop tool would report) and ``lag`` (scheduled -> the dispatcher noticing it:
  the generator's own lateness, from timer granularity and CPU contention).
- The run ends when every scheduled request is answered or failed, or at the schedule's
  end plus ``drain_timeout``: whatever is still waiting or in flight then is counted as
  ``unfinished``. Counts are bounded by ``rate * duration``.

Did it keep the rate? :attr:`OpenLoopResult.rate_kept` is true only when every scheduled
request completed, the completion rate reached 97% of the target and the dispatcher's
median lag stayed under 2 ms (a generator that cannot keep up falls further behind with
every request, which moves the median; a short stall of the whole machine only moves the
tail, shows in every target's latency alike, and is reported as the lag's p99);
otherwise :attr:`OpenLoopResult.rate_note` says which of these failed, so a report can
say so instead of presenting a lower rate as the target.

Also a command line: ``python -m loadtests.openloop http://127.0.0.1:8080/ --rate 1000``.

Neighbours: ``samples`` holds the durations; ``bench`` runs this per target and rate.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools
import uvloop

from loadtests.samples import Samples

#: Median dispatcher lag above which the generator itself did not keep the schedule.
MAX_LAG_P50 = 0.002
#: Share of the target rate that completions must reach for the rate to count as kept.
MIN_RATE_SHARE = 0.97


class Schedule:
    """Request ``i`` is due at ``start + i * interval``; ``total`` requests in all."""

    __slots__ = ("interval", "start", "total")

    def __init__(self, *, start: float, rate: float, duration: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if not duration > 0:
            raise ValueError(f"duration must be positive, got {duration}")
        self.start = start
        self.interval = 1.0 / rate
        self.total = max(1, int(rate * duration))

    def due(self, i: int) -> float:
        return self.start + i * self.interval

    def due_until(self, first: int, now: float) -> int:
        """The index one past the last request due at ``now`` (never past ``total``)."""
        if now < self.start:
            return first
        last = math.floor((now - self.start) / self.interval)
        return max(first, min(self.total, last + 1))


@dataclass
class OpenLoopResult:
    """What one open-loop run measured (durations in seconds inside the samples)."""

    rate: float
    duration: float
    connections: int
    scheduled: int = 0
    sent: int = 0
    completed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed requests, by kind
    events: dict[str, int] = field(default_factory=dict)  # connection trouble, by kind
    unfinished: int = 0
    elapsed: float = 0.0  # first scheduled time -> last completion
    cpu_seconds: float = 0.0  # this process's CPU time while the schedule ran
    wakeups: int = 0  # dispatcher callbacks: about one per millisecond, never a spin
    latency: Samples = field(default_factory=Samples)
    service: Samples = field(default_factory=Samples)
    lag: Samples = field(default_factory=Samples)

    def merge(self, other: OpenLoopResult) -> None:
        """Fold another run at the same rate into this one (interleaved rounds)."""
        if other.rate != self.rate:
            raise ValueError(f"cannot merge a {other.rate}/s run into a {self.rate}/s one")
        self.duration += other.duration
        for name in ("scheduled", "sent", "completed", "unfinished", "elapsed", "cpu_seconds",
                     "wakeups"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.errors, other.errors), (self.events, other.events)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.latency.merge(other.latency)
        self.service.merge(other.service)
        self.lag.merge(other.lag)

    @property
    def achieved_rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate_note(self) -> str:
        """Empty when the rate was kept; else what went wrong, in words."""
        notes = []
        if self.completed < self.scheduled:
            notes.append(f"{self.scheduled - self.completed} of {self.scheduled} requests "
                         f"not completed ({self.error_count} errors, "
                         f"{self.unfinished} unfinished)")
        if self.achieved_rate < MIN_RATE_SHARE * self.rate:
            notes.append(f"achieved {self.achieved_rate:.0f}/s of {self.rate:.0f}/s")
        lag50 = self.lag.percentile(50)
        if not math.isnan(lag50) and lag50 > MAX_LAG_P50:
            notes.append(f"generator behind schedule: median lag {lag50 * 1e3:.1f} ms")
        return "; ".join(notes)

    @property
    def rate_kept(self) -> bool:
        return not self.rate_note

    def as_dict(self) -> dict:
        return {
            "rate": self.rate, "duration": self.duration, "connections": self.connections,
            "scheduled": self.scheduled, "sent": self.sent, "completed": self.completed,
            "errors": dict(self.errors), "events": dict(self.events),
            "unfinished": self.unfinished,
            "elapsed_s": self.elapsed, "achieved_rate": self.achieved_rate,
            # The generator's own CPU use: far below 100 means it was not the bottleneck.
            "generator_cpu_percent": (100 * self.cpu_seconds / self.elapsed
                                      if self.elapsed > 0 else 0.0),
            "rate_kept": self.rate_kept, "rate_note": self.rate_note,
            "wakeups": self.wakeups,
            "latency": self.latency.summary(), "service": self.service.summary(),
            "lag": self.lag.summary(),
        }


class _Conn(asyncio.Protocol):
    """One keep-alive client connection carrying at most one request at a time."""

    def __init__(self, gen: OpenLoopGenerator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.index = -1  # the request in flight, -1 when idle
        self.sent_at = 0.0
        self.status = 0
        self.keep_alive = True
        self.failure = "connection_lost"  # what a request in flight died of

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.gen._failed(self, "protocol_upgrade")
        except httptools.HttpParserError:
            self.gen._failed(self, "bad_response")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.gen._lost(self)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.gen._completed(self)

    def send(self, index: int, request: bytes, now: float) -> None:
        self.index = index
        self.sent_at = now
        self.status = 0
        assert self.transport is not None
        self.transport.write(request)


class OpenLoopGenerator:
    """Sends GETs to one URL at a constant rate over a fixed set of connections."""

    def __init__(self, url: str, *, rate: float, duration: float, connections: int = 16,
                 drain_timeout: float = 5.0, connect_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"url must be http://HOST:PORT/..., got {url!r}")
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        if not drain_timeout > 0:
            raise ValueError(f"drain_timeout must be positive, got {drain_timeout}")
        self.host, self.port = parts.hostname, parts.port
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                        "User-Agent: mesh-openloop\r\n\r\n").encode()
        self.rate, self.duration, self.connections = rate, duration, connections
        self.drain_timeout, self.connect_timeout = drain_timeout, connect_timeout
        self.clock = clock
        Schedule(start=0.0, rate=rate, duration=duration)  # validate rate/duration now

    async def run(self) -> OpenLoopResult:
        """Run once: connect, send on schedule, wait for the answers, close everything."""
        self._loop = asyncio.get_running_loop()
        self.result = OpenLoopResult(self.rate, self.duration, self.connections)
        self._conns: list[_Conn] = []
        self._idle: list[_Conn] = []
        self._waiting: collections.deque[int] = collections.deque()
        self._reconnects: set[asyncio.Task] = set()
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._done = self._loop.create_future()
        gc_was_enabled = False
        try:
            for _ in range(self.connections):  # one by one: a failure leaves no stray task
                await self._connect()
            # Start a little ahead so the first ticks do not find a backlog already.
            self._schedule = Schedule(start=self.clock() + 0.02, rate=self.rate,
                                      duration=self.duration)
            self.result.scheduled = self._schedule.total
            self._next = 0
            self._last_done = self._schedule.start
            # A collector pause in the generator would show up as server latency.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            cpu_start = time.process_time()
            self._tick()
            end = self._schedule.due(self._schedule.total) + self.drain_timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._done),
                                       max(0.0, end - self.clock()))
        finally:
            if gc_was_enabled:
                gc.enable()
            self._shutdown()
            if self._reconnects:
                await asyncio.gather(*self._reconnects, return_exceptions=True)
        res = self.result
        res.cpu_seconds = time.process_time() - cpu_start
        res.unfinished = res.scheduled - res.completed - res.error_count
        res.elapsed = self._last_done - self._schedule.start if res.completed else 0.0
        return res

    async def _connect(self) -> None:
        conn = _Conn(self)
        await asyncio.wait_for(
            self._loop.create_connection(lambda: conn, self.host, self.port),
            self.connect_timeout)
        if self._closing:
            assert conn.transport is not None
            conn.transport.close()
            return
        self._conns.append(conn)
        self._make_idle(conn)

    def _tick(self) -> None:
        """Move every due request to the waiting FIFO, feed idle connections, re-arm."""
        self._timer = None
        if self._closing:
            return
        self.result.wakeups += 1
        now = self.clock()
        sched = self._schedule
        until = sched.due_until(self._next, now)
        for i in range(self._next, until):
            self.result.lag.add(now - sched.due(i))
            self._waiting.append(i)
        self._next = until
        while self._waiting and self._idle:
            self._idle.pop().send(self._waiting.popleft(), self.request, now)
            self.result.sent += 1
        if self._next < sched.total:
            # uvloop timers count whole milliseconds and round a shorter delay down to
            # zero, which would spin this callback (and burn the CPU the servers under
            # test need) until the next request is due: wait at least one millisecond,
            # rounded up. A tick that fires early finds nothing due and re-arms, so
            # nothing is ever sent before its time; the lateness this costs is the
            # ``lag`` recorded above, the same for every target.
            delay = sched.due(self._next) - now
            self._timer = self._loop.call_later(math.ceil(delay * 1000) / 1000, self._tick)

    def _make_idle(self, conn: _Conn) -> None:
        conn.index = -1
        if self._waiting and not self._closing:
            conn.send(self._waiting.popleft(), self.request, self.clock())
            self.result.sent += 1
        else:
            self._idle.append(conn)

    def _completed(self, conn: _Conn) -> None:
        now = self.clock()
        res = self.result
        if conn.index < 0:
            # A response nobody asked for: the connection's framing cannot be trusted.
            self._count_event("unsolicited_response")
            self._failed(conn, "unsolicited_response")
            return
        if 200 <= conn.status < 400:
            res.completed += 1
            res.latency.add(now - self._schedule.due(conn.index))
            res.service.add(now - conn.sent_at)
            self._last_done = now
        else:
            self._fail_request(f"status_{conn.status}")
        conn.index = -1
        self._check_done()
        if conn.keep_alive and conn.transport is not None:
            self._make_idle(conn)
        elif conn.transport is not None:
            conn.transport.close()  # connection_lost reconnects

    def _failed(self, conn: _Conn, reason: str) -> None:
        conn.failure = reason
        if conn in self._idle:
            self._idle.remove(conn)  # never hand it another request
        if conn.transport is not None:
            conn.transport.abort()  # connection_lost counts the request in flight

    def _lost(self, conn: _Conn) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
        if conn in self._conns:
            self._conns.remove(conn)
        if conn.index >= 0:
            conn.index = -1
            self._fail_request(conn.failure)
            self._check_done()
        if not self._closing:
            task = self._loop.create_task(self._reconnect())
            self._reconnects.add(task)
            task.add_done_callback(self._reconnects.discard)

    async def _reconnect(self) -> None:
        try:
            await self._connect()
        except (OSError, TimeoutError):
            self._count_event("connect_failed")
            if not self._closing:
                await asyncio.sleep(0.05)  # do not spin on a dead server
                task = self._loop.create_task(self._reconnect())
                self._reconnects.add(task)
                task.add_done_callback(self._reconnects.discard)

    def _fail_request(self, kind: str) -> None:
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1

    def _count_event(self, kind: str) -> None:
        self.result.events[kind] = self.result.events.get(kind, 0) + 1

    def _check_done(self) -> None:
        res = self.result
        if res.completed + res.error_count >= res.scheduled and not self._done.done():
            self._done.set_result(None)

    def _shutdown(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._reconnects:
            task.cancel()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        if not self._done.done():
            self._done.cancel()


async def run(url: str, *, rate: float, duration: float, connections: int = 16,
              warmup: float = 0.0, drain_timeout: float = 5.0) -> OpenLoopResult:
    """One measured run, after an optional unrecorded warm-up at the same rate."""
    if warmup > 0:
        await OpenLoopGenerator(url, rate=rate, duration=warmup, connections=connections,
                                drain_timeout=drain_timeout).run()
    return await OpenLoopGenerator(url, rate=rate, duration=duration, connections=connections,
                                   drain_timeout=drain_timeout).run()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.openloop",
        description="Constant-rate HTTP GETs; latency from each request's scheduled time.")
    p.add_argument("url", help="http://127.0.0.1:PORT/path")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of schedule")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first")
    args = p.parse_args(argv)
    try:
        res = uvloop.run(run(args.url, rate=args.rate, duration=args.duration,
                             connections=args.connections, warmup=args.warmup))
    except (OSError, TimeoutError, ValueError) as e:
        print(f"openloop: {e}", file=sys.stderr)
        return 1
    json.dump(res.as_dict(), sys.stdout, indent=2)
    print()
    return 0 if res.rate_kept else 3


if __name__ == "__main__":
    sys.exit(main())
