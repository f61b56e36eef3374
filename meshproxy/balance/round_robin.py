"""Smooth weighted round robin, as nginx's upstream module does it.

Each pick adds every candidate's weight to its current score, takes the highest and
subtracts the total weight from it: weights 5,1,1 give a a b a c a a, never a burst of
five in a row. With equal weights it is plain round robin. Scores are kept per endpoint
object, so an endpoint update keeps the rotation of the endpoints that stay.

Candidates (health, exclusion, panic) come from :class:`~meshproxy.balance.base.EndpointPool`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from meshproxy.balance.base import DEFAULT_PANIC_THRESHOLD, EndpointPool, PickContext
from meshproxy.endpoint import Endpoint


class RoundRobin:
    """Smooth weighted round robin over the candidate endpoints."""

    #: ``observe`` does nothing: the cluster need not call it after every attempt.
    learns = False

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        self._pool = EndpointPool(endpoints, panic_threshold=panic_threshold)
        self._current: dict[int, int] = {}

    @property
    def panic_total(self) -> int:
        return self._pool.panic_total

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._pool.replace(endpoints)
        keep = {id(e) for e in self._pool.endpoints}
        self._current = {k: v for k, v in self._current.items() if k in keep}

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self._pool.candidates(ctx.now, exclude)
        if len(candidates) < 2:
            # nothing to rotate (one candidate's score would go up by its weight and
            # down by the same total)
            return candidates[0] if candidates else None
        total = 0
        best: Endpoint | None = None
        best_score = 0
        current = self._current
        for e in candidates:
            score = current.get(id(e), 0) + e.weight
            current[id(e)] = score
            total += e.weight
            if best is None or score > best_score:
                best, best_score = e, score
        assert best is not None
        current[id(best)] = best_score - total
        return best

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        return None

    def __repr__(self) -> str:
        return f"<RoundRobin {[e.address for e in self._pool.endpoints]}>"
