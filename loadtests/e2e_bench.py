"""End-to-end benchmark (issue #9): ``python -m loadtests.e2e_bench``.

The whole system on loopback, as ``meshctl up --demo`` runs it (``control/up.py``: API
server on SQLite and controller manager in this process, the node agent on the process
runtime and the edge meshproxy as children, the demo shop with a sidecar in every Pod),
driven through the edge while two things are measured:

1. **Endpoint propagation** over ``--scale-events`` scale-ups of ``catalog`` (2 → 3,
   then back to 2 before the next one). For each new replica this process watches the
   Pods and the ``catalog`` Endpoints (informers) and stamps, on its own monotonic
   clock, when the Pod is first seen Ready and when its address first appears in the
   Endpoints; a steady probe stream through the edge (``--probe-rate`` page loads/s)
   reads which catalog Pod served each page (``catalog.served_by``) and stamps the first
   answer from the new one. Reported: Ready → Endpoints (the controller part), Endpoints
   → first request (the proxies' part: discovery watch, in-place update, balancer) and
   Ready → first request (the issue's "within a second"). A Pod condition's
   ``lastTransitionTime`` has 1 s resolution, hence the watches. Both watches see the
   change through the same API server fan-out, so that delay mostly cancels in the
   split; the probe's resolution is one page load interval.
2. **Requests lost while a replica is killed**: under an open-loop page load
   (``--kill-rate``/s; request *i* sent at ``t0 + i / rate`` whatever happens), the app
   process of one catalog replica gets SIGKILL (found through the process runtime's
   files: the container's ``meta.json`` names Pod and container, ``pid`` the shim, whose
   child is the app). The agent restarts it. Counted: failed page loads (non-200 or no
   answer), pages whose catalog part failed, and from the frontends' sidecars (their
   ``/metrics``, before and after) the catalog attempts that failed, the retries and the
   outlier ejections. One run per variant of catalog's TrafficPolicy, changed through
   the API (a merge patch; the run waits until every frontend sidecar counted the policy
   applied): outlier detection on or off, retries as configured or off. Each variant
   kills a fresh replica (the killed one is deleted and replaced afterwards), so
   crash-loop back-off never differs between variants.
3. **Requests lost while catalog is scaled down (3 → 2) and rolled** (a template
   change), with the drain (the meshed Pods' preStop sleep before SIGTERM) and without
   it: ``e2e_bench_drain.py``.

Bounded: every wait has a timeout and says what it waited for; the load has a fixed
rate and an end; the run stops by itself and ``AllInOne`` stops the edge, the agent
(which stops the Pods), the controllers and the API server, also on failure, Ctrl-C or
SIGTERM; its data directory is a temporary directory that is removed.

Neighbours: ``control/up.py`` (the system), ``e2e_probes.py`` (the page stream, the
watches, finding the app process, the sidecars' counters), ``e2e_report.py`` (the
numbers and their tables), ``e2e_bench_drain.py`` (phase 3 and its table); the
README's "End to end (issue #9)" section has the measured tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp

from control.client.informer import Informer
from control.client.rest import ApiClient
from control.up import AllInOne, UpConfig
from loadtests.e2e_bench_drain import DrainPhase, DrainRun, table
from loadtests.e2e_probes import (
    CATALOG,
    NS,
    BenchError,
    PageStream,
    Watch,
    app_process,
    by_status,
    ready,
    restarts,
    sidecar_counters,
    until,
)
from loadtests.e2e_report import KillRun, Result, ScaleEvent, machine, report
from loadtests.procs import free_port

Obj = dict[str, Any]
Variant = Literal["outlier+retries", "retries-only", "outlier-only", "neither"]
VARIANTS: dict[str, Obj] = {
    # The demo's own policy (config/demo/policy.yaml) is "outlier+retries"; the others
    # remove one or both settings with a merge patch (null deletes a key).
    "outlier+retries": {"cluster": {"outlier": {"consecutive_5xx": 5}},
                        "route": {"retry": {"attempts": 3, "retry_on": [
                            "connect-failure", "reset", "502", "503", "504"]}}},
    "retries-only": {"cluster": {"outlier": None}},
    "outlier-only": {"route": {"retry": None}},
    "neither": {"cluster": {"outlier": None}, "route": {"retry": None}},
}


@dataclass(frozen=True)
class E2EConfig:
    """Settings of one run; defaults are the issue's (50 scale events)."""

    scale_events: int = 50
    # Rates the demo sustains on a busy 2-core machine without queueing (measured: at
    # load average 11, 50 pages/s took p99 0.5 s and 100 pages/s queued for seconds).
    probe_rate: float = 25.0     # page loads/s during the scale phase (40 ms resolution)
    kill_rate: float = 50.0      # page loads/s while a replica is killed
    kill_duration: float = 20.0  # s of load per variant (longer while the victim is away)
    kill_at: float = 5.0         # s into the load when the app process gets SIGKILL
    variants: tuple[Variant, ...] = ("outlier+retries", "retries-only", "outlier-only",
                                     "neither")
    rounds: int = 3              # kill runs per variant, interleaved
    # Phase 3 (e2e_bench_drain.py): scale-downs per drain setting and policy variant
    scaledown_events: int = 5
    scaledown_variants: tuple[Variant, ...] = ("outlier+retries", "neither")
    event_timeout: float = 60.0  # s for one scale event (new Pod serving, old one gone)
    ready_timeout: float = 300.0  # s for the demo to come up

    def __post_init__(self) -> None:
        if self.scale_events < 0:
            raise ValueError(f"scale_events must be >= 0, got {self.scale_events}")
        if not (self.probe_rate > 0 and self.kill_rate > 0):
            raise ValueError("probe_rate and kill_rate must be positive")
        if not 0 < self.kill_at < self.kill_duration:
            raise ValueError(f"kill_at ({self.kill_at}) must lie inside kill_duration "
                             f"({self.kill_duration})")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.scaledown_events < 0:
            raise ValueError(f"scaledown_events must be >= 0, got {self.scaledown_events}")
        if self.scaledown_events and not self.scaledown_variants:
            raise ValueError("scaledown_variants must name at least one variant")
        unknown = (set(self.variants) | set(self.scaledown_variants)) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")


