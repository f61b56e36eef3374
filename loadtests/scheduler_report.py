"""The scheduler benchmark's printed report: measures, targets met or not, the
node-loss timeline and the decision replay, as Markdown tables ready for
``loadtests/README.md``.

A value that was not measured prints as "not measured", never as a number.

Neighbours: ``scheduler_bench.py`` (collects the :class:`Result` this formats).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtests.scheduler_bench import BenchConfig, Result


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "load_avg_at_start": os.getloadavg()[0]}


def verdicts(r: Result, cfg: BenchConfig) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    rate = r.binds_per_second_overall
    out.append(("≥ 200 pods scheduled/s (creation to last binding)",
                f"{rate:.0f}/s" if rate else "not measured",
                None if rate is None else rate >= 200))
    target = cfg.orphan_grace + 5
    t = r.delete_recover_seconds
    out.append((f"deleted nodes' pods rescheduled within orphan grace + 5 s ({target:g} s)",
                f"{t:.1f} s" if t is not None else "not measured",
                None if t is None else t <= target))
    target = cfg.grace + cfg.eviction_timeout + 5
    t = r.silence_recover_seconds
    out.append((f"silent nodes' pods rescheduled within grace + eviction + 5 s ({target:g} s)",
                f"{t:.1f} s" if t is not None else "not measured",
                None if t is None else t <= target))
    out.append(("no node over its allocatable",
                str(r.overcommitted_nodes) if r.overcommitted_nodes is not None
                else "not measured",
                None if r.overcommitted_nodes is None else r.overcommitted_nodes == 0))
    return out


def report(r: Result, cfg: BenchConfig) -> str:
    def f(v: float | None, unit: str = "", digits: int = 1) -> str:
        return "not measured" if v is None or (isinstance(v, float) and math.isnan(v)) \
            else f"{v:.{digits}f}{unit}"
    m = r.machine
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, kernel "
        f"{m['kernel']}, load average at start {m['load_avg_at_start']:.2f}",
        f"cluster: {cfg.nodes} simulated nodes ({cfg.node_cpu} CPU, {cfg.node_memory}) in "
        f"{cfg.zones} zones, heartbeat every {cfg.heartbeat:g} s; one Deployment of "
        f"{cfg.replicas} replicas ({cfg.pod_cpu}, {cfg.pod_memory})",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| replicas bound | {r.placed} / {cfg.replicas} |",
        f"| Deployment created → all bound | {f(r.place_seconds, ' s')} |",
        f"| binds/s, creation → last binding | {f(r.binds_per_second_overall, '', 0)} |",
        f"| binds/s, first → last binding | {f(r.binds_per_second, '', 0)} |",
        f"| Pods created/s by the ReplicaSet controller | {f(r.creates_per_second, '', 0)} |",
        f"| pods per node (min / max / stdev) | {r.per_node.get('min', '-')} / "
        f"{r.per_node.get('max', '-')} / {r.per_node.get('stdev', '-')} |",
        f"| pods per zone | {', '.join(f'{k}: {v}' for k, v in r.per_zone.items()) or '-'} |",
        f"| nodes over allocatable | {r.overcommitted_nodes} |",
        f"| fullest node: CPU / memory requested | "
        f"{f(r.fullest_cpu and r.fullest_cpu * 100, '%', 0)}"
        f" / {f(r.fullest_memory and r.fullest_memory * 100, '%', 0)} |",
        f"| CPU seconds during placement: API server / controller manager | "
        f"{f(r.apiserver_cpu_seconds)} / {f(r.manager_cpu_seconds)} |",
        f"| CPU seconds during placement: this benchmark (watch, heartbeats) | "
        f"{f(r.bench_cpu_seconds)} |",
        f"| {cfg.lost} nodes deleted ({r.deleted_pods} pods) → all rescheduled | "
        f"{f(r.delete_recover_seconds, ' s')} |",
        f"| {cfg.lost} nodes silent ({r.silent_pods} pods) → all rescheduled | "
        f"{f(r.silence_recover_seconds, ' s')} |",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    for what, value, ok in verdicts(r, cfg):
        lines.append(f"| {what} | {value} | {'yes' if ok else 'no' if ok is False else '-'} |")
    if r.delete_timeline or r.silence_timeline:
        lines += ["", "Node loss, seconds after the nodes were deleted / went silent:", "",
                  "| step | deleted nodes | silent nodes |", "| --- | --- | --- |"]
        for key, what in TIMELINE_STEPS:
            lines.append(f"| {what} | {f(r.delete_timeline.get(key), ' s')} | "
                         f"{f(r.silence_timeline.get(key), ' s')} |")
    if r.replay:
        lines += ["", f"Decision replay in one process ({cfg.replicas} replicas of one owner, "
                  "CPU time, adaptive percentageOfNodesToScore):", "",
                  "| nodes | CPU per decision | nodes examined / scored per decision | "
                  "pods per node (min / max / stdev) | pods per zone (min / max) |",
                  "| --- | --- | --- | --- | --- |"]
        for x in r.replay:
            lines.append(
                f"| {x['nodes']} | {x['cpu_us_per_decision']:.0f} µs | "
                f"{x['examined_per_decision']:.0f} / {x['scored_per_decision']:.0f} | "
                f"{x['per_node_min']} / {x['per_node_max']} / {x['per_node_stdev']} | "
                f"{x['per_zone_min']} / {x['per_zone_max']} |")
    lines.extend(f"note: {n}" for n in r.notes)
    return "\n".join(lines)


TIMELINE_STEPS = (
    ("not_ready", "last lost node seen NotReady"),
    ("first_deleted", "first of their Pods deleted"),
    ("last_deleted", "last of their Pods deleted"),
    ("last_created", "last replacement created"),
    ("last_bound", "last replacement bound"),
)
