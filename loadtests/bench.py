"""``python -m loadtests.bench``: the proxy benchmark of issue #3, in one bounded run.

1. Start the nginx backend, then every target's server (``targets``), each on a free
   loopback port with its config in a temporary directory. A target that cannot start
   (command missing, config refused, engine not built) becomes a row saying
   "not available (reason)"; the run goes on without it.
2. Closed loop: ``wrk`` against every target, keep-alive and then connection per
   request, after a short warm-up. Meanwhile each target's process group is sampled
   for peak resident memory and CPU (``procs.group_usage``).
3. Open loop: the constant-rate generator (``openloop``) at each rate (1,000 and 5,000
   requests/s by default) through every target, direct first, after a warm-up.
4. Print the tables and the verdicts against the issue's targets (``report``);
   ``--json FILE`` also saves every number.

Bounded: every wrk run has ``-d`` and a hard timeout, every open-loop run a fixed
schedule and a drain timeout, every server start a readiness timeout, and the whole run
a watchdog. SIGINT or SIGTERM cancel the run; every server started is then killed with
its process group and the temporary directory removed. ``--quick`` finishes in well
under a minute (short cells; numbers only good for checking that it works).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import uvloop

from loadtests import openloop, report, targets, wrk
from loadtests.procs import GroupUsage, Server, ServerFailed, ServerSet, group_usage

SAMPLE_INTERVAL = 0.2  # seconds between memory/CPU samples of a target under load
Log = Callable[[str], None]  # where progress lines go (stderr from the command line)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="meshproxy vs nginx, haproxy and direct on loopback: wrk throughput "
                    "and latency, open-loop added latency, meshproxy's memory.")
    p.add_argument("--quick", action="store_true",
                   help="short cells (about 45 s in all): checks the harness, not the proxy")
    p.add_argument("--targets", default=",".join(targets.TARGETS),
                   help="comma-separated subset of: " + ", ".join(targets.TARGETS))
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of wrk per target and mode (default 10; quick 1)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--rates", default=None,
                   help="open-loop rates, comma-separated (default 1000,5000)")
    p.add_argument("--ol-duration", type=float, default=None,
                   help="seconds of open-loop schedule per target and rate "
                        "(default 10; quick 1.5)")
    p.add_argument("--ol-connections", type=int, default=64,
                   help="open-loop connections (a request due while all are busy waits, and "
                        "its wait is counted; enough of them keep the client's own pool from "
                        "being the bottleneck at 5,000/s)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleave the targets in this many rounds per cell, so that "
                        "noise from other work on the machine spreads over all of them; "
                        "added latency is the median over rounds (default 5; quick 1)")
    p.add_argument("--no-wrk", action="store_true", help="skip the closed-loop (wrk) part")
    p.add_argument("--no-openloop", action="store_true", help="skip the open-loop part")
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    return p


def settings_from(args: argparse.Namespace) -> dict:
    """Validated settings; ValueError names the option that is wrong."""
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown or not names:
        raise ValueError(f"--targets: unknown {', '.join(unknown) or '(empty)'}; "
                         f"choose from {', '.join(targets.TARGETS)}")
    # Keep the canonical order: direct and the references come before what they compare.
    names = [t for t in targets.TARGETS if t in names]
    try:
        rates = [float(r) for r in (args.rates or "1000,5000").split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--rates: {args.rates!r} is not a comma-separated list of numbers") \
            from None
    if not rates or any(not 0 < r <= 50_000 for r in rates):
        raise ValueError("--rates: each rate must be between 0 and 50000 requests/s")
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 10.0)
    ol_duration = (args.ol_duration if args.ol_duration is not None
                   else (1.5 if args.quick else 10.0))
    for opt, v, hi in (("--duration", duration, 600), ("--ol-duration", ol_duration, 600)):
        if not 0 < v <= hi:
            raise ValueError(f"{opt}: must be more than 0 and at most {hi} seconds, got {v:g}")
    for opt, v in (("--connections", args.connections), ("--ol-connections",
                                                          args.ol_connections)):
        if not 1 <= v <= 1000:
            raise ValueError(f"{opt}: must be from 1 to 1000, got {v}")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if not 1 <= rounds <= 20:
        raise ValueError(f"--rounds: must be from 1 to 20, got {rounds}")
    if duration / rounds < 1:
        raise ValueError(f"--duration {duration:g} is shorter than one second per round "
                         f"({rounds} rounds): wrk measures whole seconds")
    return {
        "targets": names, "rounds": rounds, "duration": duration,
        "connections": args.connections,
        "rates": rates, "ol_duration": ol_duration, "ol_connections": args.ol_connections,
        "wrk": not args.no_wrk, "openloop": not args.no_openloop, "quick": args.quick,
        "warmup": 0.0 if args.quick else 1.0, "ol_warmup": 0.3 if args.quick else 1.0,
    }


def budget(s: dict) -> float:
    """Generous upper bound on a run's seconds, for the watchdog."""
    n = len(s["targets"])
    wrk_s = (2 * n * (max(1, round(s["duration"])) + max(1, round(s["warmup"])) + 2)
             if s["wrk"] else 0)
    ol_s = (len(s["rates"]) * n * (s["ol_duration"] + s["ol_warmup"] + 12)
            if s["openloop"] else 0)
    return 2 * (wrk_s + ol_s) + 30 * n + 60


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_start": _loadavg(),
            "versions": _versions(), **_source()}


