"""SIGINT and SIGTERM as a stop request for the running event loop, where it can have one.

A loop takes signal handlers only in the main thread; the API server and the CLI's
long-running verbs also run in a worker thread (tests run ``meshctl`` in-process off
the event loop), where Ctrl-C is not theirs to handle, so there the handlers are simply
not installed. Neighbours: ``api/main.py`` and ``cli/common.py`` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], object]) -> Iterator[None]:
    """Inside, SIGINT and SIGTERM call ``callback`` on the running loop; the handlers are
    removed on the way out. Nothing is installed off the main thread."""
    loop = asyncio.get_running_loop()
    installed = []
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
