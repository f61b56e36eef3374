"""The end-to-end benchmark's numbers (``e2e_bench.py``) and their report.

:class:`Result` holds everything one run measured (it is what ``--json`` writes, via
``dataclasses.asdict``); :func:`report` prints it as the markdown tables that go into
``loadtests/README.md``: the propagation delay split into its parts (Pod start,
Ready → Endpoints, Endpoints → first request, Ready → first request, with how many
events were within one second) and one row per kill run. Percentiles are exact
nearest-rank values (``samples.py``); nothing is filled in for what was not measured.

Neighbours: ``e2e_bench.py`` (the run), ``e2e_probes.py`` (what it observes with).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.samples import Samples

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ScaleEvent:
    pod: str
    scaled: float              # the scale call (monotonic s; all below relative to it)
    created: float | None = None
    ready: float | None = None
    endpoint: float | None = None
    first_request: float | None = None
    note: str = ""


@dataclass
class KillRun:
    variant: str
    policy: Obj
    victim: str = ""
    pages: int = 0
    pages_failed: int = 0           # non-200 or no answer
    catalog_failed: int = 0         # a frontend answered, its catalog part an error
    catalog_timeouts: int = 0       # ... of which the frontend's 3 s timeout ran out
    other_failed: int = 0           # failed pages not from catalog (edge, frontend, cart)
    other_restarts: int = 0         # restarts of non-catalog Pods' containers meanwhile
    loadavg: float = 0.0            # the machine's 1-minute load average at the start
    failures_by_status: dict[str, int] = field(default_factory=dict)
    not_ready_after: float | None = None     # s after the kill: Pod seen not Ready
    endpoint_removed_after: float | None = None
    ready_again_after: float | None = None
    serving_again_after: float | None = None  # first page served by the victim again
    restarts_before: int = 0                 # the victim's container restarts before
    restarts: int | None = None
    sidecar: dict[str, float] = field(default_factory=dict)  # frontends' counters, delta
    page_latency: dict[str, float] = field(default_factory=dict)  # from scheduled send
    note: str = ""


@dataclass
class Result:
    config: Obj
    machine: Obj
    events: list[ScaleEvent] = field(default_factory=list)
    scale_pages: int = 0
    scale_pages_failed: int = 0
    scale_catalog_failed: int = 0
    scale_failures_by_status: dict[str, int] = field(default_factory=dict)
    scale_page_latency: dict[str, float] = field(default_factory=dict)
    kills: list[KillRun] = field(default_factory=list)



SPLITS = (  # (label, from, to) over a ScaleEvent's stamps
    ("pod start: created → Ready", "created", "ready"),
    ("controller: Ready → in Endpoints", "ready", "endpoint"),
    ("proxies: in Endpoints → first request served", "endpoint", "first_request"),
    ("**Ready → first request served**", "ready", "first_request"),
    ("scale call → first request served", "scaled", "first_request"),
)


def split_summary(events: list[ScaleEvent]) -> dict[str, dict[str, float]]:
    """Per split: count, p50, p99 and max in ms; ``within_1s``: events at or under 1 s."""
    out = {}
    for label, a, b in SPLITS:
        s = Samples()
        for ev in events:
            x, y = getattr(ev, a), getattr(ev, b)
            if x is not None and y is not None:
                s.add(y - x)
        summary = s.summary(percentiles=(50, 99)) if len(s) else {"count": 0}
        summary["within_1s"] = sum(1 for v in s._ordered() if v <= 1.0) if len(s) else 0
        out[label] = summary
    return out


def machine() -> Obj:
    model = ""
    with contextlib.suppress(OSError):
        model = next((ln.split(":", 1)[1].strip() for ln in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")

    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        return ""
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "cpu": model, "python": sys.version.split()[0],
            "commit": git("rev-parse", "--short", "HEAD"),
            "modified": git("status", "--porcelain", "--", "control", "meshproxy",
                            "config").splitlines(),
            "loadavg_start": os.getloadavg()[0]}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.0f}"


def report(r: Result) -> str:
    m, cfg = r.machine, r.config
    lines = [f"End-to-end benchmark, {m['date']}: {m['nproc']} CPUs ({m['cpu']}), Python "
             f"{m['python']}, commit {m['commit']}"
             + (f" ({len(m['modified'])} modified files under control/, meshproxy/, config/)"
                if m["modified"] else "")
             + f"; load average {m['loadavg_start']:.1f} at start, "
             f"{m.get('loadavg_end', 0):.1f} at end", ""]
    done = [e for e in r.events if e.first_request is not None]
    lines += [f"**Endpoint propagation: {len(done)} scale-ups of catalog (2 → 3 → 2), probe "
              f"{cfg['probe_rate']:g} pages/s through the edge; {r.scale_pages} pages, "
              f"{r.scale_pages_failed} failed ({r.scale_catalog_failed} in the catalog part; "
              f"by status: {json.dumps(r.scale_failures_by_status)}); page latency p50 "
              f"{r.scale_page_latency.get('p50_ms', float('nan')):.0f} ms, p99 "
              f"{r.scale_page_latency.get('p99_ms', float('nan')):.0f} ms**", "",
              "| interval | events | p50 ms | p99 ms | max ms | ≤ 1 s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for label, s in split_summary(done).items():
        if not s["count"]:
            lines.append(f"| {label} | 0 | - | - | - | - |")
            continue
        lines.append(f"| {label} | {s['count']} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | "
                     f"{s['max_ms']:.0f} | {s['within_1s']}/{s['count']} |")
    lines += [""] + [f"note: event {i + 1} ({e.pod}): {e.note}"
                     for i, e in enumerate(r.events) if e.note]
    lines += [f"**A catalog replica's app SIGKILLed under {cfg['kill_rate']:g} pages/s "
              f"(at {cfg['kill_at']:g} s of at least {cfg['kill_duration']:g} s); times in ms "
              "after the kill**", "",
              "| catalog policy | load avg | pages | page p99 ms | pages failed | catalog part "
              "failed (timeouts) | failed for other reasons (other Pods restarted) | failed "
              "catalog attempts (frontend sidecars) | retries | ejections | Pod not Ready | "
              "endpoint removed | Ready again | served again | restarts |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
              "| --- | --- |"]
    for k in r.kills:
        sc = k.sidecar
        lines.append(
            f"| {k.variant} | {k.loadavg:.1f} | {k.pages} | "
            f"{k.page_latency.get('p99_ms', float('nan')):.0f} | {k.pages_failed} | "
            f"{k.catalog_failed} ({k.catalog_timeouts}) | {k.other_failed} "
            f"({k.other_restarts}) | "
            f"{sc.get('catalog_attempts_5xx', 0) + sc.get('catalog_attempt_errors', 0):.0f} | "
            f"{sc.get('catalog_retries', 0):.0f} | {sc.get('catalog_ejections', 0):.0f} | "
            f"{_ms(k.not_ready_after)} | {_ms(k.endpoint_removed_after)} | "
            f"{_ms(k.ready_again_after)} | {_ms(k.serving_again_after)} | "
            f"{k.restarts_before} → {k.restarts} |")
    lines += [""] + [f"note: {k.variant}: {k.note}" for k in r.kills if k.note]
    lines += variant_table(r.kills)
    policies = {k.variant: k.policy for k in r.kills}
    lines += [f"policy {v}: {json.dumps(p, sort_keys=True)}" for v, p in policies.items()]
    return "\n".join(lines) + "\n"


def variant_table(kills: list[KillRun]) -> list[str]:
    """Per variant, over its runs: pages lost because of catalog, what the sidecars saw,
    and the median time until the victim left the Endpoints and served again."""
    if not kills:
        return []
    lines = ["", "**Per variant, summed over its runs (median times)**", "",
             "| catalog policy | runs | pages | catalog part failed (timeouts) | failed for "
             "other reasons | failed catalog attempts | retries | ejections | endpoint "
             "removed ms | served again ms |", "| --- " * 10 + "|"]
    for variant in dict.fromkeys(k.variant for k in kills):
        runs = [k for k in kills if k.variant == variant]

        def total(key: str, runs: list[KillRun] = runs) -> float:
            return sum(k.sidecar.get(key, 0) for k in runs)

        def median(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            return _ms(statistics.median(known)) if known else "-"
        lines.append(
            f"| {variant} | {len(runs)} | {sum(k.pages for k in runs)} | "
            f"{sum(k.catalog_failed for k in runs)} "
            f"({sum(k.catalog_timeouts for k in runs)}) | "
            f"{sum(k.other_failed for k in runs)} | "
            f"{total('catalog_attempts_5xx') + total('catalog_attempt_errors'):.0f} | "
            f"{total('catalog_retries'):.0f} | {total('catalog_ejections'):.0f} | "
            f"{median([k.endpoint_removed_after for k in runs])} | "
            f"{median([k.serving_again_after for k in runs])} |")
    return lines


def load(path: Path) -> Result:
    """A run saved with ``--json``, as a :class:`Result` again."""
    raw = json.loads(path.read_text())
    r = Result(**{k: v for k, v in raw.items() if k not in ("events", "kills")})
    r.events = [ScaleEvent(**e) for e in raw.get("events", [])]
    r.kills = [KillRun(**k) for k in raw.get("kills", [])]
    return r


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtests.e2e_report FILE``: re-print a run saved with ``--json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtests.e2e_report RESULTS.json", file=sys.stderr)
        return 2
    try:
        result = load(Path(args[0]))
    except (OSError, ValueError, TypeError) as e:
        print(f"e2e_report: cannot read {args[0]}: {e}", file=sys.stderr)
        return 2
    print(report(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
