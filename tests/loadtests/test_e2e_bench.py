"""The end-to-end benchmark (issue #9), very short, against the whole demo system.

Pins: ``python -m loadtests.e2e_bench --quick`` brings the demo up (API server,
controllers, the agent on the process runtime, sidecars, the edge), really counts scale
events (every new catalog replica is stamped Ready, in the Endpoints and serving a page)
and kill runs (a replica's app is killed and restarted by the agent, pages are counted,
each TrafficPolicy variant reached the sidecars), writes the documented report and JSON,
and leaves no process or file behind -- also when SIGTERM stops it half-way. No
assertion is made about how fast anything is.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.procs import Managed

ROOT = Path(__file__).resolve().parents[2]
# The whole system comes up in each test: generous bounds for a machine shared with
# other work (a quick run takes about 30 s on a quiet machine and minutes on a busy one).
pytestmark = [pytest.mark.system(commands=["busybox"]), pytest.mark.slow,
              pytest.mark.timeout(900)]


def _processes_using(directory: Path) -> list[str]:
    """Live processes whose command line or environment points into ``directory`` (the
    run's TMPDIR: the system's data directory, every Pod's files and logs are there)."""
    needle = str(directory).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and (needle in cmdline or needle in environ):
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {argv}")
    return found


def _bench(spawn: Callable[..., Managed], tmp_path: Path, *args: str) -> Managed:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return spawn.python("-m", "loadtests.e2e_bench", *args, name="e2e-bench",  # type: ignore[attr-defined]
                        cwd=ROOT, env={"TMPDIR": str(tmp)})


def test_quick_run_counts_scale_events_and_kills_and_cleans_up(
        spawn: Callable[..., Managed], tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    proc = _bench(spawn, tmp_path, "--quick", "--kill-duration", "5", "--kill-at", "1.5",
                  "--json", str(out))
    assert proc.wait(600) == 0, proc.output()
    r = json.loads(out.read_text())

    # Every scale-up was counted with its new Pod and all three stamps.
    assert len(r["events"]) == 3
    assert len({e["pod"] for e in r["events"]}) == 3
    for e in r["events"]:
        assert e["pod"].startswith("catalog-"), e
        for stamp in ("created", "ready", "endpoint", "first_request"):
            assert e[stamp] is not None, (stamp, e)
        assert e["first_request"] > e["scaled"]
    assert r["scale_pages"] > 0

    # One kill run per variant, each on a fresh replica that the agent restarted.
    kills = r["kills"]
    assert [k["variant"] for k in kills] == ["outlier+retries", "neither"]
    assert len({k["victim"] for k in kills}) == 2
    for k in kills:
        assert k["pages"] > 0
        assert k["restarts"] > k["restarts_before"], k
        assert k["serving_again_after"] is not None, k
        assert k["pages_failed"] <= k["pages"]
        assert set(k["sidecar"]) == {"catalog_attempts_5xx", "catalog_attempt_errors",
                                     "catalog_retries", "catalog_ejections"}
    with_all, without = kills[0]["policy"], kills[1]["policy"]
    assert "outlier" in with_all["cluster"]
    assert "retry" in with_all["route"]
    assert "outlier" not in without["cluster"]
    assert "retry" not in without["route"]

    text = proc.output()
    assert "| **Ready → first request served** | 3 |" in text
    assert "| outlier+retries |" in text
    assert "| neither |" in text
    assert "**Per variant, summed over its runs" in text
    assert f"{r['machine']['nproc']} CPUs" in text
    assert _processes_using(tmp_path / "tmp") == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_sigterm_mid_run_stops_every_process_it_started(
        spawn: Callable[..., Managed], tmp_path: Path) -> None:
    proc = _bench(spawn, tmp_path, "--scale-events", "50")
    deadline = time.monotonic() + 300
    # Once a catalog Pod's app runs, the API server, agent, sidecars and edge all do.
    while not any("control.demo.shop catalog" in p
                  for p in _processes_using(tmp_path / "tmp")):
        assert proc.poll() is None, proc.output()
        assert time.monotonic() < deadline, "the demo did not start within 300 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 130, proc.output()
    assert "interrupted" in proc.output()
    assert _processes_using(tmp_path / "tmp") == []
    assert list((tmp_path / "tmp").iterdir()) == []
