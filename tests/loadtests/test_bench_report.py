"""The proxy benchmark's bookkeeping, without running anything: option validation, the
wrk result line, ratios to the layer's reference, and the verdicts against the issue's
targets (met / NOT met / not measured -- never a number that was not measured)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from loadtests import bench, report, wrk
from loadtests.targets import meshproxy_config
from meshproxy.config.load import parse_config
from support.net import wait_for_port
from support.procs import Managed


def _args(**kw) -> argparse.Namespace:
    return bench.build_parser().parse_args(
        [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in kw.items()])


def _wrk_cell(rps: float, p99: float, rss_mb: float = 10.0) -> dict:
    return {"rps": rps, "p50_ms": p99 / 3, "p99_ms": p99, "error_count": 0,
            "cpu_percent": 50.0, "peak_rss_bytes": int(rss_mb * 2**20),
            "peak_rss_max_process_bytes": int(rss_mb * 2**20)}


def _ol_cell(p50: float, p99: float, *, kept: bool = True) -> dict:
    return {"latency": {"p50_ms": p50, "p99_ms": p99, "p999_ms": p99 * 2},
            "rate_kept": kept, "rate_note": "" if kept else "achieved 600/s of 1000/s",
            "achieved_rate": 1000.0 if kept else 600.0, "errors": {}, "unfinished": 0,
            "lag": {"p99_ms": 0.5}}


def _results(**over) -> dict:
    wrk_cells = {"direct": _wrk_cell(50000, 1.0), "nginx": _wrk_cell(20000, 2.0),
                 "haproxy-tcp": _wrk_cell(30000, 1.5),
                 "meshproxy-l7": _wrk_cell(13000, 3.5, rss_mb=35),
                 "meshproxy-l4": _wrk_cell(25000, 1.6, rss_mb=45)}
    ol = {"direct": _ol_cell(0.2, 1.0), "meshproxy-l7": _ol_cell(0.9, 3.5),
          "meshproxy-l4": _ol_cell(0.4, 1.5)}
    results = {"settings": {"connections": 32, "duration": 8, "rounds": 4, "ol_duration": 8,
                            "ol_connections": 16},
               "machine": {"date": "d", "nproc": 2, "cpu": "c", "loadavg_start": "0",
                           "versions": {}, "python": "3.11"},
               "wrk": {"keepalive": wrk_cells}, "openloop": {"1000": ol}}
    results.update(over)
    return results


def _by_goal(results: dict) -> dict[str, tuple[str, str]]:
    return {v["target"]: (v["status"], v["detail"]) for v in report.verdicts(results)}


def test_verdicts_compare_meshproxy_with_each_layers_reference() -> None:
    v = _by_goal(_results())
    assert v["meshproxy-l7 req/s >= 0.6x nginx (keep-alive)"] == ("met", "0.65x")
    assert v["meshproxy-l7 p99 <= 2x nginx (keep-alive)"] == ("met", "1.75x")
    assert v["meshproxy-l4 req/s >= 0.9x haproxy tcp (keep-alive)"] == ("NOT met", "0.83x")
    assert v["meshproxy-l7 resident memory <= 40 MB per worker under load"][0] == "met"
    assert v["meshproxy-l4 resident memory <= 40 MB per worker under load"] == (
        "NOT met", "peak 45.0 MB")
    # Added latency is the target's percentile minus direct's: 0.7 ms p50 but 2.5 ms p99.
    l7 = v["meshproxy-l7 added latency at 1000/s <= 1 ms p50 and <= 3 ms p99"]
    assert l7 == ("met", "p50 +0.70 ms, p99 +2.50 ms")


def test_an_unavailable_proxy_is_not_measured_with_its_reason() -> None:
    results = _results()
    results["wrk"]["keepalive"]["meshproxy-l7"] = {"unavailable": "exited with status 2"}
    results["openloop"]["1000"]["meshproxy-l7"] = {"unavailable": "exited with status 2"}
    v = _by_goal(results)
    status, detail = v["meshproxy-l7 req/s >= 0.6x nginx (keep-alive)"]
    assert status == "not measured"
    assert "exited with status 2" in detail
    assert v["meshproxy-l7 resident memory <= 40 MB per worker under load"][0] == "not measured"
    added = v["meshproxy-l7 added latency at 1000/s <= 1 ms p50 and <= 3 ms p99"]
    assert added[0] == "not measured"
    text = report.render(results | {"verdicts": report.verdicts(results)})
    assert "meshproxy-l7  not available (exited with status 2)" in text


def test_a_rate_not_kept_is_never_reported_as_met() -> None:
    results = _results()
    results["openloop"]["1000"]["meshproxy-l4"] = _ol_cell(0.3, 1.2, kept=False)
    results["openloop"]["1000"]["direct"] = _ol_cell(0.2, 1.0)
    v = _by_goal(results)
    status, detail = v["meshproxy-l4 added latency at 1000/s <= 1 ms p50 and <= 3 ms p99"]
    assert status == "NOT met"
    assert "rate not kept" in detail
    results["openloop"]["1000"]["direct"] = _ol_cell(0.2, 1.0, kept=False)
    v = _by_goal(results)
    status, _ = v["meshproxy-l7 added latency at 1000/s <= 1 ms p50 and <= 3 ms p99"]
    assert status == "not measured"


def test_wrk_result_line_is_parsed_exactly() -> None:
    out = ("Running 1s test @ http://127.0.0.1:1/\n"
           'WRKJSON {"requests":1200,"duration_us":2000000,"bytes":99,'
           '"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":0},'
           '"latency_us":{"p50":250,"p90":400,"p99":1500,"p999":3000,"max":4000,"mean":300.5}}\n')
    r = wrk.parse(out)
    assert r.rps == 600.0
    assert (r.p50_ms, r.p99_ms, r.p999_ms) == (0.25, 1.5, 3.0)
    assert r.error_count == 3
    with pytest.raises(wrk.WrkFailed, match="no WRKJSON line"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_connection_per_request_mode_sends_connection_close() -> None:
    argv = wrk.command("http://127.0.0.1:1/", script=Path("s.lua"), mode="close",
                       duration=2, connections=8)
    assert argv[argv.index("-H") + 1] == "Connection: close"
    assert {"-c8", "-t1", "-d2s"} <= set(argv)
    keep = wrk.command("http://127.0.0.1:1/", script=Path("s.lua"), mode="keepalive",
                       duration=2, connections=8)
    assert "-H" not in keep


def test_combined_rounds_sum_counts_and_take_median_percentiles() -> None:
    rounds = [wrk.WrkResult(1000, 1.0, {"read": 1}, 0.1, 0.2, p99, 2.0, 3.0, 0.1)
              for p99 in (1.0, 5.0, 2.0)]
    c = wrk.combine(rounds)
    assert c["rps"] == 1000.0
    assert c["p99_ms"] == 2.0
    assert c["error_count"] == 3
    assert c["rounds_rps"] == [1000.0, 1000.0, 1000.0]


@pytest.mark.parametrize(("kw", "message"), [
    ({"targets": "direct,envoy"}, "--targets: unknown envoy"),
    ({"rates": "1000,fast"}, "--rates"),
    ({"rates": "0"}, "--rates"),
    ({"duration": "0"}, "--duration"),
    ({"duration": "2", "rounds": "4"}, "shorter than one second per round"),
    ({"connections": "0"}, "--connections"),
])
def test_bad_options_are_refused_naming_the_option(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bench.settings_from(_args(**kw))


def test_quick_settings_are_short_and_keep_the_canonical_order() -> None:
    s = bench.settings_from(_args(quick=True, targets="meshproxy-l7,direct,nginx"))
    assert s["targets"] == ["direct", "nginx", "meshproxy-l7"]
    assert (s["duration"], s["ol_duration"], s["rounds"]) == (1.0, 1.5, 1)
    assert bench.budget(s) < 600


@pytest.mark.parametrize("layer", ["l7", "l4"])
def test_meshproxy_config_written_by_the_bench_is_valid_for_meshproxy(layer: str) -> None:
    """The bench's meshproxy config is checked by meshproxy's own loader, so a schema
    change in the engine breaks this test instead of turning the benchmark's meshproxy
    rows into "not available"."""
    doc = meshproxy_config(layer=layer, port=18080, backend_port=18081, admin_port=18082)
    cfg = parse_config(yaml.safe_dump(doc)).config
    (listener,) = cfg.listeners
    assert listener.protocol == ("http" if layer == "l7" else "tcp")
    assert (listener.address, listener.port) == ("127.0.0.1", 18080)
    assert [e.address for e in cfg.cluster("backend").endpoints] == ["127.0.0.1:18081"]
    assert cfg.process.workers == 1


def test_a_missing_reference_is_named_in_the_verdict() -> None:
    results = _results()
    del results["wrk"]["keepalive"]["nginx"]
    v = _by_goal(results)
    assert v["meshproxy-l7 req/s >= 0.6x nginx (keep-alive)"] == (
        "not measured", "nginx was not part of this run")


def test_markdown_report_has_one_row_per_target_and_reasons_in_place_of_numbers(
        tmp_path: Path) -> None:
    results = _results()
    results["wrk"]["keepalive"]["meshproxy-l4"] = {"unavailable": "exited with status 1"}
    results["verdicts"] = report.verdicts(results)
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(results))
    text = report.render(results, "markdown")
    # 20000 req/s at 50% of a core: 40000 requests per CPU-second.
    assert "| nginx | L7 | 20000 | 0.67 | 2.00 | 0 | 1.00x | 1.00x | 50 | 40000 | 10.0 |" in text
    assert "| meshproxy-l4 | not available (exited with status 1) |" in text
    assert "- **NOT met** meshproxy-l7 resident memory" not in text  # 35 MB is within 40
    assert report.main([str(saved), "--markdown"]) == 0
    assert report.main([str(tmp_path / "missing.json")]) == 2


def test_every_target_gets_a_verdict_even_when_a_part_was_skipped() -> None:
    """Ten goals (rates and p99 in both modes, memory, added latency), always listed."""
    full = report.verdicts(_results())
    no_wrk = report.verdicts(_results(wrk={}))
    assert len(full) == len(no_wrk) == 10
    assert [v["target"] for v in full] == [v["target"] for v in no_wrk]
    skipped = [v for v in no_wrk if v["status"] == "not measured"]
    assert len(skipped) == 8
    assert {v["detail"] for v in skipped} == {"no closed-loop (wrk) part in this run"}


def test_added_latency_pairs_rounds_so_one_stalled_baseline_round_cannot_flatter_a_proxy(
        ) -> None:
    """Direct's third round hit a 90 ms stall. Pooled, direct's p99 would be huge and
    the proxy's added p99 negative; paired by round, the median difference is 2 ms."""
    def rounds(p99s: list[float]) -> list[dict]:
        return [{"p50_ms": 0.5, "p99_ms": v, "p999_ms": v * 2} for v in p99s]
    direct = _ol_cell(0.5, 90.0) | {"rounds": rounds([1.0, 1.2, 90.0, 1.1, 0.9])}
    proxy = _ol_cell(0.8, 3.0) | {"rounds": rounds([3.0, 3.2, 3.1, 3.1, 2.9])}
    diff = report.added({"direct": direct, "meshproxy-l7": proxy}, "meshproxy-l7")
    assert diff is not None
    assert diff["p99_ms"] == pytest.approx(2.0)
    assert diff["p50_ms"] == pytest.approx(0.0)


