"""Least request, Envoy's default load balancer.

Load is read from ``Endpoint.active_requests``, which the request path keeps (requests
in flight to that endpoint from this proxy). Two modes, as in Envoy:

- **All candidate weights equal:** power of two choices. Sample ``choice_count``
  distinct candidates at random and take the one with the fewest active requests. This
  avoids the herd behaviour of "always the global least" (every proxy piling onto the
  same idle endpoint) while still steering clear of a slow endpoint whose requests
  pile up.
- **Weights differ:** a weighted schedule whose weights are recomputed at each pick as
  ``weight / (active_requests + 1) ** active_request_bias``. Bias 1.0 (the default)
  divides by the load; 0 turns it into plain weighted round robin. The schedule is the
  smooth weighted round robin of ``round_robin`` run on those float weights, which
  plays the role of Envoy's earliest-deadline-first scheduler.

Candidates (health, exclusion, panic) come from :class:`~meshproxy.balance.base.EndpointPool`.
"""

from __future__ import annotations

import random as _random
from collections.abc import Collection, Sequence

from meshproxy.balance.base import DEFAULT_PANIC_THRESHOLD, EndpointPool, PickContext
from meshproxy.endpoint import Endpoint


class LeastRequest:
    """Least active requests: P2C with equal weights, load-scaled weights otherwise."""

    #: ``observe`` does nothing: the cluster need not call it after every attempt.
    learns = False

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
                 choice_count: int = 2, active_request_bias: float = 1.0,
                 rng: _random.Random | None = None) -> None:
        if choice_count < 2:
            raise ValueError(f"choice_count must be >= 2, got {choice_count}")
        if active_request_bias < 0:
            raise ValueError(f"active_request_bias must be >= 0, got {active_request_bias}")
        self._pool = EndpointPool(endpoints, panic_threshold=panic_threshold)
        self._choices = choice_count
        self._bias = float(active_request_bias)
        self._rng = rng or _random.Random()
        self._current: dict[int, float] = {}

    @property
    def panic_total(self) -> int:
        return self._pool.panic_total

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._pool.replace(endpoints)
        keep = {id(e) for e in self._pool.endpoints}
        self._current = {k: v for k, v in self._current.items() if k in keep}

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        candidates = self._pool.candidates(ctx.now, exclude)
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        first_weight = candidates[0].weight
        if all(e.weight == first_weight for e in candidates):
            return self._power_of_choices(candidates)
        return self._weighted(candidates)

    def _power_of_choices(self, candidates: list[Endpoint]) -> Endpoint:
        # A random sample even when it covers every candidate: its order breaks ties.
        sample = self._rng.sample(candidates, min(self._choices, len(candidates)))
        best = sample[0]
        for e in sample[1:]:
            if e.active_requests < best.active_requests:
                best = e
        return best

    def _weighted(self, candidates: list[Endpoint]) -> Endpoint:
        bias = self._bias
        current = self._current
        total = 0.0
        best = candidates[0]
        best_score = float("-inf")
        for e in candidates:
            if bias == 1.0:
                w = e.weight / (e.active_requests + 1)
            else:
                w = e.weight / (e.active_requests + 1) ** bias
            score = current.get(id(e), 0.0) + w
            current[id(e)] = score
            total += w
            if score > best_score:
                best, best_score = e, score
        current[id(best)] = best_score - total
        return best

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        return None  # the load signal is active_requests, kept by the request path

    def __repr__(self) -> str:
        return (f"<LeastRequest {[(e.address, e.active_requests) for e in self._pool.endpoints]}"
                f" choices={self._choices}>")
