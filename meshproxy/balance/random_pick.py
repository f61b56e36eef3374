"""Random and weighted random choice.

``Random`` picks uniformly among the candidates and ignores weights (the seed's "random"
policy: no state, no coordination, good enough with many clients). ``WeightedRandom``
picks with probability proportional to weight. Both take a ``random.Random`` so tests
and simulations can seed it; with none they use a private unseeded one.

Weighted choice is a binary search over cumulative weights. The cumulative table of the
full endpoint list is cached until the next ``update()`` (the common case: everything
healthy, no retry exclusion); a pick over a smaller candidate list builds its own.
"""

from __future__ import annotations

import bisect
import random as _random
from collections.abc import Collection, Sequence
from itertools import accumulate

from meshproxy.balance.base import DEFAULT_PANIC_THRESHOLD, EndpointPool, PickContext
from meshproxy.endpoint import Endpoint


class Random:
    """Uniform random choice among the candidates; weights are ignored by design."""

    #: ``observe`` does nothing: the cluster need not call it after every attempt.
    learns = False

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
                 rng: _random.Random | None = None) -> None:
        self._pool = EndpointPool(endpoints, panic_threshold=panic_threshold)
        self._rng = rng or _random.Random()

    @property
    def panic_total(self) -> int:
        return self._pool.panic_total

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._pool.replace(endpoints)

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self._pool.candidates(ctx.now, exclude)
        if not candidates:
            return None
        return candidates[self._rng.randrange(len(candidates))]

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        return None

    def __repr__(self) -> str:
        return f"<Random {[e.address for e in self._pool.endpoints]}>"


class WeightedRandom:
    """Random choice with probability proportional to each candidate's weight."""

    #: ``observe`` does nothing: the cluster need not call it after every attempt.
    learns = False

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
                 rng: _random.Random | None = None) -> None:
        self._pool = EndpointPool(endpoints, panic_threshold=panic_threshold)
        self._rng = rng or _random.Random()
        self._cumulative: list[int] | None = None  # of the full list; reset by update()

    @property
    def panic_total(self) -> int:
        return self._pool.panic_total

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        # Weights change only through an update (the cluster sets them, then calls
        # this), so the cached table of the full list is dropped here, not per pick.
        self._pool.replace(endpoints)
        self._cumulative = None

    def _table(self, candidates: list[Endpoint]) -> list[int]:
        if candidates is self._pool.endpoints:
            if self._cumulative is None:
                self._cumulative = list(accumulate(e.weight for e in candidates))
            return self._cumulative
        return list(accumulate(e.weight for e in candidates))

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self._pool.candidates(ctx.now, exclude)
        if not candidates:
            return None
        cumulative = self._table(candidates)
        point = self._rng.randrange(cumulative[-1])
        return candidates[bisect.bisect_right(cumulative, point)]

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        return None

    def __repr__(self) -> str:
        return f"<WeightedRandom {[(e.address, e.weight) for e in self._pool.endpoints]}>"