def _source() -> dict[str, str]:
    """The commit measured, and whether meshproxy/ differed from it (uncommitted work)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "meshproxy"], capture_output=True, text=True, timeout=10,
                               check=True)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head.stdout.strip(),
            "meshproxy_tree": "modified" if dirty.stdout.strip() else "as committed"}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _versions() -> dict[str, str]:
    out = {}
    for name, argv in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]),
                       ("wrk", ["wrk", "-v"])):
        if shutil.which(argv[0]) is None:
            continue
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (cp.stdout + cp.stderr).strip().splitlines()
        words = text[0].replace("/", " ").split() if text else []
        out[name] = next((w for w in words if w[:1].isdigit()), "?")
    return out


class _Sampler:
    """Peak RSS and CPU time of one process group while a load runs."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.first = group_usage(pgid)
        self.peak_max, self.peak_total = self.first.max_rss, self.first.total_rss
        self.last: GroupUsage = self.first

    def sample(self) -> None:
        u = group_usage(self.pgid)
        self.last = u
        self.peak_max = max(self.peak_max, u.max_rss)
        self.peak_total = max(self.peak_total, u.total_rss)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.sample()


class _WrkCell:
    """The rounds of one wrk cell (target x mode), with memory and CPU while they ran."""

    def __init__(self) -> None:
        self.rounds: list[wrk.WrkResult] = []
        self.cpu_seconds = 0.0
        self.wall = 0.0
        self.peak_total = 0
        self.peak_max = 0
        self.processes = 0

    async def measure(self, url: str, pgid: int, *, script: Path, mode: wrk.Mode,
                      duration: float, s: dict) -> None:
        sampler = _Sampler(pgid)
        task = asyncio.get_running_loop().create_task(sampler.run())
        started = time.monotonic()
        try:
            res = await wrk.run(url, script=script, mode=mode, duration=duration,
                                connections=s["connections"])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sampler.sample()
        self.rounds.append(res)
        self.wall += time.monotonic() - started
        self.cpu_seconds += sampler.last.cpu_seconds - sampler.first.cpu_seconds
        self.peak_total = max(self.peak_total, sampler.peak_total)
        self.peak_max = max(self.peak_max, sampler.peak_max)
        self.processes = max(self.processes, len(sampler.last.pids))

    def as_dict(self) -> dict:
        return wrk.combine(self.rounds) | {
            "cpu_percent": 100 * self.cpu_seconds / self.wall if self.wall else 0.0,
            "peak_rss_bytes": self.peak_total,
            "peak_rss_max_process_bytes": self.peak_max,
            "processes": self.processes,
        }


