"""The end-to-end benchmark's third phase: requests lost while catalog shrinks or rolls.

A replica that goes away on purpose should lose nothing: its Pod is marked for deletion
(graceful delete), the endpoints controller drops it at once, and the drain (a preStop
sleep the sidecar injection gives every meshed app container, ``mesh.io/drain-seconds``,
default 5 s capped at half the grace period: 2.5 s for catalog's 5 s) keeps the app
serving until the callers' sidecars have stopped sending to it; only then does the app
get SIGTERM, and its sidecar after it (``control/agent/lifecycle.py``).

Measured under the same open-loop page load as the kill runs (``--kill-rate``/s through
the edge, request *i* sent at ``t0 + i / rate``):

- **scale-down**: catalog scaled 2 → 3 (the new replica waited for until it serves
  pages), then, ``LEAD`` seconds into the load, 3 → 2; the load goes on until the Pod
  the ReplicaSet picked is gone from the API (its agent finalized it) and ``TAIL``
  seconds more. Repeated ``--scaledown-events`` times per catalog policy variant;
- **rolling update**: catalog's template changed (the drain annotation), so both
  replicas are replaced one at a time (maxSurge 1, maxUnavailable 0); the load runs
  from the change until both new replicas serve and the old ones are gone, plus
  ``TAIL``.

Both with the default drain and with the drain off (``mesh.io/drain-seconds: "0"`` on
catalog's template; the rolling update that turns it off still stops drained Pods, the
one that turns it back on stops undrained ones). Counted: failed pages, pages whose
catalog part failed, the frontends' sidecars' failed catalog attempts and retries.

Neighbours: ``e2e_bench.py`` (runs this phase after the kill runs and prints its
table), ``e2e_probes.py`` (page stream, watches, sidecar counters).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from control.agent import sidecar
from control.client.rest import ApiClient
from loadtests.e2e_probes import CATALOG, NS, PageStream, Watch, by_status, ready, until
from loadtests.e2e_probes import sidecar_counters as counters

Obj = dict[str, Any]
Drain = Literal["default", "off"]
LEAD = 2.0  # s of load before the change: pages then show the baseline
TAIL = 2.0  # s of load after the last old Pod is gone: late failures still count


class Bench(Protocol):
    """What this phase uses of :class:`loadtests.e2e_bench.E2EBench`."""

    api: ApiClient
    http: aiohttp.ClientSession
    watch: Watch
    url: str
    frontend_admin: list[int]

    async def set_policy(self, variant: str) -> Obj: ...


@dataclass
class DrainRun:
    kind: Literal["scale-down", "rolling-update"]
    drain: Drain
    drain_seconds: float            # what the stopped Pods had (0: off)
    variant: str                    # catalog's TrafficPolicy variant meanwhile
    victims: list[str] = field(default_factory=list)
    pages: int = 0
    pages_failed: int = 0
    catalog_failed: int = 0
    failures_by_status: dict[str, int] = field(default_factory=dict)
    sidecar: dict[str, float] = field(default_factory=dict)  # frontends' counters, delta
    endpoint_removed_after: float | None = None  # s from the change: first victim out
    gone_after: float | None = None  # s from the change: the last victim deleted
    loadavg: float = 0.0
    note: str = ""


class DrainPhase:
    """Runs the scale-downs and rolling updates of the module docstring."""

    def __init__(self, bench: Bench, *, rate: float, events: int,
                 variants: tuple[str, ...], timeout: float) -> None:
        self.b = bench
        self.rate, self.events, self.variants, self.timeout = rate, events, variants, timeout

    async def run(self, log: Any) -> list[DrainRun]:
        runs: list[DrainRun] = []
        default = await self.default_drain()
        for drain in ("default", "off"):
            if drain == "off":  # roll to drain off: the old (drained) Pods are stopped
                runs.append(await self.rolling_update(set_drain_off=True, stopped=default))
                log(runs[-1])
            for variant in self.variants:
                await self.b.set_policy(variant)
                for _ in range(self.events):
                    runs.append(await self.scale_down(
                        drain, default if drain == "default" else 0.0, variant))
                    log(runs[-1])
        # back to the default drain: the old (undrained) Pods are stopped
        runs.append(await self.rolling_update(set_drain_off=False, stopped=0.0))
        log(runs[-1])
        return runs

    async def default_drain(self) -> float:
        d = await self.b.api.get("deployments", CATALOG, namespace=NS)
        grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        return min(sidecar.DEFAULT_DRAIN, grace / 2)

    async def scale_down(self, drain: Drain, seconds: float, variant: str) -> DrainRun:
        w, api = self.b.watch, self.b.api
        run = DrainRun("scale-down", drain, seconds, variant, loadavg=os.getloadavg()[0])
        before = set(w.pods) | set(w.created)
        await api.scale("deployments", CATALOG, 3, namespace=NS)
        new = await until(lambda: next(iter(set(w.live()) - before), None), [w.changed],
                          self.timeout, "the new catalog Pod")
        probe = PageStream(self.b.http, self.b.url, self.rate)
        stop = asyncio.Event()
        warm = asyncio.create_task(probe.run(lambda _t: stop.is_set()), name="warm-probe")
        try:
            await until(lambda: new in probe.first_by, [probe.seen, w.changed], self.timeout,
                        f"a page served by {new}")
        finally:
            stop.set()
            await warm
        terminating = {n for n, p in w.pods.items() if p["metadata"].get("deletionTimestamp")}

        async def change() -> list[str]:
            await api.scale("deployments", CATALOG, 2, namespace=NS)
            victim = await until(
                lambda: next((n for n, p in w.pods.items()
                              if p["metadata"].get("deletionTimestamp")
                              and n not in terminating), None),
                [w.changed], self.timeout, "the catalog Pod picked for deletion")
            return [victim]

        def settled() -> bool:
            return len(w.pods) == 2 and len(w.addresses) == 2
        await self.measure(run, change, settled)
        return run

    async def rolling_update(self, *, set_drain_off: bool, stopped: float) -> DrainRun:
        w, api = self.b.watch, self.b.api
        variant = self.variants[-1] if self.variants else "outlier+retries"
        run = DrainRun("rolling-update", "default" if stopped else "off", stopped, variant,
                       loadavg=os.getloadavg()[0])
        old = set(w.live())

        async def change() -> list[str]:
            value = "0" if set_drain_off else None  # merge patch: null removes the key
            await api.patch("deployments", CATALOG, {"spec": {"template": {"metadata": {
                "annotations": {sidecar.DRAIN: value}}}}}, namespace=NS)
            return sorted(old)

        def settled() -> bool:
            live = set(w.live())
            return (len(w.pods) == 2 and not live & old and len(w.addresses) == 2
                    and all(ready(w.pods[n]) for n in live))
        await self.measure(run, change, settled)
        return run

    async def measure(self, run: DrainRun, change: Any, settled: Any) -> None:
        """Load from ``LEAD`` s before ``change()`` until its victims are gone and
        ``settled()``, plus ``TAIL`` s; fill ``run`` from what was seen."""
        w = self.b.watch
        stream = PageStream(self.b.http, self.b.url, self.rate)
        base = await counters(self.b.http, self.b.frontend_admin)
        end: list[float] = []

        def done(elapsed: float) -> bool:
            return (bool(end) and time.monotonic() >= end[0]) or \
                elapsed > LEAD + 2 * self.timeout + TAIL
        load = asyncio.create_task(stream.run(done), name="drain-load")
        try:
            await asyncio.sleep(LEAD)
            t0 = time.monotonic()
            run.victims = await change()
            await until(lambda: all(v not in w.pods for v in run.victims) and settled(),
                        [w.changed], self.timeout,
                        f"{', '.join(run.victims)} gone and catalog settled")
            run.gone_after = time.monotonic() - t0
            removed = [w.removed_at[v] - t0 for v in run.victims
                       if w.removed_at.get(v, 0) > t0]
            run.endpoint_removed_after = min(removed) if removed else None
            end.append(time.monotonic() + TAIL)
        finally:
            if not end:
                end.append(time.monotonic())
            await load
        after = await counters(self.b.http, self.b.frontend_admin)
        run.sidecar = {k: after[k] - base[k] for k in after if k != "policies_applied"}
        run.pages = len(stream.hits)
        run.pages_failed = sum(1 for h in stream.hits if h.status != 200)
        run.catalog_failed = sum(1 for h in stream.hits if h.catalog_failed)
        run.failures_by_status = by_status(stream.hits)


def table(runs: list[DrainRun], rate: float) -> str:
    """The README's table: per kind, drain and policy, summed over the runs."""
    if not runs:
        return ""
    lines = [f"**Catalog scaled down 3 → 2 and rolled (template change) under {rate:g} "
             f"pages/s, with and without the drain; summed over the runs (median times)**",
             "", "| change | drain | catalog policy | runs | pages | pages failed | catalog "
             "part failed | failed catalog attempts (frontend sidecars) | retries | "
             "endpoint removed ms | old Pod gone s |", "| --- " * 11 + "|"]
    keys = dict.fromkeys((r.kind, r.drain, r.drain_seconds, r.variant) for r in runs)
    for kind, drain, seconds, variant in keys:
        rs = [r for r in runs if (r.kind, r.drain, r.drain_seconds, r.variant)
              == (kind, drain, seconds, variant)]

        def total(key: str, rs: list[DrainRun] = rs) -> float:
            return sum(r.sidecar.get(key, 0) for r in rs)

        def median(values: list[float | None], scale: float, fmt: str) -> str:
            known = [v for v in values if v is not None]
            return format(statistics.median(known) * scale, fmt) if known else "-"
        label = f"{seconds:g} s" if drain == "default" else "off"
        lines.append(
            f"| {kind} | {label} | {variant} | {len(rs)} | {sum(r.pages for r in rs)} | "
            f"{sum(r.pages_failed for r in rs)} | {sum(r.catalog_failed for r in rs)} | "
            f"{total('catalog_attempts_5xx') + total('catalog_attempt_errors'):.0f} | "
            f"{total('catalog_retries'):.0f} | "
            f"{median([r.endpoint_removed_after for r in rs], 1e3, '.0f')} | "
            f"{median([r.gone_after for r in rs], 1, '.1f')} |")
    lines += [""] + [f"note: {r.kind} {r.drain}: {r.note}" for r in runs if r.note]
    return "\n".join(lines) + "\n"
