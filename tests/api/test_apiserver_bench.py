"""The API server benchmark runs end to end at a tiny size (never a timing assertion):
every phase reports, every watcher gets every update, and nothing is left running."""

from __future__ import annotations

import json
import subprocess
import sys

from loadtests.apiserver_bench import pct
from support.procs import child_pids


def test_nearest_rank_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 50) == 50.0
    assert pct(values, 99) == 99.0
    assert pct(values, 100) == 100.0
    assert pct([7.0], 99) == 7.0


def test_tiny_benchmark_run_reports_every_phase(tmp_path):
    out = tmp_path / "result.json"
    before = child_pids()
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.apiserver_bench", "--pods", "60", "--clients", "4",
         "--watchers", "5", "--updates", "20", "--update-rates", "50,0", "--list-rounds", "1",
         "--phase-limit", "60", "--json", str(out)],
        capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["create"]["pods"] == 60
    assert result["create"]["errors"] == {}
    assert result["listing"]["paged_count"] == 60
    assert [w["complete_watchers"] for w in result["watch"]] == [5, 5]
    assert [w["deliveries"] for w in result["watch"]] == [100, 100]
    for w in result["watch"]:
        # the store commits a change after its PATCH was sent and before any watcher
        # reads it: measured from the commit, every delay is positive and no longer than
        # from the send (1 ms allows for converting between the two clocks)
        assert 0 < w["commit_p50_ms"] <= w["p50_ms"] + 1
        assert 0 < w["commit_p99_ms"] <= w["p99_ms"] + 1
    assert "| create 60 pods" in proc.stdout
    assert "p99 < 100 ms from commit" in proc.stdout
    assert not child_pids() - before  # the benchmark's own server is gone
