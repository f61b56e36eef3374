"""SQLite-specific behaviour beyond the contract: persistence across reopen, group
commit, slow watchers, compaction policy, ageing under churn, ``open_store`` URLs."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from control.store import open_store
from control.store.base import Compacted, Conflict, StoreError
from control.store.sqlite import SqliteOptions, SqliteStore

P = "/registry/pods/default/"
ROOT = Path(__file__).resolve().parent.parent.parent


async def test_acknowledged_writes_survive_close_and_reopen(data_dir: Path) -> None:
    """Values, revisions and history persist; the counter continues where it stopped."""
    path = data_dir / "s.db"
    async with await SqliteStore.open(path, options=SqliteOptions(maintenance_interval=0)) as s:
        a = await s.create(P + "a", b"1")
        b = await s.update(P + "a", b"2")
        last = await s.current_revision()
    async with await SqliteStore.open(path, options=SqliteOptions(maintenance_interval=0)) as s:
        assert await s.get(P + "a") == b
        assert await s.current_revision() == last
        c = await s.create(P + "c", b"3")
        assert c.mod_revision == last + 1
        async with s.watch(P, from_revision=a.mod_revision - 1) as w:
            events = [await asyncio.wait_for(anext(w), 10) for _ in range(3)]
        assert [e.revision for e in events] == [a.mod_revision, b.mod_revision, c.mod_revision]


async def test_concurrent_writes_share_commits_but_keep_their_own_revisions(sqlite_store) -> None:
    """Group commit: 400 concurrent creates take far fewer transactions than writes, get
    contiguous distinct revisions, and a failing CAS in a batch fails alone."""
    s, _clock = sqlite_store
    await s.create(P + "cas", b"0")
    before_rev = await s.current_revision()
    before = s.statistics()

    async def create(i: int) -> int:
        return (await s.create(f"{P}k{i:04}", b"x" * 100)).mod_revision

    async def stale_cas() -> None:
        with pytest.raises(Conflict):
            await s.update(P + "cas", b"1", expected_revision=1)

    results = await asyncio.gather(*(create(i) for i in range(400)), stale_cas())
    revisions = sorted(results[:400])
    assert revisions == list(range(before_rev + 1, before_rev + 401))
    after = s.statistics()
    assert after["writes"] - before["writes"] == 400
    assert after["commits"] - before["commits"] < 200
    assert (await s.get(P + "cas")).value == b"0"


async def test_point_reads_run_on_the_loop_and_go_to_the_pool_when_sqlite_is_busy(
        sqlite_store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A get is answered on the event loop's thread (no hand-off to a reader thread);
    when SQLite answers "busy" there, the loop does not wait: the same read is done on
    the reader pool and still returns the current value. SQLite cannot be made to
    answer busy to a WAL reader on demand (no other process may open the file), so a
    wrapper around the real ``schema.get`` raises its busy error once, on the loop's
    thread only; every read still goes to the real file."""
    from control.store import sqlite_schema

    s, _clock = sqlite_store
    kv = await s.create(P + "point", b"v1")
    real_get = sqlite_schema.get
    loop_thread = threading.get_ident()
    threads: list[int] = []
    busy_once = [True]

    def get(conn: sqlite3.Connection, key: str):
        threads.append(threading.get_ident())
        if busy_once[0] and threading.get_ident() == loop_thread:
            busy_once[0] = False
            err = sqlite3.OperationalError("database is locked")
            err.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise err
        return real_get(conn, key)

    monkeypatch.setattr(sqlite_schema, "get", get)
    assert await s.get(P + "point") == kv  # busy on the loop, answered by the pool
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread
    assert s.busy_point_reads == 1
    updated = await s.update(P + "point", b"v2")
    threads.clear()  # the writer thread reads the key too (compare-and-swap)
    assert await s.get(P + "point") == updated  # read-your-writes on the loop's connection
    assert threads == [loop_thread]
    assert s.busy_point_reads == 1


async def test_slow_watcher_catches_up_from_history_after_its_buffer_overflows(
        data_dir: Path) -> None:
    """A watcher that does not read while 50 events arrive (buffer 5) still gets all 50,
    in order, by re-reading the log; memory stays bounded meanwhile."""
    opts = SqliteOptions(maintenance_interval=0, watch_buffer=5)
    async with await SqliteStore.open(data_dir / "s.db", options=opts) as s:
        async with s.watch(P) as w:
            written = [(await s.create(f"{P}k{i:02}", b"v")).mod_revision for i in range(50)]
            assert len(w._buffer) <= 5
            got = [(await asyncio.wait_for(anext(w), 10)).revision for _ in range(50)]
        assert got == written


