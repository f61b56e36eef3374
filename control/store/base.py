"""The store interface every backend implements, and its error tree.

Modelled on etcd's as Kubernetes uses it: a flat, ordered key space of byte values; one
revision counter that every write advances; compare-and-swap on a key's
``mod_revision``; watches that replay history from a revision and then follow live
changes; a bounded history whose compacted part is an error (the API turns it into
410 Gone). Leader election uses a named lock with a TTL.

Keys are ``/``-separated strings such as ``/registry/pods/default/web-1``. Values are
opaque bytes (the API server stores JSON).

What a revision is depends on the backend; callers may rely only on what is common:
revisions only grow, every acknowledged write's revision is above all earlier ones, and
watching from a revision R yields the changes after R. SQLite counts +1 per write (a new
store is at 1). Consul uses its raft index: increasing but with gaps, and several
deletes noticed in one blocking query share one revision (their events still arrive,
in order). A DELETED event's ``revision`` is the delete's, its ``kv.mod_revision`` that
of the value deleted. The contract is pinned by
``tests/store/test_store_contract.py``, which runs against every backend.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key at one revision.

    ``create_revision`` is the revision of the write that created the key,
    ``mod_revision`` that of the last write to it (the value compared by CAS), and
    ``version`` counts writes to the key since its creation (1 after create).
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by a watch. For DELETED, ``kv`` is the value before the delete and
    ``revision`` the revision of the delete itself."""

    type: EventType
    kv: KeyValue
    revision: int
    prev_kv: KeyValue | None = None


class StoreError(Exception):
    """Base of every error a backend raises on purpose."""


class NotFound(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class AlreadyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key already exists: {key}")
        self.key = key


class Conflict(StoreError):
    """A compare-and-swap failed: the key's mod_revision is not the expected one."""

    def __init__(self, key: str, expected: int, actual: int | None) -> None:
        super().__init__(f"revision conflict on {key}: expected {expected}, found {actual}")
        self.key = key
        self.expected = expected
        self.actual = actual


class Compacted(StoreError):
    """A watch asked for history older than the store keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (oldest available: {compacted + 1})")
        self.requested = requested
        self.compacted = compacted


@runtime_checkable
class Store(Protocol):
    """What the API server needs from persistence. All methods are coroutines.

    Consistency: every successful write is durable before it returns, and gets a
    revision greater than every earlier one. Reads see every write acknowledged before
    them.
    """

    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None."""

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> tuple[list[KeyValue], int]:
        """Keys under ``prefix`` in key order (after ``start_after`` when given, at most
        ``limit``), and the store revision the list was read at."""

    async def create(self, key: str, value: bytes) -> KeyValue:
        """Create ``key``; raise :class:`AlreadyExists` if it exists."""

    async def update(
        self, key: str, value: bytes, *, expected_revision: int | None = None
    ) -> KeyValue:
        """Replace ``key``'s value. With ``expected_revision``, only if the key's
        mod_revision equals it (else :class:`Conflict`). :class:`NotFound` if absent."""

    async def delete(self, key: str, *, expected_revision: int | None = None) -> KeyValue:
        """Delete ``key`` and return its last value (CAS as in :meth:`update`)."""

    def watch(self, prefix: str, *, from_revision: int = 0) -> AsyncIterator[Event]:
        """Events for keys under ``prefix`` with revision > ``from_revision`` in revision
        order: first the history still kept, then live changes, until the iterator is
        closed. ``from_revision=0`` means from now. Raises :class:`Compacted` when history
        after ``from_revision`` is no longer complete.

        The watch is registered when this call returns (so "from now" is from the call,
        not from the first ``anext``). Iteration raises :class:`Compacted` (at the start,
        or later if a lagging watcher's history was compacted meanwhile) and ends when
        the store closes. The returned object also supports ``async with`` and
        ``aclose()``, which unregister it at once."""

    async def current_revision(self) -> int:
        """The revision of the latest write. Never 0 (a new SQLite store is at 1, as
        etcd is; Consul's index starts above 0), so ``from_revision=0`` is unambiguous."""

    async def compact(self, revision: int) -> None:
        """Drop history at or below ``revision`` (current values are kept)."""

    async def try_acquire_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew the named lock for ``holder`` for ``ttl`` seconds. True when
        ``holder`` holds it afterwards; False when someone else holds an unexpired lock."""

    async def release_lock(self, name: str, holder: str) -> None:
        """Release the lock if ``holder`` holds it; otherwise do nothing."""

    async def lock_holder(self, name: str) -> str | None:
        """Who holds the named lock now (None when free or expired)."""

    async def close(self) -> None:
        """Release resources; pending watches end."""


def check_key(key: object) -> str:
    """Validate a key: a non-empty ``str`` starting with ``/``, without NUL or a
    trailing ``/``. Raises ValueError naming the problem (before any state changes)."""
    if not isinstance(key, str):
        raise ValueError(f"key must be a str, got {type(key).__name__}")
    if not key.startswith("/") or len(key) < 2:
        raise ValueError(f"key must start with '/' and name something: {key!r}")
    if key.endswith("/"):
        raise ValueError(f"key must not end with '/': {key!r}")
    if "\x00" in key:
        raise ValueError(f"key must not contain NUL: {key!r}")
    return key


def check_prefix(prefix: object) -> str:
    """Validate a list/watch prefix: ``""`` (everything) or a string starting with ``/``."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"prefix must be empty or start with '/': {prefix!r}")
    if "\x00" in prefix:
        raise ValueError(f"prefix must not contain NUL: {prefix!r}")
    return prefix


def check_value(value: object) -> bytes:
    """Validate a value: ``bytes`` (the API server stores JSON)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"value must be bytes, got {type(value).__name__}")
    return bytes(value)


def check_revision(revision: object, *, allow_zero: bool = False) -> None:
    """Validate an expected/from/compact revision: None (where optional) or an int >= 1
    (>= 0 with ``allow_zero``; None is then refused)."""
    if revision is None and not allow_zero:
        return
    low = 0 if allow_zero else 1
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < low:
        raise ValueError(f"revision must be an integer >= {low}, got {revision!r}")


def check_lock_args(name: object, holder: object = "-", ttl: object = 1.0) -> None:
    """Validate lock arguments: a non-empty name without ``/``, a non-empty holder, a
    positive finite TTL in seconds."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"lock name must be a non-empty str without '/', got {name!r}")
    if not isinstance(holder, str) or not holder:
        raise ValueError(f"lock holder must be a non-empty str, got {holder!r}")
    if (not isinstance(ttl, int | float) or isinstance(ttl, bool) or not math.isfinite(ttl)
            or ttl <= 0):
        raise ValueError(f"lock ttl must be a positive number of seconds, got {ttl!r}")
