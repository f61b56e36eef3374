"""The autoscaling run (``python -m loadtests.hpa_run``) and its findings (``hpa_plot``).

The smoke test runs it end to end with a short plan: the real system comes up (API
server, controllers, collector, HPA in the script's process; the node agent, the client
proxy and the load generator as its children), the load steps up and down, and the
script writes its JSON and PNG and stops everything it started (the harness fails a
test that leaves child processes).

It pins the output's shape and the one outcome a short run on a loaded machine still
guarantees: the replica count rose under the step. Timings are recorded, not asserted.
The findings are checked on hand-made series, where the right answer is known.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from loadtests.hpa_plot import findings, policy_respected, scale_up_steps
from loadtests.hpa_run import QUICK, HPARunConfig, main

ROOT = Path(__file__).resolve().parents[2]
# A shorter plan than --quick: 3 s low, 16 s high, 10 s low with a 4 s down-window.
PLAN = {"low_s": 3.0, "high_s": 16.0, "after_s": 10.0, "down_window": 4}


@pytest.mark.timeout(240)
@pytest.mark.slow
@pytest.mark.system(commands=["busybox"])
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


def _sample(t: float, replicas: int, ready: int | None = None, **pods: float) -> dict:
    return {"t": t, "planned_rate": 0.0, "spec_replicas": replicas,
            "ready_replicas": replicas if ready is None else ready, "pod_rps": pods,
            "total_rps": sum(pods.values())}


def _seg(t: float, p99: float, *, errors: int = 0) -> dict:
    return {"t": t, "rate": 1.0, "scheduled": 10, "completed": 10 - errors,
            "errors": errors, "unfinished": 0, "p50": p99 / 2, "p99": p99}


def test_policy_check_counts_steps_closer_than_one_period() -> None:
    """Two +1 steps 2 s apart break "1 Pod per 5 s"; 5 s apart (within the sampling
    resolution) they do not; a +2 step breaks it on its own."""
    assert not policy_respected([(10.0, 1), (12.0, 1)], up_pods=1, up_period=5,
                                resolution=0.5)
    assert policy_respected([(10.0, 1), (14.6, 1)], up_pods=1, up_period=5, resolution=0.5)
    assert not policy_respected([(10.0, 2)], up_pods=1, up_period=5, resolution=0.5)
    assert policy_respected([(10.0, 2)], up_pods=2, up_period=5, resolution=0.5)


def test_findings_on_a_known_series() -> None:
    """Scale-up 2 s after the step, policy kept, per-Pod rates averaged late in the high
    phase, p99 over target for two seconds then under to stay, scale-down 12 s after
    the drop against a 10 s window."""
    cfg = {**asdict(QUICK), "low_s": 5.0, "high_s": 20.0, "after_s": 20.0,
           "down_window": 10, "up_pods": 1, "up_period": 3, "p99_target": 0.1}
    samples = [_sample(t, 1, a=5.0) for t in (0.0, 4.0, 6.0)]
    samples += [_sample(7.0, 2, 1, a=30.0), _sample(8.0, 2, a=20.0, b=10.0),
                _sample(10.0, 3, 2, a=15.0, b=15.0), _sample(12.0, 3, a=10.0, b=10.0, c=10.0)]
    samples += [_sample(t, 3, a=10.0, b=10.0, c=10.0) for t in (19.0, 22.0, 25.0)]
    samples += [_sample(37.0, 2, a=3.0, b=2.0), _sample(40.0, 1, a=5.0)]
    samples.insert(3, {"t": 6.5, "error": "timeout"})
    load = [_seg(t, 0.02) for t in range(45)]
    load[5], load[6] = _seg(5, 0.8), _seg(6, 0.3)
    load[30] = _seg(30, 0.02, errors=1)
    got = findings({"config": cfg, "samples": samples, "load": load})
    assert scale_up_steps(samples) == [(7.0, 1), (10.0, 1)]
    assert got["sample_errors"] == 1
    assert got["first_scale_up_after_step_s"] == 2.0
    assert got["peak_replicas"] == 3
    assert got["peak_ready_after_step_s"] == 7.0
    assert got["policy_respected"] is True
    assert got["smallest_gap_between_steps_s"] == 3.0
    assert got["late_high_per_pod_rps"] == {"a": 10.0, "b": 10.0, "c": 10.0}
    assert got["peak_p99_s"] == 0.8
    assert got["seconds_over_target_in_high_phase"] == 2
    assert got["p99_under_target_to_stay_after_step_s"] == 2.0
    assert got["requests_failed_or_unfinished"] == 1
    assert got["first_scale_down_after_drop_s"] == 12.0
    assert got["scale_down_not_before_window"] is True
    assert got["final_replicas"] == 1


def test_findings_say_none_when_nothing_scaled() -> None:
    """No scale-up: no time to scale up, no policy verdict, no scale-down."""
    cfg = {**asdict(QUICK), "low_s": 2.0, "high_s": 4.0, "after_s": 10.0}
    samples = [_sample(float(t), 1, a=1.0) for t in range(16)]
    got = findings({"config": cfg, "samples": samples,
                    "load": [_seg(t, 0.02) for t in range(16)]})
    assert got["first_scale_up_after_step_s"] is None
    assert got["policy_respected"] is None
    assert got["first_scale_down_after_drop_s"] is None
    assert got["p99_under_target_to_stay_after_step_s"] == 0.0


@pytest.mark.parametrize(("plan", "message"), [
    ('{"bogus": 1}', "bogus"),
    ('{"low_rate": 500}', "low_rate < high_rate"),
    ('{"after_s": 3}', "must exceed down_window"),
    ("[1]", "JSON object"),
    ("{", "--plan"),
])
def test_bad_plan_is_refused_with_its_reason(plan: str, message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --plan exits 2 naming the problem, before anything starts or is written."""
    with pytest.raises(SystemExit) as exc:
        main(["--plan", plan, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_config_rates_follow_the_plan() -> None:
    """The planned rate is low, then high for high_s, then low again."""
    cfg = HPARunConfig(low_rate=1, high_rate=9, low_s=2, high_s=3, after_s=40)
    assert [cfg.rate_at(t) for t in (0, 1.9, 2, 4.9, 5, 44)] == [1, 1, 9, 9, 1, 1]
    assert cfg.duration == 45
