"""The proxy benchmark's tables, ratios and verdicts, computed from its JSON results.

Everything here reads the plain ``dict`` that ``bench`` builds (and writes with
``--json``), so a saved run can be re-printed or checked without re-measuring. A cell is
either a measurement or ``{"unavailable": reason}``; an unavailable cell prints its
reason where the numbers would be, and a verdict that depends on it says
"not measured" with that reason. Nothing is ever filled in.

Ratios are to the reference of the target's layer (``targets.REFERENCE``): nginx for L7,
haproxy in tcp mode for L4. Added latency is the target's open-loop percentile minus
direct's at the same rate and percentile (so the generator's own overhead, which both
include, cancels out), per interleaved round and then the median over rounds (see
:func:`added`); it can come out slightly negative when the proxy's rounds were less
disturbed by the other work on this machine than direct's were.

``python -m loadtests.report results.json --markdown`` re-prints a saved run as the
markdown that ``README.md`` holds.

Neighbours: ``bench`` builds the results; ``targets`` names the layers and references.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from loadtests.targets import LAYER, REFERENCE, TARGETS

Status = Literal["met", "NOT met", "not measured"]
Style = Literal["text", "markdown"]

#: The issue's targets for meshproxy on one worker.
L7_RPS_SHARE = 0.6
L7_P99_FACTOR = 2.0
L4_RPS_SHARE = 0.9
RSS_LIMIT_MB = 40.0
ADDED_P50_MS = 1.0
ADDED_P99_MS = 3.0
ADDED_RATE = 1000
#: Interleaved rounds needed before added latency is judged (see :func:`verdicts`).
MIN_ROUNDS = 3

_MODE_TITLE = {"keepalive": "keep-alive", "close": "connection per request"}


def _measured(cell: dict | None) -> bool:
    return cell is not None and "unavailable" not in cell


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _table(header: list[str], rows: Iterable[list[str]], style: Style = "text") -> list[str]:
    rows = list(rows)
    if style == "markdown":
        def md(r: list[str]) -> str:
            r = r + [""] * (len(header) - len(r))  # a "name, reason" row leaves cells empty
            return "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
        return [md(header), md(["---"] * len(header)), *(md(r) for r in rows)]
    full = [r for r in [header, *rows] if len(r) == len(header)]
    widths = [max(len(r[i]) for r in full) for i in range(len(header))]

    def line(r: list[str]) -> str:
        if len(r) == 2 and len(header) > 2:  # "name, reason" spans the row
            return f"{r[0]:<{widths[0]}}  {r[1]}"
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                         enumerate(zip(r, widths, strict=True)))
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def ratios(by_target: dict[str, dict], name: str) -> tuple[float | None, float | None]:
    """(req/s ratio, p99 ratio) of ``name`` to its layer's reference, None if unmeasured."""
    layer = LAYER[name]  # type: ignore[index]
    if layer == "-":
        return None, None
    cell, ref = by_target.get(name), by_target.get(REFERENCE[layer])
    if not (_measured(cell) and _measured(ref)) or not ref["rps"] or not ref["p99_ms"]:
        return None, None
    return cell["rps"] / ref["rps"], cell["p99_ms"] / ref["p99_ms"]


def added(by_target: dict[str, dict], name: str) -> dict[str, float] | None:
    """Open-loop percentiles of ``name`` minus direct's, in ms; None if either is missing.

    With interleaved rounds, each round of ``name`` is compared with direct's round of
    the same index (run moments apart) and the median of those differences is taken: a
    stall of the machine during one round then spoils one difference, not the result.
    Without rounds, the pooled percentiles are subtracted.
    """
    cell, direct = by_target.get(name), by_target.get("direct")
    if not (_measured(cell) and _measured(direct)):
        return None
    keys = ("p50_ms", "p99_ms", "p999_ms")
    pairs = list(zip(cell.get("rounds", ()), direct.get("rounds", ()), strict=False))
    if len(pairs) > 1:
        return {k: statistics.median(mine[k] - base[k] for mine, base in pairs) for k in keys}
    return {k: cell["latency"][k] - direct["latency"][k] for k in keys}


