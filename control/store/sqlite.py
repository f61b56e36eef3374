"""The embedded default store: one SQLite file, standard library only.

Design (the statements themselves are in ``sqlite_schema.py``):

- **Durable before acknowledged.** WAL with ``synchronous=FULL``; a write's future is
  resolved only after its ``COMMIT`` returned, so SIGKILL never loses an acknowledged
  write (``tests/store/test_sqlite_crash.py`` kills a writer mid-burst to prove it).
- **One writer thread, group commit.** Writes queue to a dedicated thread that drains
  whatever is waiting (up to ``MAX_BATCH``) into one transaction: each write keeps its
  own revision and its own outcome (a failed CAS fails alone), but one fsync covers the
  batch, which is what makes 1,000+ concurrent writes/s possible on one disk. The event
  loop never waits for a write.
- **Readers.** A point read (one key, or the revision counters) is one indexed
  statement, cheaper than the hand-off to a thread and back that would carry it (two
  context switches and two loop wake-ups; under PATCH load the thread switches were a
  tenth of the API server's CPU), so it runs on the event loop's own connection
  without a busy wait: WAL readers do not wait for the writer, and in the rare case
  SQLite still answers "busy" (a checkpoint resetting the WAL index) the read goes to
  the pool instead of stalling the loop. Scans and history (any size) use their own
  connections on a small thread pool; WAL lets every reader see a consistent snapshot
  while the writer commits.
- **Watches** fan out from one in-process :class:`~control.store.watch.WatchHub`,
  published once per commit; history for watches that start in the past comes from
  the ``log`` table.
- **Ageing.** A maintenance task compacts the log by age and size, runs
  ``PRAGMA incremental_vacuum`` when compaction left free pages, and checkpoints the
  WAL (truncating it), so file size and latency stay flat under churn instead of
  growing the way k3s's kine does.
- **Leader election** uses TTL locks on the store's clock (injectable for tests).

One process owns a store file (``sqlite_owner.py`` enforces it with a lock file): live
watch events are published in-process, so a second process writing the same file would
not wake this one's watchers.

Neighbours: ``base.py`` (the interface), ``watch.py`` (fan-out), ``consul.py`` (the
other backend), ``__init__.open_store``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.store import sqlite_owner
from control.store import sqlite_schema as schema
from control.store.base import (
    Event,
    KeyValue,
    StoreError,
    check_key,
    check_lock_args,
    check_prefix,
    check_revision,
    check_value,
)
from control.store.watch import Watch, WatchHub

MAX_BATCH = 512

#: op(conn, next_revision, now) -> (result, event or None); an event consumes the revision
_Op = Callable[[sqlite3.Connection, int, float], tuple[Any, Event | None]]


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """Tuning of one SQLite store; every field has a default that suits the all-in-one."""

    #: history older than this (seconds, on the store's clock) is compacted; 10 minutes
    #: covers a watcher reconnecting after a network blip or an API server restart.
    history_max_age: float = 600.0
    #: at most this many history entries are kept, whatever their age, so a write storm
    #: cannot grow the log without bound.
    history_max_events: int = 100_000
    #: seconds between maintenance runs (compaction, incremental vacuum, WAL checkpoint);
    #: 0 disables the background task (tests call ``maintain()`` themselves).
    maintenance_interval: float = 30.0
    #: reader threads (and connections)
    readers: int = 2
    #: live events buffered per watcher before it falls back to reading history
    watch_buffer: int = 10_000

    def __post_init__(self) -> None:
        for name in ("history_max_age", "maintenance_interval"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("history_max_events", "readers", "watch_buffer"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class _Writer(threading.Thread):
    """The only thread that writes the file; see the module docstring (group commit)."""

    def __init__(self, path: str, clock: Callable[[], float],
                 publish: Callable[[list[Event], int], None]) -> None:
        super().__init__(name="store-writer", daemon=True)
        self._path = path
        self._clock = clock
        self._publish = publish
        self._queue: queue.SimpleQueue[tuple[str, Any, concurrent.futures.Future] | None] = (
            queue.SimpleQueue())
        self._conn: sqlite3.Connection | None = None
        self._submit_lock = threading.Lock()
        self._failed: StoreError | None = None
        #: transactions committed and writes they carried (group commit makes the first
        #: smaller than the second under concurrency)
        self.commits = 0
        self.writes = 0

    def submit(self, kind: str, fn: Any) -> concurrent.futures.Future:
        """``kind`` "txn": ``fn`` is an :data:`_Op` batched with others; "raw": ``fn(conn)``
        runs alone outside any transaction (checkpoints)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._submit_lock:
            if self._failed is not None:
                fut.set_exception(self._failed)
            else:
                self._queue.put((kind, fn, fut))
        return fut

    def stop(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        try:
            self._conn = schema.connect(self._path)
        except sqlite3.Error as exc:
            # Without a connection no write can ever complete: fail them all, now and
            # later, instead of leaving callers waiting.
            with self._submit_lock:
                self._failed = StoreError(f"cannot open sqlite store {self._path}: {exc}")
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
                if item is not None and item[2].set_running_or_notify_cancel():
                    item[2].set_exception(self._failed)
        try:
            stopping = False
            while not stopping:
                item = self._queue.get()
                batch: list[tuple[_Op, concurrent.futures.Future]] = []
                while item is not None:
                    kind, fn, fut = item
                    if kind == "raw":
                        self._run_batch(batch)
                        batch = []
                        self._run_raw(fn, fut)
                    else:
                        batch.append((fn, fut))
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                else:
                    stopping = True
                self._run_batch(batch)
        finally:
            self._conn.close()

    def _run_raw(self, fn: Any, fut: concurrent.futures.Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(self._conn))
        except BaseException as exc:
            fut.set_exception(exc)

    def _run_batch(self, batch: list[tuple[_Op, concurrent.futures.Future]]) -> None:
        # A write whose caller was cancelled before it ran is dropped; once running it
        # can no longer be cancelled, so its outcome is always delivered.
        batch = [(op, fut) for op, fut in batch if fut.set_running_or_notify_cancel()]
        if not batch:
            return
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[concurrent.futures.Future, bool, Any]] = []
        events: list[Event] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            revision = schema.meta(conn, "revision")
            now = self._clock()
            for op, fut in batch:
                try:
                    result, event = op(conn, revision + 1, now)
                except StoreError as exc:  # raised before the op wrote anything
                    outcomes.append((fut, False, exc))
                    continue
                if event is not None:
                    revision += 1
                    events.append(event)
                outcomes.append((fut, True, result))
            if events:
                schema.set_meta(conn, "revision", revision)
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(events)
        except BaseException as exc:
            # The whole batch failed (I/O error, disk full): nothing of it is stored.
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolls back itself when the connection cannot
            error = StoreError(f"sqlite write failed: {exc}")
            error.__cause__ = exc
            for _op, fut in batch:
                fut.set_exception(error)
            return
        if events:
            # Queued before the futures' callbacks, so a writer that sees its write
            # acknowledged can already watch "from now" past it.
            self._publish(events, revision)
        for fut, ok, value in outcomes:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