async def test_watch_from_the_current_revision_that_overflows_resumes_where_it_was(
        data_dir: Path) -> None:
    """A watch started from the current revision (its first history read is empty) that
    overflows before taking any event resumes from where it was: no replay of older
    (here compacted) history, no gap."""
    opts = SqliteOptions(maintenance_interval=0, watch_buffer=3)
    async with await SqliteStore.open(data_dir / "s.db", options=opts) as s:
        for i in range(5):
            await s.create(f"{P}before{i}", b"v")
        await s.compact(await s.current_revision() - 1)  # old history is gone
        async with s.watch(P, from_revision=await s.current_revision()) as w:
            waiting = asyncio.create_task(anext(w))  # reads the (empty) history, parks
            await asyncio.sleep(0.1)
            assert not waiting.done()
            kvs = await asyncio.gather(*(s.create(f"{P}k{i:02}", b"v") for i in range(10)))
            got = [(await asyncio.wait_for(waiting, 10)).revision]
            got += [(await asyncio.wait_for(anext(w), 10)).revision for _ in range(9)]
        assert got == sorted(kv.mod_revision for kv in kvs)


async def test_overflowed_watcher_whose_history_was_compacted_gets_compacted(
        data_dir: Path) -> None:
    """If the history a lagging watcher needs is compacted meanwhile, it gets Compacted
    (the API server turns it into 410 Gone and the client relists)."""
    opts = SqliteOptions(maintenance_interval=0, watch_buffer=2)
    async with await SqliteStore.open(data_dir / "s.db", options=opts) as s, s.watch(P) as w:
        for i in range(10):
            await s.create(f"{P}k{i}", b"v")
        await s.compact(await s.current_revision())
        with pytest.raises(Compacted):
            await asyncio.wait_for(anext(w), 10)


async def test_cancelled_writes_apply_entirely_or_not_at_all(sqlite_store) -> None:
    """A caller cancelled mid-write (the API server cancels handlers of clients that
    went away) leaves each write either fully applied, with its event, or not applied,
    and the store keeps working."""
    s, _clock = sqlite_store
    start = await s.current_revision()
    tasks = [asyncio.create_task(s.create(f"{P}c{i:02}", b"v")) for i in range(50)]
    await asyncio.sleep(0)  # let them all submit
    for t in tasks[::2]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    items, rev = await s.list(P)
    assert rev - start == len(items)  # one revision per applied write, no more
    for t in tasks[1::2]:
        assert not t.cancelled()  # the others were not disturbed
    assert {kv.key for kv in items} >= {t.result().key for t in tasks[1::2]}
    async with s.watch(P, from_revision=start) as w:
        events = [await asyncio.wait_for(anext(w), 10) for _ in range(len(items))]
    assert sorted(e.kv.key for e in events) == sorted(kv.key for kv in items)
    assert (await s.create(P + "after", b"v")).mod_revision == rev + 1


