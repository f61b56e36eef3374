"""Probes: the timing/threshold state machine on a ManualClock, and the HTTP and TCP
actions against real sockets (exec probes run in the lifecycle tests' containers)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from control.agent.clock import ManualClock
from control.agent.probes import ProbeOutcome, ProbeTracker, run_action
from control.agent.runtime.base import PortBinding
from control.agent.spec import Container, Probe

OK, FAIL = ProbeOutcome(True), ProbeOutcome(False, "nope")


def test_first_probe_waits_initial_delay_then_runs_every_period():
    """Due at start + initialDelaySeconds, then periodSeconds after each result."""
    clock = ManualClock()
    t = ProbeTracker(Probe(tcp_port=1, initial_delay=15, period=5), "readiness",
                     started_at=clock.now())
    clock.advance(14.9)
    assert not t.due(clock.now())
    clock.advance(0.1)
    assert t.due(clock.now())
    t.record(OK, clock.now())
    assert not t.due(clock.now())
    clock.advance(5)
    assert t.due(clock.now())


def test_initial_verdicts_follow_kubernetes():
    """Liveness starts healthy; readiness and startup start failing until a success."""
    p = Probe(tcp_port=1)
    assert ProbeTracker(p, "liveness", started_at=0).success is True
    assert ProbeTracker(p, "readiness", started_at=0).success is False
    assert ProbeTracker(p, "startup", started_at=0).success is False


def test_verdict_flips_only_after_consecutive_thresholds():
    """failureThreshold consecutive failures flip to failure, a success in between
    resets the count; successThreshold consecutive successes flip back."""
    t = ProbeTracker(Probe(tcp_port=1, failure_threshold=3, success_threshold=2),
                     "liveness", started_at=0)
    assert not t.record(FAIL, 1)
    assert not t.record(FAIL, 2)
    t.record(OK, 3)  # resets the failure streak (verdict stays success)
    assert not t.record(FAIL, 4)
    assert not t.record(FAIL, 5)
    assert t.record(FAIL, 6) is True
    assert t.success is False
    assert t.failed
    assert not t.record(OK, 7)  # one success is below successThreshold=2
    assert t.record(OK, 8) is True
    assert t.success is True


@pytest.fixture
async def http_server():
    """A real HTTP server: /ok → 200, /redirect → 302, /bad → 500, /hang never answers."""
    hung: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1].decode()
        if path == "/hang":
            hung.append(writer)
            return
        status = {"/ok": "200 OK", "/redirect": "302 Found"}.get(path, "500 Oops")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in hung:
        w.close()
    server.close()
    await server.wait_closed()


async def _run(probe: Probe, port: int) -> ProbeOutcome:
    c = Container(name="c", image="i")
    return await run_action(probe, c, runtime=None, container_id="", host="127.0.0.1",  # type: ignore[arg-type]
                            ports=(PortBinding(8080, port, "127.0.0.1"),))


@pytest.mark.parametrize(("path", "ok", "text"), [
    ("/ok", True, ""), ("/redirect", True, ""),
    ("/bad", False, "statuscode: 500"), ("/hang", False, "timed out after 0.3s"),
])
async def test_http_probe_judges_status_and_timeout(http_server, path, ok, text):
    """HTTP GET through the published host port: 2xx/3xx pass, others fail with the
    status in the message, a server that never answers fails at timeoutSeconds."""
    out = await _run(Probe(http_get=(path, 8080), timeout=0.3), http_server)
    assert out.ok is ok
    assert text in out.message


async def test_tcp_probe_passes_on_listener_and_fails_on_closed_port(http_server):
    """TCP probe: a listening port passes, a closed one fails with the connect error."""
    assert (await _run(Probe(tcp_port=8080), http_server)).ok
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    out = await _run(Probe(tcp_port=8080, timeout=1), closed)
    assert not out.ok
    assert "probe failed" in out.message


async def test_probe_on_an_unpublished_port_fails_with_a_reason():
    """A probe port that is not among the container's published ports cannot be
    reached from the node: a failure that says so, not a hang."""
    out = await _run(Probe(tcp_port=9999), 1)
    assert not out.ok
    assert "not a published container port" in out.message
