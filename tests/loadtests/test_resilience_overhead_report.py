"""The resilience overhead verdict is the median of the rounds' paired ratios (the two
cells of a round run back to back), not a ratio of numbers from different moments."""

from __future__ import annotations

import argparse

from loadtests.resilience_bench import overhead_table


def _result(pairs: list[float]) -> dict:
    cell = {"rps": 10000.0, "p50_ms": 1.0, "p99_ms": 3.0, "errors": 0,
            "cpu_us_per_request": 60.0}
    return {"plain": cell, "guarded": cell | {"cpu_us_per_request": 63.0},
            "round_ratios": pairs, "ratio": sorted(pairs)[len(pairs) // 2],
            "ratio_of_medians": 0.95, "cpu_ratio": 60.0 / 63.0}


def test_verdict_follows_the_median_of_paired_rounds() -> None:
    args = argparse.Namespace(connections=16, rounds=3, duration=3.0)
    met = overhead_table(_result([0.85, 0.93, 0.97]), args)
    assert "guarded / plain = 0.930" in met
    assert "(target >= 0.90: met)" in met
    assert "0.850, 0.930, 0.970" in met
    missed = overhead_table(_result([0.80, 0.86, 0.97]), args)
    assert "(target >= 0.90: NOT met)" in missed
    assert "| guarded | 10000 | 1.00 | 3.00 | 0 | 63.0 |" in missed


def test_pinning_gives_the_proxies_the_last_cpu_and_the_rest_to_the_others(
        monkeypatch) -> None:
    """With several CPUs and taskset: the proxies get the last CPU, wrk and the backend
    all the others; off when asked, or with a single CPU, or without taskset."""
    from loadtests import resilience_bench as rb

    monkeypatch.setattr(rb.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(rb.shutil, "which", lambda _cmd: "/usr/bin/taskset")
    assert rb.pinning(True) == (["taskset", "-c", "3"], ["taskset", "-c", "0,1,2"])
    assert rb.pinning(False) is None
    monkeypatch.setattr(rb.os, "sched_getaffinity", lambda _pid: {5})
    assert rb.pinning(True) is None
    monkeypatch.setattr(rb.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(rb.shutil, "which", lambda _cmd: None)
    assert rb.pinning(True) is None
