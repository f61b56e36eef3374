"""Findings and plot of an autoscaling run (``hpa_run.py``), from its JSON alone.

:func:`findings` reads the time series and answers the issue's questions in numbers:
how long after the load stepped up the HPA first raised the replica count and when the
last new replica was Ready; whether every step respected the scale-up policy (at most
``up_pods`` Pods added within any ``up_period`` s; steps are seen at the sampling
resolution, so two steps are counted as within one period only if they are closer than
``up_period - sample_interval``); how the request rate split over the Pods once the
replicas were up (the metrics API's per-Pod rates, the HPA's own input); when p99 went
over the target and when it came back under to stay for the rest of the high load; and
how long after the load dropped the first scale-down came, next to the stabilisation
window. A question the data cannot answer (no scale-up happened, say) gets ``None``.

:func:`plot` draws three panels sharing the time axis: offered load and per-Pod rates,
replicas (desired and Ready), and p99 per second of load (log scale) with the target;
the high-load phase is shaded and the stabilisation window after the drop is marked.
matplotlib with the Agg backend (no display).

Neighbours: ``hpa_run.py`` (the run and its JSON).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


def _ok(samples: list[Obj]) -> list[Obj]:
    return [s for s in samples if "error" not in s]


def _first(items: list[Obj], pred: Any) -> Obj | None:
    return next((s for s in items if pred(s)), None)


def scale_up_steps(samples: list[Obj]) -> list[tuple[float, int]]:
    """(time, +Pods) for every rise of the Deployment's desired replicas."""
    steps, prev = [], None
    for s in _ok(samples):
        r = s["spec_replicas"]
        if prev is not None and r > prev:
            steps.append((s["t"], r - prev))
        prev = r
    return steps


def policy_respected(steps: list[tuple[float, int]], *, up_pods: int, up_period: float,
                     resolution: float) -> bool:
    """No more than ``up_pods`` added within any period (see the module docstring)."""
    for t, _ in steps:
        added = sum(d for u, d in steps if t - (up_period - resolution) < u <= t)
        if added > up_pods:
            return False
    return True


def findings(result: Obj) -> Obj:
    cfg, samples, load = result["config"], _ok(result["samples"]), result["load"]
    t_up, t_drop = cfg["low_s"], cfg["low_s"] + cfg["high_s"]
    out: Obj = {"samples": len(samples), "sample_errors": len(result["samples"]) - len(samples)}
    steps = scale_up_steps(samples)
    out["scale_up_steps"] = steps
    first = steps[0][0] if steps else None
    out["first_scale_up_after_step_s"] = None if first is None else round(first - t_up, 1)
    peak = max((s["spec_replicas"] for s in samples), default=None)
    out["peak_replicas"] = peak
    all_ready = _first(samples, lambda s: s["t"] >= t_up and peak is not None and peak > 1
                       and s["ready_replicas"] >= peak)
    out["peak_ready_after_step_s"] = (None if all_ready is None
                                      else round(all_ready["t"] - t_up, 1))
    out["policy"] = f"at most {cfg['up_pods']} Pod(s) per {cfg['up_period']} s"
    out["largest_step"] = max((d for _, d in steps), default=None)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(steps)]
    out["smallest_gap_between_steps_s"] = round(min(gaps), 2) if gaps else None
    out["policy_respected"] = (policy_respected(
        steps, up_pods=cfg["up_pods"], up_period=cfg["up_period"],
        resolution=cfg["sample_interval"]) if steps else None)
    # Load spread: per-Pod rates averaged over the last third of the high phase.
    late = [s for s in samples if t_drop - cfg["high_s"] / 3 <= s["t"] < t_drop]
    per_pod: dict[str, list[float]] = {}
    for s in late:
        for pod, v in s["pod_rps"].items():
            if v is not None:
                per_pod.setdefault(pod, []).append(v)
    out["late_high_per_pod_rps"] = {p: round(sum(v) / len(v), 1) for p, v in per_pod.items()}
    # p99 per second of load during the high phase.
    high = [seg for seg in load if t_up <= seg["t"] < t_drop]
    target = cfg["p99_target"]

    def over(seg: Obj) -> bool:  # an unanswered request is over any target
        return (seg["p99"] is None or seg["p99"] > target or seg["unfinished"] > 0
                or seg["errors"] > 0)
    out["p99_target_s"] = target
    out["peak_p99_s"] = max((seg["p99"] for seg in high if seg["p99"] is not None),
                            default=None)
    out["seconds_over_target_in_high_phase"] = sum(map(over, high))
    out["requests_failed_or_unfinished"] = sum(seg["errors"] + seg["unfinished"]
                                               for seg in load)
    last_over = max((seg["t"] for seg in high if over(seg)), default=None)
    if last_over is None:
        out["p99_under_target_to_stay_after_step_s"] = 0.0 if high else None
    elif last_over + 1 < t_drop:
        out["p99_under_target_to_stay_after_step_s"] = round(last_over + 1 - t_up, 1)
    else:
        out["p99_under_target_to_stay_after_step_s"] = None  # not back before the drop
    # Scale-down after the drop.
    at_drop = _first(samples, lambda s: s["t"] >= t_drop)
    down = (None if at_drop is None else
            _first(samples, lambda s: s["t"] > t_drop
                   and s["spec_replicas"] < at_drop["spec_replicas"]))
    out["down_window_s"] = cfg["down_window"]
    out["first_scale_down_after_drop_s"] = None if down is None else round(down["t"] - t_drop, 1)
    out["scale_down_not_before_window"] = (None if down is None
                                           else down["t"] - t_drop >= cfg["down_window"])
    out["final_replicas"] = samples[-1]["spec_replicas"] if samples else None
    return out


