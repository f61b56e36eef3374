"""The worker loop every controller runs: take a key, reconcile, forget or back off.

sample-controller's ``processNextWorkItem`` as a function, so each controller writes
only ``reconcile(key)``:

- success (``None``): ``forget`` the key (reset its back-off);
- a number ``n``: success, but look again in ``n`` seconds (``add_after``), e.g. to
  re-check a deadline;
- :class:`PermanentError`: the object is invalid and retrying cannot help: log it,
  ``forget`` it, do not requeue (the next change to the object enqueues it again);
- a :class:`~control.client.errors.Conflict` (409: the cache was older than the
  server): expected under concurrent writers; requeued with back-off and logged in one
  line, no traceback, since the next reconcile reads the newer object;
- any other exception: a temporary failure: ``add_rate_limited`` (exponential back-off).

In every case ``done`` is called, so the key can be handed out again.

Neighbours: :mod:`control.client.workqueue`, :mod:`control.client.informer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from control.client.errors import Conflict
from control.client.workqueue import QueueShutDown, WorkQueue

K = TypeVar("K", bound=Hashable)
Reconcile = Callable[[K], Awaitable[float | None]]

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """Reconciling this key cannot succeed until the object changes: do not retry."""


async def process_next(queue: WorkQueue[K], reconcile: Reconcile[K]) -> None:
    """Handle one key from ``queue``; raises :class:`QueueShutDown` when it is shut down."""
    key = await queue.get()
    try:
        again = await reconcile(key)
    except asyncio.CancelledError:
        raise
    except PermanentError as e:
        log.warning("%s: dropping %r, not retrying: %s", queue.name, key, e)
        queue.forget(key)
    except Conflict as e:
        log.info("%s: %r changed under us, reconciling again: %s", queue.name, key, e)
        queue.add_rate_limited(key)
    except Exception:
        log.exception("%s: reconciling %r failed (retry %d)", queue.name, key,
                      queue.num_requeues(key) + 1)
        queue.add_rate_limited(key)
    else:
        queue.forget(key)
        if again is not None:
            queue.add_after(key, again)
    finally:
        queue.done(key)


async def run_workers(queue: WorkQueue[K], reconcile: Reconcile[K], *, workers: int = 1) -> None:
    """Run ``workers`` concurrent workers until the queue shuts down (or this is cancelled).

    Concurrency never puts two workers on one key: the queue hands each key to one
    worker at a time.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    async def worker() -> None:
        while True:
            try:
                await process_next(queue, reconcile)
            except QueueShutDown:
                return

    async with asyncio.TaskGroup() as tg:
        for _ in range(workers):
            tg.create_task(worker())
