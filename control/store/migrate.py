"""Copy every key of one store into another: ``meshctl store migrate --to consul://...``
moves a cluster's state from the embedded SQLite store to Consul.

The source is read in one ``list("")`` (one consistent snapshot on SQLite). Run it with
the API server stopped: a SQLite file is owned by one process, so opening the source
while the server runs is refused (``sqlite_owner.py``); writes after the snapshot would
not be copied anyway.
Revisions are not copied (each backend numbers its own writes); values are, byte for
byte. Before writing anything the destination is checked: a key that already exists
there with a different value stops the migration with an error naming it (unless
``overwrite``), so a mistaken target is left untouched; keys already there with the
same value are skipped, so an interrupted migration can simply be run again.

Neighbours: ``base.py`` (the interface both sides implement), ``__init__.open_store``.
"""

from __future__ import annotations

import asyncio

from control.store.base import AlreadyExists, KeyValue, Store, StoreError


async def migrate(src: Store, dst: Store, *, overwrite: bool = False,
                  concurrency: int = 16) -> int:
    """Copy all keys of ``src`` into ``dst``; return how many keys were written."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    items, _revision = await src.list("")
    existing = {kv.key: kv for kv in (await dst.list(""))[0]}
    clashes = [kv.key for kv in items
               if kv.key in existing and existing[kv.key].value != kv.value]
    if clashes and not overwrite:
        shown = ", ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
        raise StoreError(f"destination already holds {len(clashes)} key(s) with other"
                         f" values: {shown}; nothing was copied (use overwrite to replace)")
    todo = [kv for kv in items
            if kv.key not in existing or existing[kv.key].value != kv.value]
    gate = asyncio.Semaphore(concurrency)

    async def copy(kv: KeyValue) -> None:
        async with gate:
            try:
                await dst.create(kv.key, kv.value)
            except AlreadyExists:
                if not overwrite:  # created in the destination while we were copying
                    raise
                await dst.update(kv.key, kv.value)

    await asyncio.gather(*(copy(kv) for kv in todo))
    return len(todo)
