"""One process owns a SQLite store file.

The SQLite store publishes watch events in-process (``sqlite.py``): a second process
writing the same file would change data under the first one's watchers without waking
them, and its clients would silently miss events. So opening a store takes an exclusive
``flock`` on ``<file>.owner`` (holding the owner's pid, for the error message) and a
second process is refused with a clear error. The kernel drops the lock when the owner
dies, even by SIGKILL, so a crash never leaves the file locked.

Several ``SqliteStore`` objects in one process share the lock (a count per file): tests
use a second instance as a "peer" client for locks and CAS. They do not share live
watches (each has its own hub).
"""

from __future__ import annotations

import fcntl
import os
import threading

from control.store.base import StoreError

_lock = threading.Lock()
_owned: dict[str, tuple[int, int]] = {}  # real path -> (fd, instances)


def acquire(path: str) -> str:
    """Own ``path`` for this process (again, if already owned); return the key to
    :func:`release` with. Raises StoreError when another process owns it."""
    key = os.path.realpath(path)
    with _lock:
        if key in _owned:
            fd, count = _owned[key]
            _owned[key] = (fd, count + 1)
            return key
        fd = os.open(key + ".owner", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"sqlite store {path} is in use by another process (pid"
                             f" {holder}); one API server owns a store file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _owned[key] = (fd, 1)
        return key


def release(key: str) -> None:
    """Give up one instance's share; the last one unlocks the file."""
    with _lock:
        fd, count = _owned[key]
        if count > 1:
            _owned[key] = (fd, count - 1)
            return
        del _owned[key]
        os.close(fd)  # closing the descriptor drops the flock
