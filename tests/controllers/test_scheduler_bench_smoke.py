"""The scheduler benchmark's harness, run small as a real process: it starts the API
server and the controller manager, places every replica, recovers from a deleted and a
silent node, prints its tables and leaves no process behind. Numbers are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_benchmark_run_completes_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.scheduler_bench", "--nodes", "4", "--replicas",
         "20", "--lost", "1", "--zones", "2", "--heartbeat", "0.3", "--grace", "1",
         "--eviction-timeout", "1", "--orphan-grace", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| replicas bound | 20 / 20 |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["placed"] == 20
    assert result["overcommitted_nodes"] == 0
    assert result["per_node"]["min"] + result["per_node"]["max"] > 0
    assert result["delete_recover_seconds"] is not None, result["notes"]
    assert result["silence_recover_seconds"] is not None, result["notes"]
    assert result["deleted_pods"] + result["silent_pods"] > 0
