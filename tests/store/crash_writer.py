"""Child process of ``test_store_sqlite_crash.py``: writes to a SQLite store forever and
prints one line per ACKNOWLEDGED write (``ack <op> <key> <revision> <value>``), flushed,
so the parent knows exactly what was acknowledged when it SIGKILLs this process.

Writes go in concurrent groups (creates, then CAS updates of the same keys) so that the
kill lands in the middle of group commits. Not a test module.
"""

from __future__ import annotations

import asyncio
import sys

from control.store.sqlite import SqliteOptions, SqliteStore


async def main(path: str) -> None:
    store = await SqliteStore.open(path, options=SqliteOptions(maintenance_interval=0))
    out = sys.stdout

    async def create(key: str, value: bytes) -> None:
        kv = await store.create(key, value)
        out.write(f"ack create {key} {kv.mod_revision} {value.decode()}\n")
        out.flush()

    async def update(key: str, value: bytes) -> None:
        current = await store.get(key)
        kv = await store.update(key, value, expected_revision=current.mod_revision)
        out.write(f"ack update {key} {kv.mod_revision} {value.decode()}\n")
        out.flush()

    group = 0
    out.write("ready\n")
    out.flush()
    while True:
        keys = [f"/burst/g{group:05}/k{i:02}" for i in range(16)]
        await asyncio.gather(*(create(k, f"c{group}".encode()) for k in keys))
        await asyncio.gather(*(update(k, f"u{group}".encode()) for k in keys))
        group += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