async def test_a_full_disk_fails_the_writes_changes_nothing_and_the_store_recovers(
        sqlite_store) -> None:
    """When SQLite cannot write (simulated: the writer's max_page_count is reached, which
    fails like a full disk), the writes of that transaction fail with StoreError, no
    revision is used and no event is published; once space is back, writes succeed."""
    s, _clock = sqlite_store

    async def writer_pragma(sql: str) -> None:
        await asyncio.wrap_future(s._writer.submit("raw", lambda c: c.execute(sql)))

    before = await s.current_revision()
    pages = (await asyncio.wrap_future(s._writer.submit(
        "raw", lambda c: c.execute("PRAGMA page_count").fetchone()[0])))
    await writer_pragma(f"PRAGMA max_page_count = {pages}")
    async with s.watch(P) as w:
        results = await asyncio.gather(*(s.create(f"{P}big{i}", b"x" * 50_000)
                                         for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        assert await s.current_revision() == before
        assert (await s.list(P))[0] == []
        await writer_pragma("PRAGMA max_page_count = 1073741823")
        kv = await s.create(P + "after", b"v")
        assert kv.mod_revision == before + 1
        assert (await asyncio.wait_for(anext(w), 10)).kv == kv  # nothing published before


async def test_closing_the_store_ends_pending_watches(data_dir: Path) -> None:
    s = await SqliteStore.open(data_dir / "s.db", options=SqliteOptions(maintenance_interval=0))
    w = s.watch(P)
    waiter = asyncio.create_task(anext(w, None))
    await asyncio.sleep(0.05)
    await s.close()
    assert await asyncio.wait_for(waiter, 10) is None


async def test_maintenance_compacts_history_by_age_and_by_size(data_dir: Path,
                                                               manual_clock) -> None:
    """History older than history_max_age (on the store clock) and beyond
    history_max_events is dropped; newer history stays watchable."""
    clock = manual_clock
    opts = SqliteOptions(maintenance_interval=0, history_max_age=600, history_max_events=8)
    async with await SqliteStore.open(data_dir / "s.db", options=opts, clock=clock) as s:
        old = [(await s.create(f"{P}old{i}", b"v")).mod_revision for i in range(3)]
        clock.advance(601)
        new = [(await s.create(f"{P}new{i}", b"v")).mod_revision for i in range(3)]
        report = await s.maintain()
        assert report["compacted"] == old[-1]
        with pytest.raises(Compacted):
            async with s.watch(P, from_revision=old[0]) as w:
                await asyncio.wait_for(anext(w), 10)
        more = [(await s.create(f"{P}more{i}", b"v")).mod_revision for i in range(10)]
        report = await s.maintain()
        assert report["compacted"] == more[-1] - 8
        async with s.watch(P, from_revision=report["compacted"]) as w:
            got = [(await asyncio.wait_for(anext(w), 10)).revision for _ in range(8)]
        assert got == more[-8:]
        assert new[0] < report["compacted"]


async def test_background_maintenance_runs_on_its_interval(data_dir: Path) -> None:
    """With a maintenance interval set, the store compacts on its own (here: beyond 5
    history entries) without anyone calling maintain()."""
    opts = SqliteOptions(maintenance_interval=0.05, history_max_events=5)
    async with await SqliteStore.open(data_dir / "s.db", options=opts) as s:
        for i in range(20):
            await s.create(f"{P}k{i}", b"v")
        target = await s.current_revision() - 5
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await s.compacted_revision() < target:
            assert loop.time() < deadline, "maintenance never compacted"
            await asyncio.sleep(0.05)


async def test_churn_keeps_file_size_and_history_bounded(data_dir: Path) -> None:
    """A long churn run (create, update, delete the same 100 objects of 2 KiB, 36
    rounds, maintenance between rounds as the background task would do) does not grow
    the file: k3s's kine grows without bound here. Size after the last round stays
    within 1.5x of the size after the warm-up rounds, and the log stays at its limit."""
    opts = SqliteOptions(maintenance_interval=0, history_max_events=600)
    async with await SqliteStore.open(data_dir / "s.db", options=opts) as s:
        blob = b"x" * 2048
        sizes = []
        for round_no in range(36):
            kvs = await asyncio.gather(*(s.create(f"{P}p{i}", blob) for i in range(100)))
            kvs = await asyncio.gather(*(s.update(kv.key, blob[::-1],
                                                  expected_revision=kv.mod_revision)
                                         for kv in kvs))
            await asyncio.gather(*(s.delete(kv.key) for kv in kvs))
            report = await s.maintain()
            assert report["checkpoint_busy"] == 0
            sizes.append(s.statistics()["disk_bytes"])
            if round_no == 5:
                warm = sizes[-1]
        assert max(sizes[6:]) <= warm * 1.5, sizes
    conn = sqlite3.connect(data_dir / "s.db")
    try:
        assert conn.execute("SELECT count(*) FROM log").fetchone()[0] <= 600
        assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_open_store_understands_sqlite_urls_and_refuses_others(data_dir: Path) -> None:
    s = await open_store(f"sqlite://{data_dir}/u.db", options=SqliteOptions(maintenance_interval=0))
    try:
        assert isinstance(s, SqliteStore)
        await s.create("/a", b"1")
    finally:
        await s.close()
    assert (data_dir / "u.db").exists()
    for bad, reason in [("", "must look like"), ("no-scheme", "must look like"),
                        ("etcd://x", "unknown store scheme"), ("sqlite://", "names no file")]:
        with pytest.raises(ValueError, match=reason):
            await open_store(bad)
    with pytest.raises(ValueError, match="directory does not exist"):
        await open_store(f"sqlite://{data_dir}/missing/dir/s.db")


async def test_a_file_that_is_not_a_store_is_refused_clearly(data_dir: Path) -> None:
    """Opening something that is not an SQLite database fails with StoreError naming
    the file, and leaves it as it was."""
    path = data_dir / "not-a-db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"cannot open sqlite store .*not-a-db"):
        await SqliteStore.open(path)
    assert path.read_bytes() == b"this is not sqlite" * 100


async def test_a_store_file_in_use_by_another_process_is_refused(spawn, data_dir: Path) -> None:
    """One process owns a store file (another one's writes would not reach this one's
    watchers): opening it while another process has it open fails with StoreError
    naming that process; once it is gone the file opens."""
    path = data_dir / "owned.db"
    owner = spawn.python("-c", (
        "import asyncio, sys\n"
        "from control.store.sqlite import SqliteStore\n"
        "async def main():\n"
        f"    s = await SqliteStore.open({str(path)!r})\n"
        "    print('owned', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"), name="owner", env={"PYTHONPATH": str(ROOT)})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while "owned" not in owner.output():
        assert owner.poll() is None, owner.output()
        assert loop.time() < deadline, "the owner process never opened the store"
        await asyncio.sleep(0.05)
    with pytest.raises(StoreError, match=f"in use by another process \\(pid {owner.pid}\\)"):
        await SqliteStore.open(path)
    owner.stop(signal.SIGKILL)
    async with await SqliteStore.open(path, options=SqliteOptions(maintenance_interval=0)) as s:
        assert await s.current_revision() == 1


def test_bad_options_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="history_max_events"):
        SqliteOptions(history_max_events=0)
    with pytest.raises(ValueError, match="history_max_age"):
        SqliteOptions(history_max_age=float("inf"))
