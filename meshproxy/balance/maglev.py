"""Maglev consistent hashing (Google's Maglev paper, as Envoy's ``MAGLEV``).

A lookup table of prime size M (default 65537, Envoy's) is filled by letting every
endpoint claim slots in turn, each following its own permutation of the table
(``offset + j * skip mod M``, both from the endpoint's address). The result spreads
slots evenly (weighted: an endpoint claims a slot in a round only when its share
allows, Envoy's weighted Maglev) and a lookup is one hash and one index, O(1).
Removing one of N endpoints moves a little more than 1/N of the keys: slightly more
disruption than a ring, much better balance and speed.

The table is rebuilt only when addresses or weights change. When the slot's owner is
unavailable or excluded, the lookup walks on to the following slots; their owners are
spread over the table, so the missing endpoint's keys scatter evenly while every other
key stays put. A request without a hash key gets a random candidate.
"""

from __future__ import annotations

import random as _random
from collections.abc import Collection, Sequence

from meshproxy.balance.base import DEFAULT_PANIC_THRESHOLD, EndpointPool, PickContext
from meshproxy.balance.hashing import first_allowed, hash64
from meshproxy.endpoint import Endpoint

DEFAULT_TABLE_SIZE = 65537  # Envoy's default: prime, and 100x the endpoints it expects


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


class Maglev:
    """Maglev lookup-table consistent hashing."""

    #: ``observe`` does nothing: the cluster need not call it after every attempt.
    learns = False

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
                 table_size: int = DEFAULT_TABLE_SIZE,
                 rng: _random.Random | None = None) -> None:
        if not is_prime(table_size):
            raise ValueError(f"table_size must be a prime number, got {table_size}")
        self._pool = EndpointPool(endpoints, panic_threshold=panic_threshold)
        if len(self._pool.endpoints) > table_size:
            raise ValueError(f"table_size {table_size} is smaller than the "
                             f"{len(self._pool.endpoints)} endpoints")
        self._size = table_size
        self._rng = rng or _random.Random()
        self._built_for: tuple[tuple[str, int, int], ...] | None = None
        self._table: list[Endpoint] = []
        self._build()

    @property
    def panic_total(self) -> int:
        return self._pool.panic_total

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        if len(endpoints) > self._size:
            raise ValueError(f"table_size {self._size} is smaller than the "
                             f"{len(endpoints)} endpoints")
        self._pool.replace(endpoints)
        self._build()

    def _build(self) -> None:
        endpoints = self._pool.endpoints
        signature = tuple((e.host, e.port, e.weight) for e in endpoints)
        if signature == self._built_for:
            by_key = {e.key: e for e in endpoints}
            self._table = [by_key[o.key] for o in self._table]
            return
        m = self._size
        table: list[int] = [-1] * m
        if endpoints:
            max_weight = max(e.weight for e in endpoints)
            # (next permutation index, offset, skip, weight, target) per endpoint
            offsets = [hash64(f"{e.host}:{e.port}".encode(), salt=b"offset") % m
                       for e in endpoints]
            skips = [hash64(f"{e.host}:{e.port}".encode(), salt=b"skip") % (m - 1) + 1
                     for e in endpoints]
            nexts = [0] * len(endpoints)
            targets = [0.0] * len(endpoints)
            filled = 0
            iteration = 1
            while filled < m:
                for i, e in enumerate(endpoints):
                    if filled >= m:
                        break
                    # Envoy's weighted fill: an endpoint of weight w claims a slot in
                    # about w / max_weight of the rounds.
                    if iteration * e.weight < targets[i]:
                        continue
                    targets[i] += max_weight
                    offset, skip, j = offsets[i], skips[i], nexts[i]
                    slot = (offset + j * skip) % m
                    while table[slot] >= 0:
                        j += 1
                        slot = (offset + j * skip) % m
                    table[slot] = i
                    nexts[i] = j + 1
                    filled += 1
                iteration += 1
        self._table = [endpoints[i] for i in table] if endpoints else []
        self._built_for = signature

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self._pool.candidates(ctx.now, exclude)
        if not candidates:
            return None
        if ctx.hash_key is None:
            return candidates[self._rng.randrange(len(candidates))]
        table = self._table
        m = self._size
        slot = hash64(ctx.hash_key) % m
        if candidates is self._pool.endpoints:
            return table[slot]
        return first_allowed(table, slot, candidates)

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        return None

    def __repr__(self) -> str:
        return f"<Maglev {len(self._pool.endpoints)} endpoints, table {self._size}>"
