"""Active health checks: probe each endpoint of a cluster and set ``Endpoint.healthy``.

One :class:`HealthChecker` per cluster that configures checks. Every endpoint gets one
asyncio task that probes it every ``interval_s`` (plus up to ``interval_jitter_s`` of
random jitter, and a random first delay, so a proxy with many endpoints, or many
proxies, do not probe in lockstep), each probe bounded by ``timeout_s``:

- ``http``: ``GET path`` over a fresh connection (``Connection: close``), the status
  line parsed with httptools; healthy when the status is one of ``expected_statuses``.
- ``tcp``: healthy when a TCP connection is accepted.

Verdicts go through :class:`HealthState`, a small state machine with Envoy's
thresholds: ``unhealthy_threshold`` consecutive failures mark a healthy endpoint
unhealthy, ``healthy_threshold`` consecutive successes bring it back. Endpoints start
healthy (as ``Endpoint`` does) so a new cluster serves at once; a bad endpoint is out
after ``unhealthy_threshold`` probes. Probes are out of the request path, so they use
asyncio streams rather than the engine's protocol machinery.

The checker writes ``Endpoint.healthy`` only; balancers read it (see
``meshproxy.balance.base``). ``status()`` feeds the admin ``/clusters`` page and
``healthy_gauge()`` the per-endpoint health gauge. ``update()`` follows endpoint-set
changes (new endpoints get a probe task, removed ones lose theirs) and ``aclose()``
cancels and awaits every task, so nothing outlives the checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import httptools
from msgspec import Meta

from meshproxy.endpoint import Endpoint
from meshproxy.schema import Frozen, field_error

log = logging.getLogger(__name__)

MAX_STATUS_HEAD = 64 * 1024  # bytes read at most while looking for the status line


class HealthCheckConfig(Frozen, kw_only=True):
    """A cluster's active health check."""

    kind: Literal["http", "tcp"] = "http"
    # Request path of the HTTP check; a cheap endpoint of the service's own.
    path: str = "/healthz"
    # Host header of the HTTP check; None sends the endpoint's host:port.
    host: str | None = None
    # Statuses that count as healthy. Only 200 by default, as Envoy: a redirect or a
    # 204 from a health path usually means it is not the health path.
    expected_statuses: frozenset[int] = frozenset({200})
    # Seconds between probes of one endpoint; Envoy's examples use 5 s.
    interval_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 5.0
    # Up to this many extra seconds at random per interval, so probes spread out.
    interval_jitter_s: Annotated[float, Meta(ge=0.0, le=3600.0)] = 0.5
    # First probe after a random delay of up to this many seconds (Envoy's
    # initial_jitter); None spreads first probes over one whole interval.
    initial_jitter_s: Annotated[float, Meta(ge=0.0, le=3600.0)] | None = None
    # Seconds a probe may take (connect plus status line) before it counts as failed.
    timeout_s: Annotated[float, Meta(gt=0.0, le=600.0)] = 1.0
    # Consecutive failures before a healthy endpoint is marked unhealthy: 3 rides out
    # a single lost packet or GC pause (Envoy's examples use 2-3).
    unhealthy_threshold: Annotated[int, Meta(ge=1, le=100)] = 3
    # Consecutive successes before an unhealthy endpoint is healthy again: 2 avoids
    # flapping on one lucky probe of a crash-looping process.
    healthy_threshold: Annotated[int, Meta(ge=1, le=100)] = 2

    def __post_init__(self) -> None:
        path, host, statuses = self.path, self.host, self.expected_statuses
        if not path.startswith("/") or not path.isascii() or any(
                c <= " " or c == "\x7f" for c in path):
            raise field_error("path", f"path must start with '/' and hold no spaces or "
                              f"control characters, got {path!r}")
        if host is not None and (not host or not host.isascii()
                                 or any(c <= " " or c == "\x7f" for c in host)):
            raise field_error("host",
                              f"host must be non-empty ASCII without spaces, got {host!r}")
        if not statuses:
            raise field_error("expected_statuses",
                              "expected_statuses must name at least one status")
        bad = sorted(s for s in statuses if not 100 <= s <= 599)
        if bad:
            raise field_error("expected_statuses",
                              f"expected statuses must be 100-599, got {bad}")
        if self.timeout_s > self.interval_s:
            raise ValueError(f"timeout_s ({self.timeout_s}) must not exceed interval_s "
                             f"({self.interval_s}): probes of one endpoint would overlap")


@dataclass(slots=True)
class HealthState:
    """What the checker knows about one endpoint; ``record`` applies one probe."""

    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    checks_total: int = 0
    failures_total: int = 0
    transitions_total: int = 0
    last_error: str = ""
    last_checked_at: float = 0.0  # wall-clock time, for humans reading /clusters

    def record(self, ok: bool, detail: str, *, unhealthy_threshold: int,
               healthy_threshold: int, at: float) -> bool:
        """Apply one probe result; True when the verdict changed."""
        self.checks_total += 1
        self.last_checked_at = at
        if ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            self.last_error = ""
            if not self.healthy and self.consecutive_successes >= healthy_threshold:
                self.healthy = True
                self.transitions_total += 1
                return True
        else:
            self.failures_total += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            self.last_error = detail
            if self.healthy and self.consecutive_failures >= unhealthy_threshold:
                self.healthy = False
                self.transitions_total += 1
                return True
        return False


