"""Servers under test: started in their own process group, always killed as a group.

A :class:`Server` runs one command (nginx, haproxy, meshproxy) in a new session, so
signalling ``-pgid`` reaches the master and every worker it forks; its output goes to a
log file in the run's temporary directory (a chatty server can never block on a pipe,
and a failure message can quote it). :meth:`Server.stop` sends SIGTERM to the group,
waits briefly, then SIGKILLs whatever is left: a benchmark that is interrupted or fails
half-way leaves nothing running. :class:`ServerSet` is the context manager the bench
uses to stop everything it started, in reverse order, whatever happened.

:func:`group_usage` reads resident memory and CPU time of every process in a group from
``/proc`` (Linux only), which is how the bench reports meshproxy's RSS under load.

Neighbours: ``targets`` says what to start; ``bench`` starts and stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ServerFailed(RuntimeError):
    """A server exited or never answered on its port; the message quotes its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Server:
    """One server process (and whatever it forks) in its own process group."""

    def __init__(self, name: str, argv: Sequence[str], *, log_dir: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pgid(self) -> int:
        return self.popen.pid  # a new session's leader: its pid is the group id

    def output(self, limit: int = 4000) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def wait_ready(self, host: str, port: int, timeout: float = 15.0) -> None:
        """Block until ``host:port`` accepts; raise :class:`ServerFailed` if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.popen.poll()
            if rc is not None:
                raise ServerFailed(f"exited with status {rc}: "
                                   f"{_last_line(self.output())}")
            if port_open(host, port):
                return
            time.sleep(0.05)
        raise ServerFailed(f"did not accept on {host}:{port} within {timeout:g}s: "
                           f"{_last_line(self.output())}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the group, wait up to ``grace`` s, then SIGKILL the group. Idempotent."""
        if self.popen.poll() is None:
            _killpg(self.pgid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Sweep the group even after a clean exit: forked workers may outlive the master.
        _killpg(self.pgid, signal.SIGKILL)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()

    def __repr__(self) -> str:
        return f"<Server {self.name} pid={self.popen.pid} rc={self.popen.poll()}>"


class ServerSet:
    """Context manager owning every server a run starts; stops them all on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: list[Server] = []

    def start(self, name: str, argv: Sequence[str], *, port: int,
              timeout: float = 15.0) -> Server:
        server = Server(name, argv, log_dir=self.log_dir)
        self._servers.append(server)
        server.wait_ready("127.0.0.1", port, timeout)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self._servers:
            self._servers.remove(server)

    def __enter__(self) -> ServerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        while self._servers:
            self._servers.pop().stop()


@dataclass(frozen=True)
class GroupUsage:
    """Memory and CPU of one process group at one instant."""

    pids: tuple[int, ...]
    rss_bytes: tuple[int, ...]  # per process, same order as pids
    cpu_seconds: float  # user + system time of the live processes, summed

    @property
    def max_rss(self) -> int:
        return max(self.rss_bytes, default=0)

    @property
    def total_rss(self) -> int:
        return sum(self.rss_bytes)


def group_usage(pgid: int) -> GroupUsage:
    """RSS and CPU time of every live process whose process group is ``pgid``."""
    pids: list[int] = []
    rss: list[int] = []
    cpu = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 2 (comm) may hold spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(b")") + 2 :].split()
        # rest[0] is field 3 (state); pgrp is field 5, utime 14, stime 15, rss 24.
        if len(rest) < 22 or rest[0] == b"Z" or int(rest[2]) != pgid:
            continue
        pids.append(int(entry))
        cpu += (int(rest[11]) + int(rest[12])) / _CLK_TCK
        rss.append(int(rest[21]) * _PAGE)
    return GroupUsage(tuple(pids), tuple(rss), cpu)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"