class E2EBench:
    def __init__(self, cfg: E2EConfig, work: Path) -> None:
        self.cfg = cfg
        self.up_cfg = UpConfig(
            data_dir=work / "mesh", api_port=0, agent_port=free_port(),
            edge_port=free_port(), edge_admin_port=free_port(), node_name="bench",
            runtime="process", demo=True, write_client_config=False)
        self.watch = Watch()
        self.killed: set[str] = set()
        self.url = f"http://127.0.0.1:{self.up_cfg.edge_port}/"

    async def run(self, result: Result, drain_runs: list[DrainRun] | None = None) -> None:
        async with (AllInOne(self.up_cfg) as up,
                    ApiClient(up.client_config, timeout=30) as api,  # type: ignore[arg-type]
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                          connector=aiohttp.TCPConnector(limit=128)) as http):
            self.up, self.api, self.http = up, api, http
            pods = Informer(api, "pods", namespace=NS)
            pods.add_handler(on_add=self.watch.on_pod,
                             on_update=lambda _o, n: self.watch.on_pod(n),
                             on_delete=self.watch.on_pod_gone)
            eps = Informer(api, "endpoints", namespace=NS)
            eps.add_handler(on_add=self.watch.on_endpoints,
                            on_update=lambda _o, n: self.watch.on_endpoints(n))
            async with pods, eps:
                await pods.wait_synced(60)
                await eps.wait_synced(60)
                await self.demo_ready(pods)
                self.frontend_admin = self.admin_ports(pods)
                await self.scale_phase(result)
                # Variants in interleaved rounds: a burst of other work on the machine
                # hits one round of one variant, not every run of it.
                for _ in range(self.cfg.rounds):
                    for variant in self.cfg.variants:
                        k = await self.kill_phase(variant)
                        result.kills.append(k)
                        progress(f"kill run {variant}: {k.pages_failed} of {k.pages} pages "
                                 "failed")
                if self.cfg.scaledown_events and drain_runs is not None:
                    phase = DrainPhase(self, rate=self.cfg.kill_rate,
                                       events=self.cfg.scaledown_events,
                                       variants=self.cfg.scaledown_variants,
                                       timeout=self.cfg.event_timeout)
                    await phase.run(lambda r: (drain_runs.append(r), progress(
                        f"{r.kind} (drain {r.drain}, {r.variant}): {r.pages_failed} of "
                        f"{r.pages} pages failed")))

    async def demo_ready(self, pods: Informer) -> None:
        async def page_ok() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.get(self.url) as r:
                    return r.status == 200 and self.up.edge_ready()
            return False
        deadline = time.monotonic() + self.cfg.ready_timeout
        while True:
            live = [p for p in pods.list() if p["metadata"]["labels"].get("app") != "loadgen"]
            if len(live) >= 10 and all(ready(p) for p in live) and await page_ok():
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the demo was not ready within {self.cfg.ready_timeout:g}s:"
                                 f" {sum(map(ready, live))}/{len(live)} Pods Ready")
            if self.up.agent is not None and not self.up.agent.alive():
                raise BenchError(f"the agent exited; see {self.up.agent.log_path}")
            await asyncio.sleep(0.5)

    def admin_ports(self, pods: Informer) -> list[int]:
        ports = [int(m["hostPort"]) for p in pods.list()
                 if p["metadata"]["labels"].get("app") == "frontend"
                 for m in p.get("status", {}).get("portMappings") or []
                 if m.get("name") == "mesh-admin"]
        if not ports:
            raise BenchError("no frontend sidecar admin port in the Pods' portMappings")
        return ports

    # -- 1. endpoint propagation -----------------------------------------------------

    async def scale_phase(self, result: Result) -> None:
        stream = PageStream(self.http, self.url, self.cfg.probe_rate)
        stop = asyncio.Event()
        load = asyncio.create_task(stream.run(lambda _t: stop.is_set()), name="probe")
        try:
            for _ in range(self.cfg.scale_events):
                ev = ScaleEvent(pod="", scaled=time.monotonic())
                result.events.append(ev)
                await self.scale_event(ev, stream)
                progress(f"scale event {len(result.events)}/{self.cfg.scale_events}: "
                         f"{ev.pod} served {_since(ev.ready, ev.first_request)} after Ready")
        finally:
            stop.set()
            await load
        result.scale_pages = len(stream.hits)
        result.scale_pages_failed = sum(1 for h in stream.hits if h.status != 200)
        result.scale_catalog_failed = sum(1 for h in stream.hits if h.catalog_failed)
        result.scale_failures_by_status = by_status(stream.hits)
        result.scale_page_latency = stream.latency()

    async def scale_event(self, ev: ScaleEvent, stream: PageStream) -> None:
        """One scale-up to 3 replicas, stamped, and back to 2 (the removed Pod gone)."""
        w, timeout = self.watch, self.cfg.event_timeout
        before = set(w.pods) | set(w.created)
        await self.api.scale("deployments", CATALOG, 3, namespace=NS)
        ev.pod = await until(lambda: next(iter(set(w.live()) - before), None),
                             [w.changed], timeout, "the new catalog Pod")
        await until(lambda: ev.pod in stream.first_by, [stream.seen], timeout,
                    f"a page served by {ev.pod}")
        ev.created = w.created.get(ev.pod)
        ev.ready = w.ready_since.get(ev.pod)
        ev.endpoint = w.added_at.get(ev.pod)
        ev.first_request = stream.first_by[ev.pod]
        if ev.ready is None or ev.endpoint is None:
            ev.note = "served before this process saw it Ready / in the Endpoints"
        await self.api.scale("deployments", CATALOG, 2, namespace=NS)
        await until(lambda: len(w.pods) == 2 and len(w.addresses) == 2, [w.changed],
                    timeout, "catalog back at 2 Pods and 2 endpoints")

    # -- 2. a replica killed ---------------------------------------------------------

    async def set_policy(self, variant: str) -> Obj:
        """Put catalog's TrafficPolicy in the variant's shape (from the demo's, as
        applied) and wait until every frontend sidecar counted an applied update."""
        current = await self.api.get("trafficpolicies", CATALOG, namespace=NS)
        base = await sidecar_counters(self.http, self.frontend_admin)
        # Back to the demo's settings first, then remove what the variant turns off.
        patch = {"spec": {"cluster": dict(VARIANTS["outlier+retries"]["cluster"]),
                          "route": dict(VARIANTS["outlier+retries"]["route"])}}
        for part, values in VARIANTS[variant].items():
            patch["spec"][part].update(values)
        updated = await self.api.patch("trafficpolicies", CATALOG, patch, namespace=NS)
        if updated["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            want = base["policies_applied"] + len(self.frontend_admin)

            async def applied() -> bool:
                got = await sidecar_counters(self.http, self.frontend_admin)
                return got["policies_applied"] >= want
            deadline = time.monotonic() + 30
            while not await applied():
                if time.monotonic() > deadline:
                    raise BenchError(f"the frontends' sidecars did not apply policy {variant}")
                await asyncio.sleep(0.2)
        return updated["spec"]

    async def kill_phase(self, variant: str) -> KillRun:
        cfg, w = self.cfg, self.watch
        run = KillRun(variant=variant, policy=await self.set_policy(variant),
                      loadavg=os.getloadavg()[0])
        stream = PageStream(self.http, self.url, cfg.kill_rate)
        # A replica never killed before (the previous victims were replaced): the same
        # restart back-off for every variant.
        # A replica never killed before (previous victims are replaced), with the fewest
        # restarts (the agent's crash-loop back-off grows with them; a slow machine can
        # restart a container on a failed liveness probe): the same immediate first
        # restart for every variant, as far as the system allows.
        candidates = await until(
            lambda: sorted((restarts(w.pods[n]), n) for n in w.live()
                           if n in w.addresses and ready(w.pods[n]) and n not in self.killed),
            [w.changed], cfg.event_timeout, "a ready catalog replica not killed before")
        run.restarts_before, run.victim = candidates[0]
        self.killed.add(run.victim)
        before = await sidecar_counters(self.http, self.frontend_admin)
        others = {p: n for p, n in w.restarts.items() if not p.startswith(f"{CATALOG}-")}
        killed: list[float] = []
        deadline = cfg.kill_duration + cfg.event_timeout

        def done(elapsed: float) -> bool:
            if elapsed >= deadline:
                return True
            back = killed and any(h.catalog_by == run.victim and h.sent > killed[0]
                                  for h in stream.hits[-50:])
            return elapsed >= cfg.kill_duration and bool(back)

        load = asyncio.create_task(stream.run(done), name="kill-load")
        try:
            await asyncio.sleep(cfg.kill_at)
            pid = app_process(self.up.data_dir / "agent", run.victim)
            os.kill(pid, signal.SIGKILL)
            killed.append(time.monotonic())
        finally:
            await load
        t = killed[0]
        after = await sidecar_counters(self.http, self.frontend_admin)
        run.sidecar = {k: after[k] - before[k] for k in after if k != "policies_applied"}
        run.pages = len(stream.hits)
        run.pages_failed = sum(1 for h in stream.hits if h.status != 200)
        run.catalog_failed = sum(1 for h in stream.hits if h.catalog_failed)
        run.other_failed = sum(1 for h in stream.hits
                               if h.status != 200 and not h.catalog_failed)
        run.other_restarts = sum(n - others.get(p, 0) for p, n in w.restarts.items()
                                 if p in others)
        run.catalog_timeouts = sum(1 for h in stream.hits if h.catalog_timeout)
        run.failures_by_status = by_status(stream.hits)
        run.page_latency = stream.latency()

        def since(stamp: float | None) -> float | None:
            return stamp - t if stamp is not None and stamp > t else None
        run.not_ready_after = since(w.unready_since.get(run.victim))
        run.endpoint_removed_after = since(w.removed_at.get(run.victim))
        run.ready_again_after = since(w.ready_since.get(run.victim))
        # Sent after the kill: a page queued since before it may carry an older answer.
        back = [h.done for h in stream.hits if h.catalog_by == run.victim and h.sent > t]
        run.serving_again_after = min(back) - t if back else None
        if run.victim in w.pods:
            run.restarts = restarts(w.pods[run.victim])
        if run.serving_again_after is None:
            run.note = f"the victim served nothing again within {deadline:g}s of load"
        await self.replace(run.victim)
        return run

    async def replace(self, victim: str) -> None:
        """Delete the killed Pod and wait until its replacement serves pages."""
        w = self.watch
        await self.api.delete("pods", victim, namespace=NS)
        stream = PageStream(self.http, self.url, self.cfg.probe_rate)
        before = set(w.created)
        new: list[str] = []

        def serving(_t: float) -> bool:
            fresh = set(w.live()) - before
            new[:] = sorted(fresh)
            return bool(fresh & set(stream.first_by)) and victim not in w.pods
        load = asyncio.create_task(stream.run(serving), name="replace-probe")
        try:
            await until(lambda: load.done(), [w.changed, stream.seen], self.cfg.event_timeout,
                        f"a replacement of {victim} serving pages")
        finally:
            if not load.done():
                load.cancel()
            await asyncio.gather(load, return_exceptions=True)



def progress(line: str) -> None:
    """One line on stderr per finished step: a full run takes a quarter of an hour."""
    print(f"e2e_bench: {line}", file=sys.stderr, flush=True)


def _since(a: float | None, b: float | None) -> str:
    return "?" if a is None or b is None else f"{(b - a) * 1e3:.0f} ms"


# -- command line ----------------------------------------------------------------------

def parse(argv: list[str] | None) -> tuple[E2EConfig, argparse.Namespace]:
    d = E2EConfig()
    p = argparse.ArgumentParser(prog="python -m loadtests.e2e_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scale-events", type=int, default=None,
                   help=f"scale-ups of catalog (default {d.scale_events})")
    p.add_argument("--probe-rate", type=float, default=d.probe_rate)
    p.add_argument("--kill-rate", type=float, default=d.kill_rate)
    p.add_argument("--kill-duration", type=float, default=None)
    p.add_argument("--kill-at", type=float, default=None)
    p.add_argument("--rounds", type=int, default=None,
                   help=f"kill runs per variant, interleaved (default {d.rounds})")
    p.add_argument("--variants", default=None,
                   help=f"comma list of {', '.join(VARIANTS)} (default all)")
    p.add_argument("--scaledown-events", type=int, default=None,
                   help=f"scale-downs per drain setting and variant (default "
                        f"{d.scaledown_events}; 0 skips the drain phase)")
    p.add_argument("--scaledown-variants", default=None,
                   help="comma list of catalog policy variants for the scale-downs "
                        f"(default {','.join(d.scaledown_variants)})")
    p.add_argument("--quick", action="store_true",
                   help="3 scale events, two kill variants of 8 s, one scale-down per "
                        "drain setting: checks the harness")
    p.add_argument("--json", type=Path, help="also write every number to this file")
    args = p.parse_args(argv)
    quick = {"scale_events": 3, "kill_duration": 8.0, "kill_at": 2.0,
             "variants": ("outlier+retries", "neither"), "rounds": 1,
             "scaledown_events": 1, "scaledown_variants": ("neither",)} if args.quick else {}
    opts: Obj = {**quick, "probe_rate": args.probe_rate, "kill_rate": args.kill_rate}
    for name in ("scale_events", "kill_duration", "kill_at", "rounds", "scaledown_events"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    for name in ("variants", "scaledown_variants"):
        if getattr(args, name) is not None:
            opts[name] = tuple(v.strip() for v in getattr(args, name).split(",")
                               if v.strip())
    try:
        cfg = E2EConfig(**opts)
    except ValueError as e:
        p.error(str(e))
    return cfg, args


async def _main(cfg: E2EConfig, result: Result, drain_runs: list[DrainRun]) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # SIGTERM ends the run like Ctrl-C does: the task is cancelled and AllInOne stops
    # every process it started on the way out.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        await E2EBench(cfg, Path(tmp)).run(result, drain_runs)


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse(argv)
    result = Result(config=asdict(cfg), machine=machine())
    drain_runs: list[DrainRun] = []
    code = 0
    try:
        asyncio.run(_main(cfg, result, drain_runs))
    except BenchError as e:
        print(f"e2e_bench: {e}", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("e2e_bench: interrupted; everything it started is stopped", file=sys.stderr)
        code = 130
    result.machine["loadavg_end"] = os.getloadavg()[0]
    print(report(result), end="")
    if drain_runs:
        print("\n" + table(drain_runs, cfg.kill_rate), end="")
    if args.json:
        args.json.write_text(json.dumps({**asdict(result),
                                         "drain": [asdict(r) for r in drain_runs]}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
