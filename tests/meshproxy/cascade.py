"""The cascade scenario of issue 5, shared by its test and ``loadtests/resilience_bench``.

Topology, all on loopback in one event loop::

    A (W closed-loop workers) --> proxy P1 --/b-->     B --> proxy P2 --> C
                                           --/other--> D

A alternates requests to its two routes; B answers each request by calling C through
P2. Then C starts to hang. A has a fixed number of workers (its threads, in a real
service): without protection each one ends up waiting on a /b call that never
finishes and A's *other* route starves; with route timeouts and circuit breakers on P1
and P2 the /b calls fail fast after a few tries and /other keeps its rate.

:func:`run_phase` measures one configuration for a given time and returns the counts
and latencies per route.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from rawclient import request
from upstreams import Upstream, read_request, respond

from meshproxy.config import parse_config
from meshproxy.proxy import Proxy

#: What "protected" adds, on P1's route/cluster to B and on P2's to C: a route timeout
#: well above a healthy call's few milliseconds, and a breaker on the cluster.
PROTECTED_ROUTE = ", timeout: 0.25"
PROTECTED_CLUSTER = ", breaker: {consecutive_failures: 3, reset_timeout: 5}"


class CallingService:
    """B: answers every request by calling ``downstream_port`` (P2) at /c first."""

    def __init__(self) -> None:
        self.downstream_port = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> CallingService:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await read_request(reader) is not None:
                try:
                    r = await request(self.downstream_port, "GET", "/c")
                    status = 200 if r.status == 200 else 502
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    status = 502
                await respond(writer, status, b"b\n", [("x-upstream", "b")])
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@dataclass
class RouteResult:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        total = self.ok + self.failed
        return self.ok / total if total else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


def _config(route: str, cluster: str, p1_b: str, p1_d: str, p2_c: str) -> tuple[str, str]:
    p1 = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [
      {{name: b, match: {{prefix: /b}}, cluster: b {route}}},
      {{name: other, cluster: d}}]}}
clusters:
  - {{name: b, endpoints: ["{p1_b}"] {cluster}}}
  - {{name: d, endpoints: ["{p1_d}"]}}
"""
    p2 = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [{{name: c, cluster: c {route}}}]}}
clusters:
  - {{name: c, endpoints: ["{p2_c}"] {cluster}}}
"""
    return p1, p2


async def run_phase(*, protected: bool, c_hangs: bool, seconds: float = 2.0,
                    workers: int = 8) -> dict[str, RouteResult]:
    """One measurement: build the chain, optionally make C hang, let A's workers run
    for ``seconds``; results per A route ("b", "other")."""
    c, d = Upstream("c"), Upstream("d")
    b = CallingService()
    proxies: list[Proxy] = []
    results = {"b": RouteResult(), "other": RouteResult()}
    tasks: list[asyncio.Task] = []
    try:
        await c.start()
        await d.start()
        await b.start()
        p1_text, p2_text = _config(PROTECTED_ROUTE if protected else "",
                                   PROTECTED_CLUSTER if protected else "",
                                   f"127.0.0.1:{b.port}", d.address, c.address)
        p2 = Proxy(parse_config(p2_text))
        await p2.start()
        proxies.append(p2)
        b.downstream_port = p2.listeners["web"].port
        p1 = Proxy(parse_config(p1_text))
        await p1.start()
        proxies.append(p1)
        port = p1.listeners["web"].port
        if c_hangs:
            c.delay = 3600.0  # C stops answering
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            i = 0
            while time.monotonic() < stop_at:
                target = "/b" if i % 2 == 0 else "/other"
                i += 1
                res = results["b" if target == "/b" else "other"]
                t0 = time.monotonic()
                try:
                    r = await request(port, "GET", target)
                    good = r.status == 200
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    good = False
                res.latencies.append(time.monotonic() - t0)
                if good:
                    res.ok += 1
                else:
                    res.failed += 1

        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
        # Workers stuck on a hanging call are what the scenario measures: stop waiting
        # for them at the end of the window.
        await asyncio.wait(tasks, timeout=seconds + 1.0)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        for p in reversed(proxies):
            await p.close()
        await b.stop()
        await c.stop()
        await d.stop()
    return results
