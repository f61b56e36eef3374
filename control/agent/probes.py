"""Liveness, readiness and startup probes: when to probe, how, and what the verdict is.

Two halves, kept apart so the timing can be tested on a controllable clock and the
actions against real sockets and containers:

- :class:`ProbeTracker` is the kubelet's prober worker as a pure state machine: the
  first probe is due ``initialDelaySeconds`` after the container started, then every
  ``periodSeconds``; the verdict flips to success after ``successThreshold``
  consecutive successes and to failure after ``failureThreshold`` consecutive
  failures. Initial verdicts are Kubernetes': liveness starts as success (a container
  is alive until proven otherwise), readiness and startup as failure.
- :func:`run_action` performs one probe: HTTP GET (a status from 200 to 399 is a
  success), TCP connect, or exec in the container (exit code 0), each bounded by
  ``timeoutSeconds``; a timeout is a failure.

Where a probe connects: the node's published host port for that container port (the
same address the endpoints point at), so probes work alike on the ``docker`` and
``process`` runtimes. The pod worker (``pod_worker.py``) owns one tracker per probe
of each running container and acts on the verdicts: a liveness or startup failure
restarts the container, readiness drives the Pod's Ready condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from control.agent.runtime.base import PortBinding, Runtime
from control.agent.spec import Container, Probe, ProbeKind


@dataclass(frozen=True)
class ProbeOutcome:
    ok: bool
    message: str = ""


class ProbeTracker:
    """Timing and verdict of one probe of one container run (a new run gets a new one)."""

    def __init__(self, probe: Probe, kind: ProbeKind, *, started_at: float) -> None:
        self.probe = probe
        self.kind = kind
        self.next_at = started_at + probe.initial_delay
        self.success = kind == "liveness"
        self.successes = 0
        self.failures = 0
        self.last_message = ""
        self.probed = False

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, outcome: ProbeOutcome, now: float) -> bool:
        """Count one result taken at ``now``; return True when the verdict changed."""
        self.probed = True
        self.next_at = now + self.probe.period
        self.last_message = outcome.message
        before = self.success
        if outcome.ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.probe.success_threshold:
                self.success = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.probe.failure_threshold:
                self.success = False
        return self.success != before

    @property
    def failed(self) -> bool:
        """True once the failure threshold has been reached (for liveness/startup: kill)."""
        return self.failures >= self.probe.failure_threshold


async def run_action(probe: Probe, container: Container, *, runtime: Runtime,
                     container_id: str, host: str, ports: tuple[PortBinding, ...]
                     ) -> ProbeOutcome:
    """Perform ``probe`` once against the running container."""
    try:
        if probe.exec_command is not None:
            res = await runtime.exec(container_id, list(probe.exec_command),
                                     timeout=probe.timeout)
            if res.exit_code == 0:
                return ProbeOutcome(True)
            text = res.output.decode(errors="replace").strip()[-200:]
            return ProbeOutcome(False, f"exec {list(probe.exec_command)} exited with "
                                       f"{res.exit_code}: {text}")
        ref = probe.http_get[1] if probe.http_get is not None else probe.tcp_port
        assert ref is not None  # parse_pod guarantees exactly one action
        cport = container.port_number(ref)
        hport = next((b.host_port for b in ports if b.container_port == cport), None)
        if hport is None:
            return ProbeOutcome(False, f"probe port {cport} is not a published container "
                                       "port (declare it in ports)")
        if probe.http_get is not None:
            return await asyncio.wait_for(
                _http_get(host, hport, probe.http_get[0], https=probe.http_scheme == "HTTPS"),
                probe.timeout)
        return await asyncio.wait_for(_tcp(host, hport), probe.timeout)
    except TimeoutError:
        return ProbeOutcome(False, f"probe timed out after {probe.timeout:g}s")
    except OSError as e:
        return ProbeOutcome(False, f"probe failed: {e}")
    except Exception as e:  # a runtime error (container gone) is a failed probe
        return ProbeOutcome(False, f"probe failed: {e}")


async def _tcp(host: str, port: int) -> ProbeOutcome:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeOutcome(True)


async def _http_get(host: str, port: int, path: str, *, https: bool) -> ProbeOutcome:
    ctx = None
    if https:  # kubelet does not verify probe certificates either
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "User-Agent: mesh-probe/1.0\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeOutcome(False, f"HTTP probe got a malformed status line {line[:80]!r}")
    status = int(parts[1])
    if 200 <= status < 400:
        return ProbeOutcome(True)
    return ProbeOutcome(False, f"HTTP probe failed with statuscode: {status}")
