"""Token buckets in shared memory, so every worker process of one proxy shares each limit.

``meshproxy --workers N`` runs N processes on one port (``SO_REUSEPORT``); the kernel
spreads connections across them, so a per-process bucket would admit N times the
configured rate. :class:`SharedBucketTable` keeps the buckets in one file mapped into every
worker (put it on a tmpfs such as ``/dev/shm``: memory speed, no disk I/O) and serialises
``take`` with ``flock`` on that file. It implements :class:`~.ratelimit.BucketBackend`.

Layout: a 64-byte header (magic, version, slot count), then ``slots`` fixed 32-byte slots
``(key hash: u64, tokens: f64, last: f64, unused)``; hash 0 marks an empty slot. Keys are
hashed with BLAKE2b to 64 bits, stable across processes (Python's ``hash`` is salted per
process); a collision of two keys (odds about n^2 / 2^65) would make them share a bucket.
Lookup is linear probing over at most :data:`PROBE` slots; when none is free the
least recently used slot among them is reused, which forgets an idle (so: full) bucket.
That bounds the table whatever the number of clients.

Why not ``multiprocessing.shared_memory``: its resource tracker unlinks a segment when the
process that created it exits (CPython issue 82300), which would wipe the table whenever a
worker restarts; a plain file mapping has no such owner. Why ``flock`` and not a
``multiprocessing.Lock``: a file lock works for processes that did not inherit it (a
restarted worker) and dies with its holder. ``flock`` locks belong to an open file
description, which a fork shares, so the table reopens its file in a forked child before
first use. Times are ``CLOCK_MONOTONIC`` (``time.monotonic`` / ``loop.time``), the same in
every process of the machine.

Neighbours: :mod:`.ratelimit` (the limiter, the protocol and the in-process backend).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import weakref
from pathlib import Path

from meshproxy.resilience.ratelimit import refill_and_take

MAGIC = b"MPRLBKT1"
HEADER = struct.Struct("<8sII48x")      # magic, version, slots
SLOT = struct.Struct("<Qdd8x")          # key hash, tokens, last
PROBE = 16
_HASH_CACHE = 4096                      # keys whose hash is remembered per process


def key_hash(key: bytes) -> int:
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return h or 1                        # 0 means "empty slot"


def _mark_forked(ref: weakref.ref[SharedBucketTable]) -> None:
    table = ref()
    if table is not None:
        table._forked = True


class SharedBucketTable:
    """A bounded table of token buckets shared by the processes that open ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, slots: int = 16384) -> None:
        if not 1 <= slots <= 1 << 24:
            raise ValueError(f"slots must be between 1 and {1 << 24}, got {slots}")
        self.path = Path(path)
        self.slots = slots
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._pid = 0
        self._hashes: dict[bytes, int] = {}
        self._forked = False
        self._open()
        # A fork shares the open file description and so the lock: the child must reopen.
        # Learn of forks from the fork hook instead of a getpid() call on every take (the
        # hook cannot be unregistered; it holds only a weak reference).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _mark_forked(ref))

    def _open(self) -> None:
        size = HEADER.size + self.slots * SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                have = os.fstat(fd).st_size
                if have == 0:
                    os.ftruncate(fd, size)
                    os.pwrite(fd, HEADER.pack(MAGIC, 1, self.slots), 0)
                else:
                    magic, _version, slots = HEADER.unpack(os.pread(fd, HEADER.size, 0))
                    if magic != MAGIC:
                        raise ValueError(f"{self.path} is not a rate-limit bucket table")
                    if slots != self.slots or have != size:
                        raise ValueError(f"{self.path} has {slots} slots, not {self.slots}: "
                                         f"another proxy with another config owns it")
                m = mmap.mmap(fd, size)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._map, self._pid = fd, m, os.getpid()

    def _reopen_after_fork(self) -> None:
        if self._pid != os.getpid():     # forked: the inherited lock would be shared
            old_map, old_fd = self._map, self._fd
            self._map, self._fd = None, -1
            self._open()
            if old_map is not None:
                old_map.close()
            os.close(old_fd)             # the parent keeps its own descriptor and lock

    def take(self, key: bytes, now: float, rate: float, burst: float,
             cost: float = 1.0) -> tuple[bool, float]:
        if self._forked:
            self._forked = False
            self._reopen_after_fork()
        m = self._map
        if m is None:
            raise ValueError(f"bucket table {self.path} is closed")
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= _HASH_CACHE:
                self._hashes.clear()
            h = self._hashes[key] = key_hash(key)
        start = h % self.slots
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            victim, victim_last = -1, float("inf")
            for i in range(min(PROBE, self.slots)):
                off = HEADER.size + ((start + i) % self.slots) * SLOT.size
                kh, tokens, last = SLOT.unpack_from(m, off)
                if kh == h:
                    break
                if kh == 0:              # free: the key is not in the table
                    tokens, last = float(burst), now
                    break
                if last < victim_last:
                    victim, victim_last = off, last
            else:                        # probe window full: reuse its least recent slot
                off, tokens, last = victim, float(burst), now
            ok, tokens, last = refill_and_take(tokens, last, now, rate, burst, cost)
            SLOT.pack_into(m, off, h, tokens, last)
            return ok, tokens
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __len__(self) -> int:
        """Occupied slots (a diagnostic; takes no lock, so it is approximate)."""
        m = self._map
        if m is None:
            return 0
        return sum(1 for i in range(self.slots)
                   if SLOT.unpack_from(m, HEADER.size + i * SLOT.size)[0] != 0)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the file (the supervising process does this at shutdown)."""
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def __repr__(self) -> str:
        return f"<SharedBucketTable {self.path} slots={self.slots}>"
