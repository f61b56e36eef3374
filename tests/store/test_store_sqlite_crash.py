"""Crash consistency of the SQLite store: SIGKILL in the middle of a burst of writes
loses no acknowledged write and leaves a consistent file.

A child process (``crash_writer.py``) writes groups of concurrent creates and CAS
updates and prints each write as soon as it is acknowledged; the test kills it with
SIGKILL mid-burst, then reopens the file and checks: ``PRAGMA integrity_check`` is ok;
every acknowledged write is there (its revision is in the log with its value, and each
key's current value is at least as new as its last acknowledged write); the revision
counter and the log agree with no gaps; every current value matches the log entry of
its ``mod_revision``.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

from control.store.sqlite import SqliteOptions, SqliteStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _acks(output: str) -> list[tuple[str, str, int, str]]:
    acks = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] == "ack":  # a torn last line is not an ack
            acks.append((parts[1], parts[2], int(parts[3]), parts[4]))
    return acks


async def test_sigkill_mid_burst_loses_no_acknowledged_write(spawn, data_dir: Path) -> None:
    path = data_dir / "crash.db"
    child = spawn.python(str(HERE / "crash_writer.py"), str(path), name="crash-writer",
                         env={"PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while len(_acks(child.output())) < 600:
        assert child.poll() is None, child.output()
        assert time.monotonic() < deadline, "child acknowledged too few writes"
        await asyncio.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    acks = _acks(child.output())
    assert len(acks) >= 600

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        revision = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        log = {rev: (key, value) for rev, key, value in
               conn.execute("SELECT revision, key, value FROM log")}
        current = {key: (mod, value) for key, mod, value in
                   conn.execute("SELECT key, mod_revision, value FROM kv")}
    finally:
        conn.close()

    # the counter and the log agree, without gaps (a new store starts at revision 1)
    assert sorted(log) == list(range(2, revision + 1))
    # every acknowledged write is durable, with the value it acknowledged
    last_ack: dict[str, int] = {}
    for _op, key, rev, value in acks:
        assert log[rev] == (key, value.encode()), (rev, key)
        last_ack[key] = max(last_ack.get(key, 0), rev)
    for key, rev in last_ack.items():
        assert current[key][0] >= rev
    # current values are exactly the newest log entry of each key
    newest: dict[str, int] = {}
    for rev, (key, _value) in log.items():
        newest[key] = max(newest.get(key, 0), rev)
    assert {k: m for k, (m, _v) in current.items()} == newest
    for key, (mod, value) in current.items():
        assert log[mod] == (key, value)

    # the killed owner's lock died with it: the store opens and keeps counting
    async with await SqliteStore.open(path, options=SqliteOptions(maintenance_interval=0)) as s:
        assert await s.current_revision() == revision
        assert (await s.create("/after/crash", b"x")).mod_revision == revision + 1
