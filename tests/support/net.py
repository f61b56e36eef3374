"""Ports and readiness: a free loopback port, waiting until a port or URL answers."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request

#: Ports already handed out by this process: the kernel may give a just-closed port
#: again at once, and two ``free_port()`` calls in a row (a listener and its admin
#: port) then collide.
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the kernel picks it), never
    one this process was already given."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no port the kernel offers is new to this test process")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0, *, proc=None) -> None:
    """Block until ``host:port`` accepts a connection; raise with context when it never does.

    When ``proc`` (a :class:`support.procs.Managed`) is given and exits first, fail at once
    with its output instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited with {proc.poll()} before {host}:{port} answered\n"
                + proc.output()
            )
        time.sleep(0.02)
    extra = ("\n" + proc.output()) if proc is not None else ""
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s{extra}")


def wait_for_url(url: str, timeout: float = 10.0, *, status: int | None = 200, proc=None) -> int:
    """Block until a GET of ``url`` answers (with ``status`` when given); return the status."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited with {proc.poll()} before {url} answered\n" + proc.output()
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                code = resp.status
        except urllib.error.HTTPError as e:
            code = e.code
        except (OSError, ValueError) as e:
            last = e
            time.sleep(0.05)
            continue
        if status is None or code == status:
            return code
        last = f"status {code}"
        time.sleep(0.05)
    extra = ("\n" + proc.output()) if proc is not None else ""
    raise TimeoutError(f"{url} did not answer as expected within {timeout}s (last: {last}){extra}")


async def async_wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Asyncio form of :func:`wait_for_port`, for tests already inside an event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
        except (TimeoutError, OSError):
            await asyncio.sleep(0.02)
            continue
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")
