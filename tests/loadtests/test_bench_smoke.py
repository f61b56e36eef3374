"""The proxy benchmark end to end, very short and bounded, against a real nginx backend.

Pins: ``python -m loadtests.bench`` starts the backend and the peers, really counts
requests through each (wrk in both modes, the open-loop generator), writes a report with
the documented structure (a measured cell or a reason, never an empty one), and leaves
no process or temporary file behind -- also when it is stopped with SIGTERM or SIGINT
mid-run.
No assertion is made about how fast anything is.
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
PEERS = ["nginx", "haproxy", "wrk"]


def _processes_using(directory: Path) -> list[str]:
    """Live processes whose command line or open files point into ``directory`` (the
    run's temp dir: every server gets its config and logs there, nginx workers hold
    their error log open in it)."""
    needle = str(directory)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            fds = [os.readlink(f"/proc/{entry}/fd/{fd}")
                   for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        if state != b"Z" and (needle in cmdline.decode(errors="replace")
                              or any(needle in target for target in fds)):
            found.append(f"{entry}: {cmdline.decode(errors='replace')}")
    return found


def _bench(spawn: Callable[..., Managed], tmp_path: Path, *args: str) -> Managed:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return spawn.python("-m", "loadtests.bench", *args, name="bench", cwd=ROOT,  # type: ignore[attr-defined]
                        env={"TMPDIR": str(tmp)})


@pytest.mark.slow
@pytest.mark.system(commands=PEERS)
def test_quick_run_counts_requests_through_every_target_and_cleans_up(
        spawn: Callable[..., Managed], tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = _bench(spawn, tmp_path, "--quick", "--targets",
                  "direct,nginx,haproxy-tcp,meshproxy-l7", "--rates", "300",
                  "--ol-duration", "0.5", "--connections", "4", "--ol-connections", "2",
                  "--json", str(out))
    assert proc.wait(240) == 0, proc.output()
    results = json.loads(out.read_text())

    for mode in ("keepalive", "close"):
        cells = results["wrk"][mode]
        assert set(cells) == {"direct", "nginx", "haproxy-tcp", "meshproxy-l7"}
        for name in ("direct", "nginx", "haproxy-tcp"):
            cell = cells[name]
            assert cell["requests"] > 0, (mode, name, cell)
            assert cell["error_count"] == 0, (mode, name, cell)
            assert cell["peak_rss_bytes"] > 0
            assert cell["p50_ms"] <= cell["p99_ms"]
        assert cells["nginx"]["processes"] >= 1
        # meshproxy is measured when its engine runs, else says why: never empty.
        mesh = cells["meshproxy-l7"]
        assert mesh.get("requests", 0) > 0 or mesh.get("unavailable"), mesh

    ol = results["openloop"]["300"]
    for name in ("direct", "nginx", "haproxy-tcp"):
        cell = ol[name]
        assert cell["scheduled"] == 150, (name, cell)
        assert cell["completed"] + sum(cell["errors"].values()) + cell["unfinished"] == 150
        assert cell["completed"] > 0
        assert cell["latency"]["count"] == cell["completed"]
        assert {"p50_ms", "p99_ms", "p999_ms"} <= set(cell["latency"])
        assert [r["completed"] for r in cell["rounds"]] == [cell["completed"]]  # --quick: 1
    assert ol["meshproxy-l7"].get("completed", 0) > 0 or ol["meshproxy-l7"].get("unavailable")

    goals = [v["target"] for v in results["verdicts"]]
    assert "meshproxy-l7 req/s >= 0.6x nginx (keep-alive)" in goals
    assert {v["status"] for v in results["verdicts"]} <= {"met", "NOT met", "not measured"}
    text = proc.output()
    assert "Closed loop: wrk" in text
    assert "Open loop: 300 req/s" in text
    assert f"{results['machine']['nproc']} CPUs" in text
    assert _processes_using(tmp_path / "tmp") == []
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.slow
@pytest.mark.system(commands=PEERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_kills_every_server_it_started(
        spawn: Callable[..., Managed], tmp_path: Path, sig: signal.Signals) -> None:
    proc = _bench(spawn, tmp_path, "--targets", "direct,nginx,haproxy-http", "--duration", "30",
                  "--rounds", "1", "--no-openloop")
    deadline = time.monotonic() + 60
    # Servers start in the order backend, nginx, haproxy: once haproxy runs, all do.
    while not any("haproxy -db" in p for p in _processes_using(tmp_path / "tmp")):
        assert proc.poll() is None, proc.output()
        assert time.monotonic() < deadline, "servers did not start within 60 s"
        time.sleep(0.1)
    proc.send_signal(sig)
    assert proc.wait(60) == 130, proc.output()
    assert "interrupted" in proc.output()
    assert _processes_using(tmp_path / "tmp") == []
    assert list((tmp_path / "tmp").iterdir()) == []
