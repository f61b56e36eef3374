"""Watching the config file: a poll of its identity (inode, size, mtime) per interval.

Polling, not inotify: it survives editors that replace the file by renaming
(the watched inode vanishes), bind-mounted ConfigMaps that swap a symlink, and
network filesystems, at the cost of one ``stat`` per interval. A change calls the
callback (which reads, validates and applies the file, see
:meth:`meshproxy.proxy.Proxy.reload`); an unchanged content hash makes that a no-op.
SIGHUP triggers the same callback (wired in :mod:`meshproxy.run`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


def identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    """Calls ``on_change`` whenever the file's identity changes."""

    def __init__(self, path: str | Path, *, interval: Callable[[], float],
                 on_change: Callable[[], Awaitable[object]]) -> None:
        self.path = Path(path)
        self.interval = interval
        self.on_change = on_change
        self._seen = identity(self.path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            now = identity(self.path)
            if now is None or now == self._seen:
                continue  # a missing file (mid-rename) is not a change yet
            self._seen = now
            try:
                await self.on_change()
            except Exception:
                log.exception("config reload callback failed")