def plot(result: Obj, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, samples, load = result["config"], _ok(result["samples"]), result["load"]
    t_up, t_drop = cfg["low_s"], cfg["low_s"] + cfg["high_s"]
    ts = [s["t"] for s in samples]
    fig, (ax_load, ax_rep, ax_lat) = plt.subplots(3, 1, sharex=True, figsize=(9, 8),
                                                  height_ratios=(3, 2, 3))
    for ax in (ax_load, ax_rep, ax_lat):
        ax.axvspan(t_up, t_drop, color="0.92", zorder=0)
        ax.axvspan(t_drop, t_drop + cfg["down_window"], color="#fde2c8", zorder=0)
        ax.grid(alpha=0.3)
    ax_load.step(ts, [s["planned_rate"] for s in samples], where="post", color="k",
                 label="offered load")
    ax_load.plot(ts, [s["total_rps"] for s in samples], color="0.4", ls="--",
                 label="mesh total (metrics API)")
    pods = sorted({p for s in samples for p in s["pod_rps"]})
    for i, pod in enumerate(pods):
        ax_load.plot(ts, [s["pod_rps"].get(pod) for s in samples], lw=1,
                     label=f"pod {i + 1}" if len(pods) <= 8 else None)
    ax_load.axhline(cfg["target_rps"], color="tab:red", ls=":", label="HPA target per Pod")
    ax_load.set_ylabel("requests/s")
    ax_load.legend(fontsize=7, ncol=3, loc="upper right")
    ax_rep.step(ts, [s["spec_replicas"] for s in samples], where="post", label="desired")
    ax_rep.step(ts, [s["ready_replicas"] for s in samples], where="post", label="ready")
    ax_rep.set_ylabel("replicas")
    ax_rep.set_ylim(0, cfg["max_replicas"] + 0.5)
    ax_rep.legend(fontsize=7, loc="upper right")
    lt = [seg["t"] + 0.5 for seg in load if seg["p99"] is not None]
    ax_lat.plot(lt, [seg["p99"] * 1e3 for seg in load if seg["p99"] is not None],
                marker=".", lw=1, label="client p99 (per second of load)")
    bad = [seg for seg in load if seg["unfinished"] or seg["errors"]]
    if bad:
        ax_lat.plot([seg["t"] + 0.5 for seg in bad],
                    [max(seg["p99"] or 0, 1e-3) * 1e3 for seg in bad], "rx",
                    label="second with failed/unfinished requests")
    ax_lat.axhline(cfg["p99_target"] * 1e3, color="tab:red", ls=":", label="p99 target")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("p99 latency, ms")
    ax_lat.set_xlabel("seconds since the load started (grey: high load; orange: "
                      f"scale-down stabilisation window, {cfg['down_window']} s)")
    ax_lat.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"HPA on mesh requests/s: {cfg['low_rate']:g} → {cfg['high_rate']:g} → "
                 f"{cfg['low_rate']:g} req/s, target {cfg['target_rps']:g}/Pod, scale-up "
                 f"≤ {cfg['up_pods']} Pod/{cfg['up_period']} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