def _check_answer(port: int) -> None:
    """One GET through ``port`` must return the backend's body: a target that answers
    anything else is not measured (its numbers would describe a different request)."""
    conn = http.client.HTTPConnection(targets.HOST, port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise ServerFailed(f"a test GET failed: {e!r}") from None
    finally:
        conn.close()
    if resp.status != 200 or body != targets.BODY.encode():
        raise ServerFailed(f"a test GET answered {resp.status} with {body[:80]!r}, "
                           "not the backend's 200")


def _dead(server: Server | None) -> str | None:
    """Why ``server`` can no longer be measured (it exited), or None."""
    if server is None or server.popen.poll() is None:
        return None
    lines = server.output().strip().splitlines()
    return f"exited with status {server.popen.poll()} during the run" + (
        f": {lines[-1].strip()}" if lines else "")


async def run(s: dict, *, log: Log = print) -> dict:
    """Start everything, measure, stop everything; return the results dict."""
    results: dict = {"machine": machine(), "settings": s, "targets": {}, "wrk": {},
                     "openloop": {}}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as d, ServerSet(Path(d)) as servers:
        tmp = Path(d)
        back = targets.backend(tmp)
        if shutil.which("nginx") is None:
            raise ServerFailed("the backend needs nginx (Debian package nginx-light)")
        try:
            backend = servers.start("backend", back.argv or (), port=back.port)
            _check_answer(back.port)
        except ServerFailed as e:
            raise ServerFailed(f"the nginx backend {e}") from None
        running: dict[str, tuple[int, Server | None]] = {}
        for name in s["targets"]:
            planned = targets.plan(name, tmp, back.port)
            if isinstance(planned, targets.Unavailable):
                results["targets"][name] = {"unavailable": planned.reason}
                continue
            try:
                server = None if planned.argv is None else \
                    servers.start(name, planned.argv, port=planned.port)
                _check_answer(planned.port)
            except ServerFailed as e:
                results["targets"][name] = {"unavailable": str(e)}
                log(f"{name}: not available ({e})")
                continue
            running[name] = (planned.port, server)
            results["targets"][name] = {
                "port": planned.port, "layer": targets.LAYER[name],
                # Memory before any load: what the process costs just by running.
                "rss_at_start_bytes": group_usage((server or backend).pgid).max_rss,
            }

        if s["wrk"]:
            if shutil.which("wrk") is None:
                raise ServerFailed("the closed-loop part needs wrk (Debian package wrk); "
                                   "use --no-wrk to skip it")
            await _closed_loop(results, running, backend, tmp=tmp, log=log)
        if s["openloop"]:
            await _open_loop(results, running, log=log)
    results["machine"]["loadavg_end"] = _loadavg()
    results["verdicts"] = report.verdicts(results)
    return results


def _reason(results: dict, running: dict[str, tuple[int, Server | None]],
            name: str) -> str | None:
    """Why ``name`` cannot be measured now (never started, or died since), or None."""
    if name not in running:
        return results["targets"][name]["unavailable"]
    return _dead(running[name][1])


async def _closed_loop(results: dict, running: dict[str, tuple[int, Server | None]],
                       backend: Server, *, tmp: Path, log: Log) -> None:
    """wrk through every target, per mode, in interleaved rounds (see ``--rounds``)."""
    s = results["settings"]
    script = wrk.write_script(tmp)
    per_round = s["duration"] / s["rounds"]
    for mode in wrk.MODES:
        cells: dict[str, _WrkCell] = {}
        failed: dict[str, str] = {}
        for rnd in range(s["rounds"]):
            for name in s["targets"]:
                why = failed.get(name) or _reason(results, running, name)
                if why:
                    failed[name] = why
                    continue
                port, server = running[name]
                url = f"http://{targets.HOST}:{port}/"
                pgid = (server or backend).pgid  # direct: the backend is what is loaded
                try:
                    if rnd == 0 and s["warmup"] > 0:
                        await wrk.run(url, script=script, mode=mode, duration=s["warmup"],
                                      connections=s["connections"])
                    await cells.setdefault(name, _WrkCell()).measure(
                        url, pgid, script=script, mode=mode, duration=per_round, s=s)
                except wrk.WrkFailed as e:
                    failed[name] = _dead(server) or str(e)
        out = results["wrk"].setdefault(mode, {})
        for name in s["targets"]:
            out[name] = ({"unavailable": failed[name]} if name in failed
                         else cells[name].as_dict())
            log(f"wrk {mode:9} {name:13} {_short(out[name])}")


async def _open_loop(results: dict, running: dict[str, tuple[int, Server | None]], *,
                     log: Log) -> None:
    """The open-loop generator through every target, per rate, in interleaved rounds."""
    s = results["settings"]
    per_round = s["ol_duration"] / s["rounds"]
    for rate in s["rates"]:
        merged: dict[str, openloop.OpenLoopResult] = {}
        rounds: dict[str, list[dict]] = {}
        failed: dict[str, str] = {}
        for rnd in range(s["rounds"]):
            for name in s["targets"]:
                why = failed.get(name) or _reason(results, running, name)
                if why:
                    failed[name] = why
                    continue
                url = f"http://{targets.HOST}:{running[name][0]}/"
                try:
                    res = await openloop.run(
                        url, rate=rate, duration=per_round, connections=s["ol_connections"],
                        warmup=s["ol_warmup"] if rnd == 0 else 0.0)
                except (OSError, TimeoutError) as e:
                    failed[name] = f"open-loop generator could not connect: {e}"
                    continue
                rounds.setdefault(name, []).append(_round_summary(res))
                if name in merged:
                    merged[name].merge(res)
                else:
                    merged[name] = res
        out = results["openloop"].setdefault(f"{rate:g}", {})
        for name in s["targets"]:
            out[name] = ({"unavailable": failed[name]} if name in failed
                         else merged[name].as_dict() | {"rounds": rounds[name]})
            log(f"open loop {rate:g}/s {name:13} {_short(out[name])}")


def _round_summary(res: openloop.OpenLoopResult) -> dict:
    """One round's percentiles (ms): ``report.added`` pairs them with direct's round."""
    lat = res.latency.summary()
    return {"completed": res.completed, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"],
            "p999_ms": lat["p999_ms"], "lag_p99_ms": res.lag.percentile(99) * 1e3}


def _short(cell: dict) -> str:
    if "unavailable" in cell:
        return f"not available ({cell['unavailable']})"
    if "rps" in cell:
        return f"{cell['rps']:.0f} req/s, p99 {cell['p99_ms']:.2f} ms"
    return (f"{cell['achieved_rate']:.0f}/s, p50 {cell['latency']['p50_ms']:.2f} ms, "
            f"p99 {cell['latency']['p99_ms']:.2f} ms")


async def _guarded(s: dict) -> dict:
    """:func:`run` under a watchdog, cancelled cleanly by SIGINT (Ctrl-C) or SIGTERM."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # Both cancel the run, so every server is stopped; SIGINT too, because a shell
    # starts background jobs with SIGINT ignored and Python then never raises
    # KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await asyncio.wait_for(
            run(s, log=lambda msg: print(msg, file=sys.stderr, flush=True)), budget(s))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        s = settings_from(args)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    try:
        results = uvloop.run(_guarded(s))
    except ServerFailed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"bench: stopped by the watchdog after {budget(s):.0f} s", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every server started has been stopped", file=sys.stderr)
        return 130
    print(report.render(results), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
