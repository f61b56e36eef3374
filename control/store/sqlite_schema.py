"""The SQLite store's file format and the synchronous statements run inside its
transactions.

Tables:

- ``meta(name, value)``: ``revision`` (the one counter every write advances; 1 for a
  new store, as in etcd, so that ``from_revision=0``, "from now", never names a real
  state),
  ``compacted`` (history at or below it is gone), ``schema``.
- ``kv``: current values with ``create_revision``, ``mod_revision`` and ``version``;
  deleted keys are removed (their last value lives on in the log until compaction).
- ``log``: one row per write, keyed by its revision, enough to rebuild the
  :class:`~control.store.base.Event` and its ``prev_kv``: the new value (or, for a
  delete, the value deleted), the previous value for a modification, and the previous
  ``mod_revision``. ``created_at`` (the store's clock) drives compaction by age.
- ``locks(name, holder, expires_at)``: TTL locks for leader election.

Every function here runs on a connection inside a transaction the caller owns
(``sqlite.py``'s writer thread for writes, a reader thread for reads); none commits.
The file is created with ``auto_vacuum=INCREMENTAL`` so that pages freed by compaction
can be returned to the file system by ``PRAGMA incremental_vacuum``.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

from control.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    KeyValue,
    NotFound,
)

SCHEMA_VERSION = 1
_ADDED, _MODIFIED, _DELETED = 0, 1, 2
_EVENT_NAMES: dict[int, Literal["ADDED", "MODIFIED", "DELETED"]] = {
    _ADDED: "ADDED", _MODIFIED: "MODIFIED", _DELETED: "DELETED"}

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    type INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    prev_mod_revision INTEGER NOT NULL,
    prev_value BLOB,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compacted', 0);
"""


BUSY_TIMEOUT_MS = 10_000