def test_a_target_answering_something_else_than_the_backend_is_refused(
        spawn: Callable[..., Managed], free_port: int, tmp_path: Path) -> None:
    """Before measuring, one GET through each target must return the backend's body."""
    with pytest.raises(bench.ServerFailed, match="a test GET failed"):
        bench._check_answer(free_port)  # nothing listens there
    server = spawn.python("-m", "http.server", str(free_port), "--bind", "127.0.0.1",  # type: ignore[attr-defined]
                          "--directory", str(tmp_path), name="http.server")
    wait_for_port("127.0.0.1", free_port, timeout=30, proc=server)
    with pytest.raises(bench.ServerFailed, match="not the backend's 200"):
        bench._check_answer(free_port)  # a directory listing, not the backend's body


def test_a_quick_run_judges_nothing_but_still_shows_its_numbers() -> None:
    results = _results()
    results["settings"]["quick"] = True
    v = _by_goal(results)
    assert {status for status, _ in v.values()} == {"not measured"}
    assert v["meshproxy-l7 req/s >= 0.6x nginx (keep-alive)"][1] == (
        "--quick run, too short to judge (0.65x)")


def test_added_latency_needs_interleaved_rounds_to_be_judged() -> None:
    results = _results()
    results["settings"]["rounds"] = 1
    status, detail = _by_goal(results)[
        "meshproxy-l7 added latency at 1000/s <= 1 ms p50 and <= 3 ms p99"]
    assert status == "not measured"
    assert "fewer than 3 interleaved rounds" in detail
    assert "p50 +0.70 ms" in detail
