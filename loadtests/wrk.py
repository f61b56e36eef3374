"""Closed-loop throughput with ``wrk``: requests/s, latency percentiles, errors.

wrk's human output rounds latencies to two decimals with varying units and only lists
some percentiles, so instead a small Lua script (written next to the run's configs)
uses wrk's ``done(summary, latency, requests)`` hook to print one ``WRKJSON {...}`` line
with exact counts and percentiles in microseconds; :func:`parse` reads that line and
nothing else. Connection-per-request mode sends ``Connection: close``: the server then
closes after each answer and wrk reconnects for the next request (its documented
behaviour), so every request pays a TCP handshake through the proxy.

wrk runs one thread (``-t1``) so that, on this two-core machine, the load generator
takes at most one core and the server under test gets the other; the connection count
is an option. Every run is bounded by ``-d`` and by a hard timeout around the process.

Neighbours: ``bench`` calls :func:`run`; ``report`` prints :class:`WrkResult`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Mode = Literal["keepalive", "close"]
MODES: tuple[Mode, ...] = ("keepalive", "close")

_MARK = "WRKJSON "
_SCRIPT = """\
-- Written by loadtests/wrk.py: print exact results as one JSON line.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\\n',
    "MARK", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
""".replace("MARK", _MARK)


class WrkFailed(RuntimeError):
    """wrk exited abnormally or printed no result line."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run against one target in one mode."""

    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        return asdict(self) | {"rps": self.rps, "error_count": self.error_count}


def combine(rounds: list[WrkResult]) -> dict:
    """Several rounds of one cell as one: counts and time summed (so req/s is the overall
    rate), each percentile the median of the rounds' (wrk gives no mergeable histogram),
    max the max; ``rounds_rps`` keeps each round's rate to show the spread."""
    if not rounds:
        raise ValueError("no rounds to combine")
    requests = sum(r.requests for r in rounds)
    duration = sum(r.duration_s for r in rounds)
    errors: dict[str, int] = {}
    for r in rounds:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    out = {
        "requests": requests, "duration_s": duration,
        "rps": requests / duration if duration > 0 else 0.0,
        "errors": errors, "error_count": sum(errors.values()),
        "max_ms": max(r.max_ms for r in rounds),
        "mean_ms": sum(r.mean_ms * r.requests for r in rounds) / max(1, requests),
        "rounds_rps": [round(r.rps, 1) for r in rounds],
    }
    for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
        out[key] = statistics.median(getattr(r, key) for r in rounds)
    return out


def write_script(directory: Path) -> Path:
    path = directory / "wrk-report.lua"
    path.write_text(_SCRIPT)
    return path


def command(url: str, *, script: Path, mode: Mode, duration: float, connections: int,
            timeout_s: float = 5.0) -> list[str]:
    """The wrk argv for one run (whole seconds: wrk's ``-d`` takes an integer)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(timeout_s))}s", "-s", str(script)]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def parse(output: str) -> WrkResult:
    """The :class:`WrkResult` in wrk's output (the ``WRKJSON`` line our script prints)."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            doc = json.loads(line[len(_MARK):])
            lat = doc["latency_us"]
            return WrkResult(
                requests=int(doc["requests"]), duration_s=doc["duration_us"] / 1e6,
                errors={k: int(v) for k, v in doc["errors"].items()},
                p50_ms=lat["p50"] / 1e3, p90_ms=lat["p90"] / 1e3, p99_ms=lat["p99"] / 1e3,
                p999_ms=lat["p999"] / 1e3, max_ms=lat["max"] / 1e3, mean_ms=lat["mean"] / 1e3,
            )
    raise WrkFailed(f"no {_MARK.strip()} line in wrk output: {output[-2000:]!r}")


async def run(url: str, *, script: Path, mode: Mode, duration: float,
              connections: int, prefix: Sequence[str] = ()) -> WrkResult:
    """Run wrk once (after ``prefix``, e.g. ``taskset -c 0``); kill its process group
    if it overstays ``duration`` by far."""
    argv = command(url, script=script, mode=mode, duration=duration, connections=connections)
    proc = await asyncio.create_subprocess_exec(
        *prefix, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=duration + 30)
    except BaseException:
        # Timed out or cancelled: never leave wrk running behind the benchmark.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise WrkFailed(f"wrk exited with {proc.returncode}: {text[-2000:]}")
    return parse(text)
