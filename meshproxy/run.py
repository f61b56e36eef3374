"""Running one proxy process: signals, reload, drain, admin, worker duties.

:func:`serve` is the whole life of a process that proxies traffic: start the
:class:`~meshproxy.proxy.Proxy`, then

- SIGHUP, or a change of the config file (when not a worker): reload;
- SIGTERM / SIGINT: drain (stop accepting, finish requests in flight up to the
  drain timeout, close idle keep-alive connections) and return 0;
- alone: serve the admin API; as a worker of a supervisor (:mod:`meshproxy.workers`):
  write a state snapshot for the supervisor's merged admin view every half second, and
  drain when the supervisor disappears.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from meshproxy.config import Loaded
from meshproxy.discovery import DiscoveringProxy
from meshproxy.metrics import Stats
from meshproxy.proxy import Proxy
from meshproxy.reload import FileWatcher

if TYPE_CHECKING:
    from meshproxy.admin import AdminServer

log = logging.getLogger("meshproxy")

SNAPSHOT_INTERVAL = 0.5
#: The supervisor's shared rate-limit bucket file (meshproxy.resilience.shm_buckets).
BUCKETS_ENV = "MESHPROXY_BUCKETS"


def switches_path(run_dir: str) -> Path:
    """Switch modes set through the supervisor's admin API, for every worker."""
    return Path(run_dir) / "switches.json"


async def serve(loaded: Loaded, path: str | Path, *, worker_of: int | None = None,
                run_dir: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; the exit status (0 after a clean drain)."""
    loop = asyncio.get_running_loop()
    # A Proxy whose clusters may follow Services of the control plane (the config's
    # ``discovery`` section; without one it is a plain Proxy, see meshproxy.discovery).
    proxy: Proxy = DiscoveringProxy(loaded, stats=Stats(), loop=loop)
    if os.environ.get(BUCKETS_ENV):  # a worker: rate limits shared with its siblings
        from meshproxy.resilience.shm_buckets import SharedBucketTable

        proxy.use_shared_buckets(SharedBucketTable(os.environ[BUCKETS_ENV]))
    try:
        await proxy.start()
    except OSError as e:
        log.error("cannot start listeners: %s", e)
        await proxy.close()
        return 1
    # Everything allocated so far (modules, config objects) lives as long as
    # the process: move it out of the collector's sight, so a full collection walks
    # only what requests create and cannot stall the loop for tens of milliseconds.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    reloads: set[asyncio.Task] = set()

    def reload(count: bool) -> None:
        t = loop.create_task(proxy.reload(path, count=count))
        reloads.add(t)
        t.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # A worker's reload is decided (and counted) by its supervisor.
    loop.add_signal_handler(signal.SIGHUP, reload, worker_of is None)
    admin: AdminServer | None = None
    watcher: FileWatcher | None = None
    snap: asyncio.Task | None = None
    try:
        if worker_of is None:
            if loaded.config.admin.enabled:
                # Imported here: workers of a supervisor (and proxies without admin)
                # never serve it.
                from meshproxy.admin import AdminServer, ProxySource

                admin = AdminServer(ProxySource(proxy, path), loaded.config.admin)
                await admin.start()
                log.info("admin API on %s:%d", loaded.config.admin.address, admin.port)
            if loaded.config.reload.watch:
                watcher = FileWatcher(path, interval=lambda: proxy.config.reload.poll_interval,
                                      on_change=lambda: proxy.reload(path))
                watcher.start()
        else:
            snap = loop.create_task(_worker_duties(proxy, worker_of, run_dir, stop))
        for lst in proxy.listeners.values():
            log.info("listener %s (%s) on %s:%d", lst.name, lst.kind, lst.config.address,
                     lst.port)
        await stop.wait()
        log.info("draining (timeout %.1fs)", proxy.config.drain.timeout)
        if admin is not None:
            await admin.stop()  # /ready must stop answering first
            admin = None
        await proxy.drain()
        log.info("drained, exiting")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watcher is not None:
            await watcher.stop()
        if snap is not None:
            snap.cancel()
            await asyncio.gather(snap, return_exceptions=True)
        for t in list(reloads):
            t.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        if admin is not None:
            await admin.stop()
        await proxy.close()


def snapshot_path(run_dir: str, pid: int) -> Path:
    return Path(run_dir) / f"worker-{pid}.json"


async def _worker_duties(proxy: Proxy, parent: int, run_dir: str | None,
                         stop: asyncio.Event) -> None:
    """Publish this worker's state for the supervisor; drain if the supervisor dies."""
    path = snapshot_path(run_dir, os.getpid()) if run_dir else None
    modes_seen = 0.0
    while True:
        if os.getppid() != parent:
            log.warning("supervisor %d is gone: draining", parent)
            stop.set()
            return
        if run_dir is not None:
            modes = switches_path(run_dir)
            try:
                mtime = modes.stat().st_mtime
                if mtime != modes_seen:
                    proxy.apply_switch_modes(json.loads(modes.read_text()))
                    modes_seen = mtime
            except (OSError, ValueError):
                pass  # none set yet (or mid-replace: next round)
        if path is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(proxy.snapshot()))
            tmp.replace(path)  # atomic: the supervisor never reads half a file
        await asyncio.sleep(SNAPSHOT_INTERVAL)
