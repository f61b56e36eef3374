"""Smoke test of the autoscaling run (``python -m loadtests.hpa_run``), end to end with a
short plan: the real system comes up (API server, controllers, collector, HPA in the
script's process; the node agent, the client proxy and the load generator as its
children), the load steps up and down, and the script writes its JSON and PNG and
stops everything it started (the harness fails a test that leaves child processes).

It pins the output's shape and the one outcome a short run on a loaded machine still
guarantees: the replica count rose under the step. Timings are recorded, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow,
              pytest.mark.system(commands=["busybox"])]
# A shorter plan than --quick: 3 s low, 16 s high, 10 s low with a 4 s down-window.
PLAN = {"low_s": 3.0, "high_s": 16.0, "after_s": 10.0, "down_window": 4}


def test_hpa_run_writes_series_and_plot_and_scales_up(tmp_path: Path) -> None:
    """The run exits 0, its JSON holds the config, the sampled replica/rate series, the
    per-second load results, the HPA's rescale Events and the findings; the desired
    replica count went above one; the plot is a PNG."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.hpa_run", "--quick", "--out", str(out),
         "--plan", json.dumps(PLAN)],
        cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "hpa.json").read_text())
    assert {"config", "samples", "load", "events", "findings"} <= result.keys()
    assert result["config"]["high_s"] == PLAN["high_s"]
    samples = [s for s in result["samples"] if "error" not in s]
    assert samples, result["samples"][:5]
    for s in samples:
        assert {"t", "planned_rate", "spec_replicas", "ready_replicas", "pod_rps",
                "total_rps"} <= s.keys()
    times = [s["t"] for s in result["samples"]]
    assert times == sorted(times)
    # One load record per second of the plan, each with its counts and p99.
    duration = PLAN["low_s"] + PLAN["high_s"] + PLAN["after_s"]
    assert len(result["load"]) == int(duration)
    assert all({"t", "rate", "scheduled", "completed", "p99"} <= seg.keys()
               for seg in result["load"])
    assert max(s["spec_replicas"] for s in samples) > 1
    assert result["findings"]["peak_replicas"] > 1
    assert any(e["reason"] == "SuccessfulRescale" for e in result["events"])
    assert (out / "hpa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
