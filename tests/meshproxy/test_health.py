"""Active health checks against real backends on 127.0.0.1.

The backend is an asyncio ``Protocol`` server whose behaviour the test switches at run
time (answer 200, answer 503, hang, close, or stop listening), so an endpoint really
starts failing and really recovers. Probes run every 20 ms; the tests wait for the
verdict to change (up to 20 s, generous for a loaded machine) and then assert the
exact counts the thresholds imply, never a duration.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest

from meshproxy.balance import PickContext, make_balancer
from meshproxy.endpoint import Endpoint
from meshproxy.health import HealthCheckConfig, HealthChecker, HealthState, probe_http, probe_tcp
from meshproxy.schema import SchemaError, format_path, parse

FAST = dict(interval_s=0.02, interval_jitter_s=0.01, timeout_s=0.02)


class Backend(asyncio.Protocol):
    """One connection of the test backend; behaviour from the shared ``mode`` box."""

    def __init__(self, server: BackendServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.transports.add(transport)
        self.server.connections += 1
        if self.server.mode == "close":
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.server.requests.append(data)
        mode = self.server.mode
        if mode == "hang":
            return
        if mode == "garbage":
            self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
        else:
            self.transport.write(f"HTTP/1.1 {mode} X\r\ncontent-length: 0\r\n\r\n".encode())
        self.transport.close()


class BackendServer:
    def __init__(self) -> None:
        self.mode = "200"
        self.transports: set[asyncio.BaseTransport] = set()
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Backend(self), "127.0.0.1", port,
                                               reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self.transports):
                t.abort()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture
async def backend() -> AsyncIterator[BackendServer]:
    b = BackendServer()
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
async def checkers() -> AsyncIterator[Callable[..., HealthChecker]]:
    made: list[HealthChecker] = []

    def make(config: HealthCheckConfig, **kw) -> HealthChecker:
        c = HealthChecker("shop", config, rng=random.Random(1), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.aclose()


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_state_machine_applies_thresholds_exactly() -> None:
    """3 consecutive failures make a healthy endpoint unhealthy (a success in between
    resets the count); 2 consecutive successes bring it back."""
    s = HealthState()
    kw = dict(unhealthy_threshold=3, healthy_threshold=2, at=0.0)
    assert not s.record(False, "boom", **kw)
    assert not s.record(False, "boom", **kw)
    assert not s.record(True, "", **kw)  # resets the failure streak
    assert not s.record(False, "boom", **kw)
    assert not s.record(False, "boom", **kw)
    assert s.healthy
    assert s.record(False, "boom", **kw)
    assert not s.healthy
    assert s.last_error == "boom"
    assert not s.record(True, "", **kw)
    assert s.record(True, "", **kw)
    assert s.healthy
    assert (s.checks_total, s.failures_total, s.transitions_total) == (8, 5, 2)


async def test_http_endpoint_turns_unhealthy_after_threshold_and_recovers(
        backend: BackendServer, checkers) -> None:
    """A backend that starts answering 503 is marked unhealthy after exactly
    unhealthy_threshold failed probes; when it answers 200 again it is healthy after
    healthy_threshold successes. The gauge and /clusters status follow."""
    ep = Endpoint("127.0.0.1", backend.port)
    checker = checkers(HealthCheckConfig(unhealthy_threshold=3, healthy_threshold=2,
                                         path="/ready", **FAST))
    checker.update([ep])
    await wait_until(lambda: checker.state(ep).checks_total >= 2, "first probes")
    assert ep.healthy
    assert backend.requests[0].startswith(b"GET /ready HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{backend.port}".encode() in backend.requests[0]

    backend.mode = "503"
    await wait_until(lambda: not ep.healthy, "unhealthy verdict")
    st = checker.state(ep)
    assert st.consecutive_failures == 3
    assert st.last_error == "unexpected status 503"
    assert checker.healthy_gauge() == {ep.address: 0.0}
    assert checker.status()[0]["healthy"] is False

    backend.mode = "200"
    await wait_until(lambda: ep.healthy, "healthy verdict")
    assert checker.state(ep).consecutive_successes == 2
    assert checker.healthy_gauge() == {ep.address: 1.0}
    assert checker.state(ep).transitions_total == 2


@pytest.mark.parametrize(("mode", "error"), [
    ("hang", "timeout after"),
    ("close", "connection closed before a response"),
    ("garbage", "malformed response"),
])
async def test_http_probe_failure_kinds_are_reported(backend: BackendServer, mode: str,
                                                    error: str) -> None:
    """A backend that hangs, closes at once or speaks something else fails the probe
    with a reason that says which."""
    backend.mode = mode
    ok, detail = await probe_http("127.0.0.1", backend.port, path="/", host_header="x",
                                  expected=frozenset({200}), timeout_s=0.5)
    assert not ok
    assert error in detail


async def test_http_probe_honours_expected_statuses(backend: BackendServer) -> None:
    backend.mode = "204"
    assert await probe_http("127.0.0.1", backend.port, path="/", host_header="x",
                            expected=frozenset({200}), timeout_s=5.0) == (
        False, "unexpected status 204")
    assert await probe_http("127.0.0.1", backend.port, path="/", host_header="x",
                            expected=frozenset({200, 204}), timeout_s=5.0) == (
        True, "status 204")


async def test_tcp_check_follows_a_listener_going_away_and_coming_back(
        backend: BackendServer, checkers) -> None:
    """TCP mode: when the port stops accepting (connection refused) the endpoint goes
    unhealthy; when a listener is back on the same port it recovers."""
    ep = Endpoint("127.0.0.1", backend.port)
    checker = checkers(HealthCheckConfig(kind="tcp", unhealthy_threshold=2,
                                         healthy_threshold=1, **FAST))
    checker.update([ep])
    await wait_until(lambda: backend.connections >= 2, "probes connecting")
    assert ep.healthy
    port = backend.port
    await backend.stop()
    await wait_until(lambda: not ep.healthy, "unhealthy verdict")
    assert "connect failed" in checker.state(ep).last_error
    await backend.start(port)
    await wait_until(lambda: ep.healthy, "healthy verdict")


async def test_update_starts_and_stops_probes_with_the_endpoint_set(
        backend: BackendServer, checkers) -> None:
    """A new endpoint is probed; a removed one is no longer probed nor reported, and
    a probe of a dead address marks only that endpoint unhealthy."""
    good = Endpoint("127.0.0.1", backend.port)
    dead_backend = BackendServer()
    await dead_backend.start()
    dead = Endpoint("127.0.0.1", dead_backend.port)
    await dead_backend.stop()  # nothing listens there any more
    checker = checkers(HealthCheckConfig(unhealthy_threshold=1, **FAST))
    checker.update([good])
    checker.update([good, dead])
    await wait_until(lambda: not dead.healthy, "dead endpoint unhealthy")
    assert good.healthy
    checker.update([good])
    assert [s["address"] for s in checker.status()] == [good.address]
    assert checker.state(dead) is None


async def test_on_change_is_called_on_each_transition(backend: BackendServer,
                                                      checkers) -> None:
    seen: list[tuple[str, bool]] = []
    ep = Endpoint("127.0.0.1", backend.port)
    checker = checkers(HealthCheckConfig(unhealthy_threshold=1, healthy_threshold=1, **FAST),
                       on_change=lambda e, healthy: seen.append((e.address, healthy)))
    backend.mode = "500"
    checker.update([ep])
    await wait_until(lambda: seen, "a transition")
    backend.mode = "200"
    await wait_until(lambda: len(seen) >= 2, "the recovery")
    assert seen[:2] == [(ep.address, False), (ep.address, True)]


async def test_reconfigure_applies_from_the_next_probe_and_keeps_state(
        backend: BackendServer, checkers) -> None:
    """A reload that accepts 503 as healthy brings a 503-answering endpoint back; its
    counters carry over rather than restarting."""
    backend.mode = "503"
    ep = Endpoint("127.0.0.1", backend.port)
    checker = checkers(HealthCheckConfig(unhealthy_threshold=1, healthy_threshold=1, **FAST))
    checker.update([ep])
    await wait_until(lambda: not ep.healthy, "unhealthy verdict")
    failures = checker.state(ep).failures_total
    checker.reconfigure(HealthCheckConfig(unhealthy_threshold=1, healthy_threshold=1,
                                          expected_statuses={200, 503}, **FAST))
    await wait_until(lambda: ep.healthy, "healthy under the new config")
    assert checker.state(ep).failures_total >= failures >= 1


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "peak_ewma"])
async def test_balancer_stops_and_resumes_sending_to_a_checked_endpoint(
        policy: str, checkers) -> None:
    """Health checks and balancing together, on three real backends: once one answers
    503 and is marked unhealthy, no pick goes to it (1 of 3 down is above the panic
    threshold); once it recovers, it is picked again."""
    servers = [BackendServer() for _ in range(3)]
    for srv in servers:
        await srv.start()
    try:
        eps = [Endpoint("127.0.0.1", srv.port) for srv in servers]
        lb = make_balancer(policy, eps, rng=random.Random(5))
        checker = checkers(HealthCheckConfig(unhealthy_threshold=2, healthy_threshold=1,
                                             **FAST))
        checker.update(eps)
        loop = asyncio.get_running_loop()

        def picks() -> set[Endpoint]:
            return {lb.pick(PickContext(now=loop.time())) for _ in range(300)}

        assert picks() == set(eps)
        servers[1].mode = "503"
        await wait_until(lambda: not eps[1].healthy, "unhealthy verdict")
        assert picks() == {eps[0], eps[2]}
        assert lb.panic_total == 0
        servers[1].mode = "200"
        await wait_until(lambda: eps[1].healthy, "recovery")
        assert eps[1] in picks()
    finally:
        for srv in servers:
            await srv.stop()


async def test_aclose_cancels_every_probe_even_mid_request(backend: BackendServer) -> None:
    """Closing while probes hang on silent backends leaves no task behind (the leak
    guard of the test harness checks it) and refuses further updates."""
    other = BackendServer()
    await other.start()
    try:
        backend.mode = other.mode = "hang"
        checker = HealthChecker("shop", HealthCheckConfig(interval_s=30.0, timeout_s=30.0,
                                                          initial_jitter_s=0.0),
                                rng=random.Random(2))
        eps = [Endpoint("127.0.0.1", backend.port), Endpoint("127.0.0.1", other.port)]
        checker.update(eps)
        await wait_until(lambda: backend.requests and other.requests, "both probes sent")
        assert all(checker.state(e).checks_total == 0 for e in eps)  # hung mid-request
        await checker.aclose()
        await checker.aclose()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            checker.update(eps)
    finally:
        await other.stop()


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"kind": "grpc"}, "kind", "expected one of 'http', 'tcp'"),
    ({"path": "healthz"}, "path", "must start with '/'"),
    ({"path": "/a b"}, "path", "no spaces"),
    ({"expected_statuses": []}, "expected_statuses", "at least one"),
    ({"expected_statuses": [700]}, "expected_statuses", "100-599"),
    ({"interval_s": 1.0, "timeout_s": 2.0}, "", "must not exceed interval_s"),
    ({"unhealthy_threshold": 0}, "unhealthy_threshold", ">= 1"),
    ({"host": "a b"}, "host", "without spaces"),
])
def test_bad_health_check_config_names_the_field(data: dict, field: str, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse(data, HealthCheckConfig)
    [problem] = info.value.problems
    assert format_path(problem.path, dotted=True) == (f".{field}" if field else "")
    assert message in problem.message


async def test_probe_tcp_reports_refused_connections() -> None:
    b = BackendServer()
    await b.start()
    port = b.port
    await b.stop()
    ok, detail = await probe_tcp("127.0.0.1", port, timeout_s=5.0)
    assert not ok
    assert detail.startswith("connect failed")