def wrk_table(results: dict, mode: str, style: Style = "text") -> list[str]:
    s = results["settings"]
    cells = results["wrk"].get(mode, {})
    out = [f"Closed loop: wrk, 1 thread, {s['connections']} connections, {s['duration']:g} s "
           f"per target in {s['rounds']} interleaved rounds, {_MODE_TITLE[mode]}"]
    header = ["target", "layer", "req/s", "p50 ms", "p99 ms", "errors", "req/s vs ref",
              "p99 vs ref", "cpu %", "req/CPU-s", "peak RSS MB"]
    rows = []
    for name in TARGETS:
        if name not in cells:
            continue
        cell = cells[name]
        if not _measured(cell):
            rows.append([name, f"not available ({cell['unavailable']})"])
            continue
        rr, pr = ratios(cells, name)
        rows.append([name, LAYER[name], f"{cell['rps']:.0f}", _fmt(cell["p50_ms"]),
                     _fmt(cell["p99_ms"]), str(cell["error_count"]),
                     "-" if rr is None else f"{rr:.2f}x", "-" if pr is None else f"{pr:.2f}x",
                     _fmt(cell.get("cpu_percent"), 0), _per_cpu_second(cell),
                     _fmt(cell.get("peak_rss_bytes", 0) / 2**20, 1)])
    return out + _table(header, rows, style)


def _per_cpu_second(cell: dict) -> str:
    """Requests served per second of the target's own CPU time: how much work each
    request costs it, which CPU contention from other work disturbs less than req/s."""
    cpu = cell.get("cpu_percent") or 0.0
    return f"{cell['rps'] / (cpu / 100):.0f}" if cpu > 0 else "-"


def openloop_table(results: dict, rate: str, style: Style = "text") -> list[str]:
    s = results["settings"]
    cells = results["openloop"].get(rate, {})
    out = [f"Open loop: {float(rate):.0f} req/s for {s['ol_duration']:g} s per target in "
           f"{s['rounds']} interleaved rounds over {s['ol_connections']} connections, latency "
           "from scheduled send time (ms); added = target - direct, median over rounds"]
    header = ["target", "achieved/s", "p50", "p99", "p99.9", "added p50", "added p99",
              "added p99.9", "errors", "gen lag p99", "gen cpu %", "rate kept"]
    rows = []
    for name in TARGETS:
        if name not in cells:
            continue
        cell = cells[name]
        if not _measured(cell):
            rows.append([name, f"not available ({cell['unavailable']})"])
            continue
        lat, add = cell["latency"], added(cells, name)
        kept = "yes" if cell["rate_kept"] else "NO: " + cell["rate_note"]
        rows.append([name, f"{cell['achieved_rate']:.0f}", _fmt(lat["p50_ms"]),
                     _fmt(lat["p99_ms"]), _fmt(lat["p999_ms"]),
                     "-" if name == "direct" or add is None else f"{add['p50_ms']:+.2f}",
                     "-" if name == "direct" or add is None else f"{add['p99_ms']:+.2f}",
                     "-" if name == "direct" or add is None else f"{add['p999_ms']:+.2f}",
                     str(sum(cell["errors"].values()) + cell["unfinished"]),
                     _fmt(cell["lag"]["p99_ms"]),
                     _fmt(cell.get("generator_cpu_percent"), 0), kept])
    return out + _table(header, rows, style)