async def probe_tcp(host: str, port: int, *, timeout_s: float) -> tuple[bool, str]:
    """Whether ``host:port`` accepts a TCP connection within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"connect timeout after {timeout_s}s"
    except OSError as e:
        return False, f"connect failed: {e.strerror or e}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, "connected"


class _StatusOnly:
    """httptools callbacks: note that the status line and headers are complete."""

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


async def probe_http(host: str, port: int, *, path: str, host_header: str,
                     expected: frozenset[int], timeout_s: float) -> tuple[bool, str]:
    """``GET path`` on ``host:port``; healthy when the status is in ``expected``."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                         "User-Agent: meshproxy-health\r\nConnection: close\r\n\r\n".encode())
            state = _StatusOnly()
            parser = httptools.HttpResponseParser(state)
            seen = 0
            while not state.done:
                chunk = await reader.read(4096)
                if not chunk:
                    return False, "connection closed before a response"
                seen += len(chunk)
                if seen > MAX_STATUS_HEAD:
                    return False, f"no complete response head in {MAX_STATUS_HEAD} bytes"
                parser.feed_data(chunk)
            status = parser.get_status_code()
    except TimeoutError:
        return False, f"timeout after {timeout_s}s"
    except httptools.HttpParserError as e:
        return False, f"malformed response: {e}"
    except OSError as e:
        return False, f"connect failed: {e.strerror or e}"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if status in expected:
        return True, f"status {status}"
    return False, f"unexpected status {status}"


class HealthChecker:
    """Active health checking of one cluster's endpoints (see the module docstring)."""

    def __init__(self, cluster: str, config: HealthCheckConfig, *,
                 rng: random.Random | None = None,
                 on_change: Callable[[Endpoint, bool], None] | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._states: dict[Endpoint, HealthState] = {}
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._closed = False

    def reconfigure(self, config: HealthCheckConfig) -> None:
        """Use ``config`` from the next probe on (a reload); states are kept."""
        self.config = config

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Follow the cluster's endpoint set: probe new endpoints, stop probing removed
        ones. Needs a running event loop."""
        if self._closed:
            raise RuntimeError(f"health checker of cluster {self.cluster} is closed")
        wanted = set(endpoints)
        for ep in [e for e in self._tasks if e not in wanted]:
            self._tasks.pop(ep).cancel()
            self._states.pop(ep, None)
        for ep in endpoints:
            if ep not in self._tasks:
                self._states.setdefault(ep, HealthState(healthy=ep.healthy))
                self._tasks[ep] = asyncio.get_running_loop().create_task(
                    self._run(ep), name=f"health {self.cluster} {ep.address}")

    async def aclose(self) -> None:
        """Cancel every probe and wait until they are gone. Idempotent."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def check(self, endpoint: Endpoint) -> tuple[bool, str]:
        """Run one probe of ``endpoint`` now with the current config (no state change)."""
        cfg = self.config
        if cfg.kind == "tcp":
            return await probe_tcp(endpoint.host, endpoint.port, timeout_s=cfg.timeout_s)
        return await probe_http(endpoint.host, endpoint.port, path=cfg.path,
                                host_header=cfg.host or endpoint.address,
                                expected=cfg.expected_statuses, timeout_s=cfg.timeout_s)

    async def _run(self, endpoint: Endpoint) -> None:
        # A random first delay spreads the probes of a cluster.
        first = self.config.initial_jitter_s
        await asyncio.sleep(self._rng.uniform(
            0.0, self.config.interval_s if first is None else first))
        while True:
            ok, detail = await self.check(endpoint)
            self._apply(endpoint, ok, detail)
            cfg = self.config
            await asyncio.sleep(cfg.interval_s + self._rng.uniform(0.0, cfg.interval_jitter_s))

    def _apply(self, endpoint: Endpoint, ok: bool, detail: str) -> None:
        state = self._states.get(endpoint)
        if state is None:
            return  # removed while the probe ran
        cfg = self.config
        changed = state.record(ok, detail, unhealthy_threshold=cfg.unhealthy_threshold,
                               healthy_threshold=cfg.healthy_threshold, at=time.time())
        if changed:
            endpoint.healthy = state.healthy
            log.warning("cluster %s endpoint %s is now %s (%s)", self.cluster,
                        endpoint.address, "healthy" if state.healthy else "unhealthy", detail)
            if self._on_change is not None:
                self._on_change(endpoint, state.healthy)

    def state(self, endpoint: Endpoint) -> HealthState | None:
        return self._states.get(endpoint)

    def status(self) -> list[dict[str, object]]:
        """Per-endpoint health for the admin ``/clusters`` page."""
        return [{"address": ep.address, "healthy": st.healthy,
                 "consecutive_failures": st.consecutive_failures,
                 "consecutive_successes": st.consecutive_successes,
                 "checks_total": st.checks_total, "failures_total": st.failures_total,
                 "transitions_total": st.transitions_total, "last_error": st.last_error,
                 "last_checked_at": st.last_checked_at}
                for ep, st in self._states.items()]

    def healthy_gauge(self) -> dict[str, float]:
        """Gauge values per endpoint address: 1 healthy, 0 unhealthy."""
        return {ep.address: 1.0 if st.healthy else 0.0 for ep, st in self._states.items()}

    def __repr__(self) -> str:
        up = sum(1 for s in self._states.values() if s.healthy)
        return f"<HealthChecker {self.cluster} {self.config.kind} {up}/{len(self._states)} up>"
