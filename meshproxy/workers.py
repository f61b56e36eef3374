"""``--workers N``: a supervisor process and N proxy worker processes.

Each worker is a full proxy process (``meshproxy --config FILE --worker-of PID``)
that binds every listener itself with ``SO_REUSEPORT``: the kernel spreads new
connections over the workers, and no file descriptor passing is needed. The
supervisor

- sets up prometheus-client's multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR``)
  before any worker starts, so ``/metrics`` merges every worker's series, and marks a
  dead worker's gauges gone (``mark_process_dead``);
- serves the admin API with a merged view: ``/clusters`` sums the counters of the
  workers' state snapshots (files each worker rewrites every half second);
- creates the shared rate-limit bucket file (one limit for the whole group, see
  :mod:`meshproxy.resilience.shm_buckets`) and hands its path to the workers;
- serves ``/resilience``, ``/events`` and ``/switches`` from the workers' snapshots;
  ``POST /switches/{name}`` writes the mode to a file every worker applies within half a
  second, with the fingerprint of the switch config it was made for (a worker whose
  switch has another config since a reload, or one restarted after it, ignores it);
- owns reload: it watches the file (and takes SIGHUP), validates the new config,
  counts the attempt, and only then signals SIGHUP to the workers;
- restarts a worker that dies (after a pause), and on SIGTERM forwards it, waits for
  every worker to drain, and exits 0.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import mark_process_dead

from meshproxy.admin import AdminServer
from meshproxy.config import ConfigError, Loaded, load_config
from meshproxy.metrics import MULTIPROC_ENV, Stats, collect_registry
from meshproxy.reload import FileWatcher
from meshproxy.resilience.degrade import Mode, config_id
from meshproxy.resilience.shm_buckets import SharedBucketTable
from meshproxy.run import BUCKETS_ENV, snapshot_path, switches_path

log = logging.getLogger("meshproxy.workers")

RUN_DIR_ENV = "MESHPROXY_RUN_DIR"
RESTART_DELAY = 1.0
STARTUP_TIMEOUT = 30.0


def merge_clusters(snapshots: list[dict]) -> list[dict]:
    """Sum per-endpoint counters over workers; an endpoint is healthy only if every
    worker says so, ejected if any does."""
    merged: dict[str, dict] = {}
    summed = ("active_requests", "requests", "errors", "responses_5xx")
    for snap in snapshots:
        for c in snap.get("clusters", []):
            mc = merged.setdefault(c["name"], {"name": c["name"], "lb_policy": c["lb_policy"],
                                               "panic_total": 0, "endpoints": {}})
            mc["panic_total"] += c.get("panic_total", 0)
            for ep in c["endpoints"]:
                me = mc["endpoints"].get(ep["address"])
                if me is None:
                    me = mc["endpoints"][ep["address"]] = copy.deepcopy(ep)
                    continue
                for k in summed:
                    me[k] += ep[k]
                me["healthy"] = me["healthy"] and ep["healthy"]
                me["ejected"] = me["ejected"] or ep["ejected"]
                if me.get("pool") and ep.get("pool"):
                    for k, v in ep["pool"].items():
                        me["pool"][k] += v
    return [{**c, "endpoints": list(c["endpoints"].values())} for c in merged.values()]


class Supervisor:
    """Starts, watches and stops the workers; serves the merged admin API."""

    def __init__(self, loaded: Loaded, path: str | Path, workers: int) -> None:
        self._loaded = loaded
        self.path = str(path)
        self.n = workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.metrics_dir = tempfile.mkdtemp(prefix="meshproxy-metrics-")
        self.run_dir = tempfile.mkdtemp(prefix="meshproxy-run-")
        os.environ[MULTIPROC_ENV] = self.metrics_dir
        # prometheus-client picks its value class at import; switch this process too.
        values.ValueClass = values.MultiProcessValue()
        self.stats = Stats()
        self._tasks: set[asyncio.Task] = set()
        # created here, before any worker, so that all of them open the same table
        self.buckets = SharedBucketTable(Path(self.run_dir) / "ratelimit.buckets")

    # --- AdminSource -------------------------------------------------------------------
    def ready(self) -> bool:
        snaps = self._snapshots()
        return (not self.stopping and len(snaps) >= self.n
                and all(s.get("ready") for s in snaps))

    def loaded(self) -> Loaded:
        return self._loaded

    def clusters(self) -> list[dict]:
        return merge_clusters(self._snapshots())

    def registry(self) -> CollectorRegistry:
        return collect_registry(self.stats.registry)

    async def reload(self) -> bool:
        try:
            loaded = load_config(self.path)
        except ConfigError as e:
            for field, msg in e.problems:
                log.error("config reload refused: %s: %s: %s", e.source, field, msg)
            self.stats.config_reloads.labels("failure").inc()
            return False
        if loaded.version == self._loaded.version:
            return True
        self._loaded = loaded
        self.stats.config_reloads.labels("success").inc()
        self.stats.config_loaded.set(loaded.loaded_at)
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP)
        log.info("config %s validated; workers reloading", loaded.version)
        return True

    def resilience(self) -> dict:
        return {"workers": [s.get("resilience", {}) for s in self._snapshots()]}

    def events(self, *, kind: str | None, since: int) -> list[dict]:
        out = []
        for i, snap in enumerate(self._snapshots()):
            for e in snap.get("events", []):
                if e["seq"] > since and (kind is None or e["kind"] == kind or (
                        kind.endswith(".") and e["kind"].startswith(kind))):
                    out.append({**e, "worker": i})
        return sorted(out, key=lambda e: e["time"])

    def switches(self) -> list[dict]:
        merged: dict[str, dict] = {}
        for snap in self._snapshots():
            for sw in snap.get("resilience", {}).get("switches", []):
                m = merged.get(sw["name"])
                if m is None:
                    merged[sw["name"]] = {**sw, "worker_states": [sw["state"]]}
                else:
                    m["degraded_total"] += sw["degraded_total"]
                    m["worker_states"].append(sw["state"])
        return list(merged.values())

    async def flip_switch(self, name: str, mode: Mode) -> dict:
        # The file's switches and those the workers learnt from the control plane
        # (a TrafficPolicy's ``degrade`` becomes a switch in every worker that follows
        # the Service), as the workers' snapshots list them.
        # Each flip names the switch config it was made for (see
        # Proxy.apply_switch_modes): the workers' view first, else the file's.
        known = {s.name: config_id(s) for s in self._loaded.config.resilience.switches}
        known.update((sw["name"], sw.get("config_id")) for sw in self.switches())
        if name not in known:
            raise KeyError(f"no degradation switch named {name!r}")
        path = switches_path(self.run_dir)
        try:
            modes = json.loads(path.read_text())
        except (OSError, ValueError):
            modes = {}
        modes[name] = {"mode": mode, "config_id": known[name]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(modes))
        tmp.replace(path)  # atomic: a worker never reads half a file
        return {"name": name, "mode": mode, "mode_source": "admin",
                "note": "every worker applies it within 0.5 s"}

    def _snapshots(self) -> list[dict]:
        out = []
        for pid in self.procs:
            try:
                out.append(json.loads(snapshot_path(self.run_dir, pid).read_text()))
            except (OSError, ValueError):
                continue
        return out

    # --- lifecycle -------------------------------------------------------------------
    async def _spawn(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env[MULTIPROC_ENV] = self.metrics_dir
        env[RUN_DIR_ENV] = self.run_dir
        env[BUCKETS_ENV] = str(self.buckets.path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshproxy.cli", "--config", self.path,
            "--worker-of", str(os.getpid()), env=env)
        self.procs[proc.pid] = proc
        log.info("worker %d started", proc.pid)
        return proc

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        while True:
            rc = await proc.wait()
            self.procs.pop(proc.pid, None)
            mark_process_dead(proc.pid)
            snapshot_path(self.run_dir, proc.pid).unlink(missing_ok=True)
            if self.stopping:
                return
            log.error("worker %d exited with %s; restarting in %.0fs", proc.pid, rc,
                      RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)
            if self.stopping:
                return
            proc = await self._spawn()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._bg(self.reload()))
        self.stats.config_loaded.set(self._loaded.loaded_at)
        admin: AdminServer | None = None
        watcher: FileWatcher | None = None
        try:
            procs = [await self._spawn() for _ in range(self.n)]
            if not await self._started(procs):
                return 1
            for proc in procs:
                self._bg(self._watch(proc))
            cfg = self._loaded.config
            if cfg.admin.enabled:
                admin = AdminServer(self, cfg.admin)
                await admin.start()
                log.info("admin API on %s:%d (merged over %d workers)", cfg.admin.address,
                         admin.port, self.n)
            if cfg.reload.watch:
                watcher = FileWatcher(self.path,
                                      interval=lambda: self._loaded.config.reload.poll_interval,
                                      on_change=self.reload)
                watcher.start()
            await stop.wait()
            return await self._stop(admin)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if watcher is not None:
                await watcher.stop()
            if admin is not None:
                await admin.stop()
            self.stopping = True
            for proc in list(self.procs.values()):
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.buckets.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _started(self, procs: list[asyncio.subprocess.Process]) -> bool:
        """Wait until every worker reports ready; False if one exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while loop.time() < deadline:
            if any(p.returncode is not None for p in procs):
                log.error("a worker exited during startup; stopping")
                return False
            if self.ready():
                return True
            await asyncio.sleep(0.05)
        log.error("workers not ready within %.0fs", STARTUP_TIMEOUT)
        return False

    async def _stop(self, admin: AdminServer | None) -> int:
        self.stopping = True
        if admin is not None:
            await admin.stop()
        procs = [p for p in self.procs.values() if p.returncode is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        grace = self._loaded.config.drain.timeout + 5
        try:
            async with asyncio.timeout(grace):
                codes = await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            log.error("workers did not drain within %.0fs", grace)
            return 1
        return 0 if all(c == 0 for c in codes) else 1

    def _bg(self, coro: Coroutine[Any, Any, object]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