class SqliteStore:
    """The SQLite backend of :class:`~control.store.base.Store`. Open with
    :meth:`open`; it is not shared between processes (see the module docstring)."""

    def __init__(self, path: str, *, options: SqliteOptions, clock: Callable[[], float],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.options = options
        self.clock = clock
        self._loop = loop
        self._hub = WatchHub(self._history, buffer_limit=options.watch_buffer)
        self._writer = _Writer(path, clock, self._publish_threadsafe)
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        #: the event loop's own connection for point reads (see the module docstring;
        #: set by :meth:`open`, without a busy timeout)
        self._inline_conn: sqlite3.Connection | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(
            options.readers, thread_name_prefix="store-read")
        self._maintenance: asyncio.Task[None] | None = None
        self._owner: str | None = None
        self._closed = False
        #: point reads SQLite answered "busy" on the loop's connection (done on the pool)
        self.busy_point_reads = 0

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, options: SqliteOptions | None = None,
                   clock: Callable[[], float] = time.time) -> SqliteStore:
        """Open (creating when missing) the store file at ``path``."""
        path = os.fspath(path)
        if not path:
            raise ValueError("sqlite store path must not be empty")
        options = options or SqliteOptions()

        def prepare() -> tuple[str, int, sqlite3.Connection]:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise ValueError(f"sqlite store directory does not exist: {parent}")
            owner = sqlite_owner.acquire(path)  # before touching the file
            try:
                conn = schema.connect(path)
                try:
                    schema.create_schema(conn)
                    revision = schema.meta(conn, "revision")
                    # from now on the loop's connection for point reads: never waits
                    conn.execute("PRAGMA busy_timeout = 0")
                except BaseException:
                    conn.close()
                    raise
                return owner, revision, conn
            except BaseException:
                sqlite_owner.release(owner)
                raise

        try:
            owner, revision, inline_conn = await asyncio.to_thread(prepare)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open sqlite store {path}: {exc}") from exc
        store = cls(path, options=options, clock=clock, loop=asyncio.get_running_loop())
        store._owner = owner
        store._inline_conn = inline_conn
        store._hub.last_revision = store._hub.last_position = revision
        store._writer.start()
        if options.maintenance_interval > 0:
            store._maintenance = asyncio.create_task(store._maintain_forever(),
                                                     name=f"store-maintenance {path}")
        return store

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------

    def _publish_threadsafe(self, events: list[Event], revision: int) -> None:
        try:
            self._loop.call_soon_threadsafe(
                self._hub.publish, [(e.revision, e) for e in events], revision)
        except RuntimeError:
            pass  # the loop is gone: nobody is left to watch

    async def _write(self, op: _Op) -> Any:
        if self._closed:
            raise StoreError("store is closed")
        return await asyncio.wrap_future(self._writer.submit("txn", op))

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = schema.connect(self.path)
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed:
            raise StoreError("store is closed")

        def run() -> Any:
            try:
                conn = self._reader()
                conn.execute("BEGIN")  # one snapshot for every statement of this read
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite read failed: {exc}") from exc

        return await self._loop.run_in_executor(self._readers, run)

    async def _point_read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``fn`` (ONE statement: it is its own snapshot) on the loop's connection, or
        on the pool when SQLite would make the loop wait."""
        if self._closed:
            raise StoreError("store is closed")
        conn = self._inline_conn
        assert conn is not None  # opened by open(), closed with the store
        try:
            return fn(conn)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreError(f"sqlite read failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite read failed: {exc}") from exc
        self.busy_point_reads += 1
        return await self._read(fn)

    async def _history(self, prefix: str, after_position: int | None, after_revision: int,
                       limit: int) -> list[tuple[int, Event]]:
        # A revision is the position here: every write has its own.
        after = after_revision if after_position is None else after_position
        events = await self._read(lambda c: schema.history(c, prefix, after, limit))
        return [(e.revision, e) for e in events]

    # -- the Store interface -------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        return await self._point_read(lambda c: schema.get(c, key))

    async def list(self, prefix: str, *, start_after: str | None = None,
                   limit: int | None = None) -> tuple[list[KeyValue], int]:
        check_prefix(prefix)
        if start_after is not None and not isinstance(start_after, str):
            raise ValueError(f"start_after must be a str, got {type(start_after).__name__}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        return await self._read(lambda c: (schema.list_range(c, prefix, start_after, limit),
                                           schema.meta(c, "revision")))

    async def create(self, key: str, value: bytes) -> KeyValue:
        check_key(key)
        value = check_value(value)
        return await self._write(lambda c, rev, now: schema.create(c, rev, key, value, now))

    async def update(self, key: str, value: bytes, *,
                     expected_revision: int | None = None) -> KeyValue:
        check_key(key)
        value = check_value(value)
        check_revision(expected_revision)
        return await self._write(
            lambda c, rev, now: schema.update(c, rev, key, value, expected_revision, now))

    async def delete(self, key: str, *, expected_revision: int | None = None) -> KeyValue:
        check_key(key)
        check_revision(expected_revision)
        return await self._write(
            lambda c, rev, now: schema.delete(c, rev, key, expected_revision, now))

    def watch(self, prefix: str, *, from_revision: int = 0) -> Watch:
        check_prefix(prefix)
        check_revision(from_revision, allow_zero=True)
        return self._hub.watch(prefix, from_revision)

    async def current_revision(self) -> int:
        return await self._point_read(lambda c: schema.meta(c, "revision"))

    async def compacted_revision(self) -> int:
        """History at or below this revision is gone (watching from it is Compacted)."""
        return await self._point_read(lambda c: schema.meta(c, "compacted"))

    async def compact(self, revision: int) -> None:
        check_revision(revision, allow_zero=True)
        await self._write(lambda c, _rev, _now: (schema.compact(c, revision), None))

    async def try_acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        check_lock_args(name, holder, ttl)
        return await self._write(
            lambda c, _rev, now: (schema.try_lock(c, name, holder, ttl, now), None))

    async def release_lock(self, name: str, holder: str) -> None:
        check_lock_args(name, holder)
        await self._write(lambda c, _rev, _now: (schema.release_lock(c, name, holder), None))

    async def lock_holder(self, name: str) -> str | None:
        check_lock_args(name)
        now = self.clock()
        return await self._read(lambda c: schema.lock_holder(c, name, now))

    # -- ageing ---------------------------------------------------------------------------

    async def maintain(self) -> dict[str, int]:
        """One maintenance pass: compact history past its age/size limits, return free
        pages to the file system, checkpoint and truncate the WAL. Returns what it did."""
        opts = self.options

        def compact(c: sqlite3.Connection, _rev: int, now: float) -> tuple[int, None]:
            target = schema.compaction_target(
                c, oldest=now - opts.history_max_age, max_events=opts.history_max_events)
            return schema.compact(c, target), None

        compacted = await self._write(compact)

        def vacuum(c: sqlite3.Connection, _rev: int, _now: float) -> tuple[int, None]:
            free = c.execute("PRAGMA freelist_count").fetchone()[0]
            if free:
                c.execute(f"PRAGMA incremental_vacuum({int(free)})").fetchall()
            return free, None

        freed = await self._write(vacuum)
        def checkpoint(c: sqlite3.Connection) -> int:
            # TRUNCATE waits for readers through the busy handler while blocking this
            # (the only) writer: wait briefly, and try again next pass if readers stay.
            c.execute("PRAGMA busy_timeout = 200")
            try:
                return int(c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0])
            finally:
                c.execute(f"PRAGMA busy_timeout = {schema.BUSY_TIMEOUT_MS}")

        busy = await asyncio.wrap_future(self._writer.submit("raw", checkpoint))
        return {"compacted": compacted, "freed_pages": freed, "checkpoint_busy": busy}

    def statistics(self) -> dict[str, int]:
        """Commits and writes so far, live watches, bytes on disk (file + WAL)."""
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return {"commits": self._writer.commits, "writes": self._writer.writes,
                "watches": len(self._hub), "disk_bytes": size}

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.maintenance_interval)
            try:
                await self.maintain()
            except StoreError:
                continue  # the next pass retries; a failing disk also fails writes loudly

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._readers.shutdown, wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
        if self._inline_conn is not None:
            self._inline_conn.close()
            self._inline_conn = None
        if self._owner is not None:
            sqlite_owner.release(self._owner)
            self._owner = None