def connect(path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, and
    ``synchronous=FULL``: a commit is on disk before it returns, so an acknowledged
    write survives SIGKILL and power loss."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    # After a checkpoint the WAL file is truncated to this size, so it cannot stay at
    # its high-water mark forever.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables on a new file (auto_vacuum must precede the first table), or
    convert an old file without incremental auto-vacuum once."""
    has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if has_tables or conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            conn.execute("VACUUM")  # rewrites the file so the setting takes effect
    conn.executescript("BEGIN IMMEDIATE;" + _TABLES + "COMMIT;")
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta (name, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        raise RuntimeError(f"store file has schema {row[0]}, this code reads {SCHEMA_VERSION}")


def meta(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])


def set_meta(conn: sqlite3.Connection, name: str, value: int) -> None:
    conn.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))


def _kv(row: tuple) -> KeyValue:
    return KeyValue(row[0], row[1], row[2], row[3], row[4])


def get(conn: sqlite3.Connection, key: str) -> KeyValue | None:
    row = conn.execute(
        "SELECT key, value, create_revision, mod_revision, version FROM kv WHERE key = ?",
        (key,)).fetchone()
    return _kv(row) if row else None


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None:
    no bound). SQLite's BINARY collation orders UTF-8 bytes, which is code point order,
    the same as Python's."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored; skip them
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


def list_range(
    conn: sqlite3.Connection, prefix: str, start_after: str | None, limit: int | None
) -> list[KeyValue]:
    sql = "SELECT key, value, create_revision, mod_revision, version FROM kv WHERE key >= ?"
    args: list[object] = [prefix]
    end = prefix_end(prefix)
    if end is not None:
        sql += " AND key < ?"
        args.append(end)
    if start_after is not None:
        sql += " AND key > ?"
        args.append(start_after)
    sql += " ORDER BY key"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [_kv(r) for r in conn.execute(sql, args)]


def _log(conn: sqlite3.Connection, revision: int, key: str, kind: int, value: bytes,
         create_revision: int, version: int, prev_mod: int, prev_value: bytes | None,
         now: float) -> None:
    conn.execute(
        "INSERT INTO log (revision, key, type, value, create_revision, version,"
        " prev_mod_revision, prev_value, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (revision, key, kind, value, create_revision, version, prev_mod, prev_value, now))


def create(conn: sqlite3.Connection, revision: int, key: str, value: bytes,
           now: float) -> tuple[KeyValue, Event]:
    if get(conn, key) is not None:
        raise AlreadyExists(key)
    conn.execute("INSERT INTO kv (key, value, create_revision, mod_revision, version)"
                 " VALUES (?, ?, ?, ?, 1)", (key, value, revision, revision))
    _log(conn, revision, key, _ADDED, value, revision, 1, 0, None, now)
    kv = KeyValue(key, value, revision, revision, 1)
    return kv, Event("ADDED", kv, revision)


def _current(conn: sqlite3.Connection, key: str, expected: int | None) -> KeyValue:
    old = get(conn, key)
    if old is None:
        raise NotFound(key)
    if expected is not None and old.mod_revision != expected:
        raise Conflict(key, expected, old.mod_revision)
    return old


def update(conn: sqlite3.Connection, revision: int, key: str, value: bytes,
           expected: int | None, now: float) -> tuple[KeyValue, Event]:
    old = _current(conn, key, expected)
    kv = KeyValue(key, value, old.create_revision, revision, old.version + 1)
    conn.execute("UPDATE kv SET value = ?, mod_revision = ?, version = ? WHERE key = ?",
                 (value, revision, kv.version, key))
    _log(conn, revision, key, _MODIFIED, value, kv.create_revision, kv.version,
         old.mod_revision, old.value, now)
    return kv, Event("MODIFIED", kv, revision, old)


def delete(conn: sqlite3.Connection, revision: int, key: str, expected: int | None,
           now: float) -> tuple[KeyValue, Event]:
    old = _current(conn, key, expected)
    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
    _log(conn, revision, key, _DELETED, old.value, old.create_revision, old.version,
         old.mod_revision, None, now)
    return old, Event("DELETED", old, revision, old)


def _event(row: tuple) -> Event:
    revision, key, kind, value, create_rev, version, prev_mod, prev_value = row
    if kind == _ADDED:
        return Event("ADDED", KeyValue(key, value, create_rev, revision, version), revision)
    if kind == _MODIFIED:
        prev = KeyValue(key, prev_value, create_rev, prev_mod, version - 1)
        return Event("MODIFIED", KeyValue(key, value, create_rev, revision, version),
                     revision, prev)
    old = KeyValue(key, value, create_rev, prev_mod, version)
    return Event("DELETED", old, revision, old)


def history(conn: sqlite3.Connection, prefix: str, after: int, limit: int) -> list[Event]:
    """Events under ``prefix`` with revision > ``after``; Compacted when the log no longer
    holds all of them. Runs in one read transaction so the check and the rows agree."""
    compacted = meta(conn, "compacted")
    if after < compacted:
        raise Compacted(after, compacted)
    sql = ("SELECT revision, key, type, value, create_revision, version, prev_mod_revision,"
           " prev_value FROM log WHERE revision > ? AND key >= ?")
    args: list[object] = [after, prefix]
    end = prefix_end(prefix)
    if end is not None:
        sql += " AND key < ?"
        args.append(end)
    sql += " ORDER BY revision LIMIT ?"
    args.append(limit)
    return [_event(r) for r in conn.execute(sql, args)]


def compact(conn: sqlite3.Connection, revision: int) -> int:
    """Drop log rows at or below ``revision`` (capped at the current revision); returns
    the new compacted revision."""
    target = min(revision, meta(conn, "revision"))
    if target <= meta(conn, "compacted"):
        return meta(conn, "compacted")
    conn.execute("DELETE FROM log WHERE revision <= ?", (target,))
    set_meta(conn, "compacted", target)
    return target


def compaction_target(conn: sqlite3.Connection, *, oldest: float, max_events: int) -> int:
    """The revision up to which history is older than ``oldest`` or beyond the newest
    ``max_events`` entries."""
    by_size = meta(conn, "revision") - max_events
    row = conn.execute("SELECT max(revision) FROM log WHERE created_at < ?",
                       (oldest,)).fetchone()
    by_age = row[0] or 0
    return max(by_size, by_age)


def try_lock(conn: sqlite3.Connection, name: str, holder: str, ttl: float,
             now: float) -> bool:
    row = conn.execute("SELECT holder, expires_at FROM locks WHERE name = ?",
                       (name,)).fetchone()
    if row is not None and row[0] != holder and row[1] > now:
        return False
    conn.execute("INSERT INTO locks (name, holder, expires_at) VALUES (?, ?, ?)"
                 " ON CONFLICT(name) DO UPDATE SET holder = excluded.holder,"
                 " expires_at = excluded.expires_at", (name, holder, now + ttl))
    return True


def release_lock(conn: sqlite3.Connection, name: str, holder: str) -> None:
    conn.execute("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder))


def lock_holder(conn: sqlite3.Connection, name: str, now: float) -> str | None:
    row = conn.execute("SELECT holder, expires_at FROM locks WHERE name = ?",
                       (name,)).fetchone()
    if row is None or row[1] <= now:
        return None
    return str(row[0])