def verdicts(results: dict) -> list[dict]:
    """The issue's targets for meshproxy, each met / NOT met / not measured, with detail.

    A ``--quick`` run only checks the harness: its one-second cells are too short to
    judge, so every goal is "not measured" there, with the numbers shown anyway. Added
    latency is judged only over at least :data:`MIN_ROUNDS` interleaved rounds: with
    fewer, one stall of the machine during direct's run would decide the comparison.
    """
    out: list[dict] = []
    settings = results.get("settings", {})
    quick = bool(settings.get("quick"))

    def add(target: str, status: Status, detail: str) -> None:
        if quick and status != "not measured":
            status, detail = "not measured", f"--quick run, too short to judge ({detail})"
        out.append({"target": target, "status": status, "detail": detail})

    no_wrk = "no closed-loop (wrk) part in this run"
    for mode, title in _MODE_TITLE.items():
        cells = results.get("wrk", {}).get(mode)
        for name, share, what in (("meshproxy-l7", L7_RPS_SHARE, "nginx"),
                                  ("meshproxy-l4", L4_RPS_SHARE, "haproxy tcp")):
            goals = [f"{name} req/s >= {share}x {what} ({title})"]
            if name == "meshproxy-l7":
                goals.append(f"meshproxy-l7 p99 <= {L7_P99_FACTOR:g}x nginx ({title})")
            rr, pr = ratios(cells or {}, name)
            if rr is None or pr is None:
                why = no_wrk if not cells else _why_missing(cells, name,
                                                            REFERENCE[LAYER[name]])
                for goal in goals:
                    add(goal, "not measured", why)
                continue
            add(goals[0], "met" if rr >= share else "NOT met", f"{rr:.2f}x")
            if name == "meshproxy-l7":
                add(goals[1], "met" if pr <= L7_P99_FACTOR else "NOT met", f"{pr:.2f}x")
    for name in ("meshproxy-l7", "meshproxy-l4"):
        goal = f"{name} resident memory <= {RSS_LIMIT_MB:g} MB per worker under load"
        wrk_cells = results.get("wrk", {})
        peaks = [c["peak_rss_max_process_bytes"] for c in
                 (wrk_cells.get(m, {}).get(name) for m in _MODE_TITLE) if _measured(c)]
        if not peaks:
            add(goal, "not measured", no_wrk if not wrk_cells else
                _why_missing(wrk_cells.get("keepalive", {}), name, name))
            continue
        mb = max(peaks) / 2**20
        add(goal, "met" if mb <= RSS_LIMIT_MB else "NOT met", f"peak {mb:.1f} MB")
    cells = results.get("openloop", {}).get(str(ADDED_RATE), {})
    for name in ("meshproxy-l7", "meshproxy-l4"):
        goal = (f"{name} added latency at {ADDED_RATE}/s <= {ADDED_P50_MS:g} ms p50 and "
                f"<= {ADDED_P99_MS:g} ms p99")
        if not cells:
            add(goal, "not measured", f"no open-loop run at {ADDED_RATE}/s")
            continue
        diff = added(cells, name)
        if diff is None:
            add(goal, "not measured", _why_missing(cells, name, "direct"))
            continue
        detail = f"p50 {diff['p50_ms']:+.2f} ms, p99 {diff['p99_ms']:+.2f} ms"
        if not cells["direct"]["rate_kept"]:
            add(goal, "not measured", "the direct run (the baseline) did not keep the rate: "
                f"{cells['direct']['rate_note']}; as measured anyway: {detail}")
            continue
        if not cells[name]["rate_kept"]:
            add(goal, "NOT met", detail + "; rate not kept: " + cells[name]["rate_note"])
            continue
        if settings.get("rounds", MIN_ROUNDS) < MIN_ROUNDS:
            add(goal, "not measured", f"fewer than {MIN_ROUNDS} interleaved rounds, too "
                f"few to tell the proxy from a stall of the machine ({detail})")
            continue
        ok = diff["p50_ms"] <= ADDED_P50_MS and diff["p99_ms"] <= ADDED_P99_MS
        add(goal, "met" if ok else "NOT met", detail)
    return out


def _why_missing(cells: dict, name: str, against: str) -> str:
    """Why ``name`` or what it is compared with (``against``) has no measurement."""
    for who in (name, against):
        cell = cells.get(who)
        if cell is None:
            return f"{who} was not part of this run"
        if "unavailable" in cell:
            return f"{who} not available ({cell['unavailable']})"
    return "no measurement"


def render(results: dict, style: Style = "text") -> str:
    """The whole report: machine, wrk tables, open-loop tables, verdicts."""
    m = results["machine"]
    md = style == "markdown"
    gap = [""] if md else []
    lines = [f"Proxy benchmark, {m['date']}: {m['nproc']} CPUs ({m['cpu']}), "
             f"load average {m['loadavg_start']} at start, {m.get('loadavg_end', '?')} at end;",
             f"nginx {m['versions'].get('nginx', '?')}, haproxy "
             f"{m['versions'].get('haproxy', '?')}, wrk {m['versions'].get('wrk', '?')}, "
             f"Python {m['python']}"
             + (f"; commit {m['commit']}, meshproxy/ {m['meshproxy_tree']}"
                if "commit" in m else ""), ""]
    for mode in results.get("wrk", {}):
        title, *table = wrk_table(results, mode, style)
        lines += [f"**{title}**" if md else title, *gap, *table, ""]
    for rate in results.get("openloop", {}):
        title, *table = openloop_table(results, rate, style)
        lines += [f"**{title}**" if md else title, *gap, *table, ""]
    lines += ["Targets (issue #3, one worker):", *gap]
    for v in results.get("verdicts", []):
        status = f"**{v['status']}**" if md else f"[{v['status']}]"
        lines.append(f"{'-' if md else ' '} {status} {v['target']}: {v['detail']}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtests.report results.json [--markdown]``: re-print a saved run."""
    p = argparse.ArgumentParser(prog="python -m loadtests.report",
                                description="Print the report of a run saved with --json.")
    p.add_argument("results", help="the file written by python -m loadtests.bench --json")
    p.add_argument("--markdown", action="store_true", help="markdown tables (for README.md)")
    args = p.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
    except (OSError, ValueError) as e:
        print(f"report: cannot read {args.results}: {e}", file=sys.stderr)
        return 2
    print(render(results, "markdown" if args.markdown else "text"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
