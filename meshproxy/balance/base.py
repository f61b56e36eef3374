"""The balancer interface: the seam between a cluster and its load-balancing policy.

A balancer is built per cluster, told the endpoint list with :meth:`Balancer.update`
whenever it changes (the same :class:`~meshproxy.endpoint.Endpoint` objects survive an
update), and asked :meth:`Balancer.pick` once per attempt. It skips endpoints that are
unhealthy or ejected and those in ``exclude`` (a retry goes to a different endpoint).
Policies that learn from outcomes (peak EWMA) get :meth:`Balancer.observe` after each
attempt. ``pick`` runs on the hot path: O(n) at worst over the endpoint list, no
allocation beyond what the policy needs.

Which endpoints a policy may choose from is decided once, here, by :class:`EndpointPool`,
so every policy treats health, exclusion and the panic threshold the same way:

1. Normally the candidates are the *available* endpoints (healthy by active checks and
   not ejected by outlier detection) minus ``exclude``.
2. **Panic** (Envoy's healthy panic threshold): when fewer than ``panic_threshold`` of
   the endpoints are available, the few that are left would take the whole load and
   fall over too, so the candidates become *all* endpoints, healthy or not. Every pick
   made in panic increments ``panic_total`` (Envoy's ``lb_healthy_panic``), which the
   engine exports as a counter. A threshold of 0 disables panic: with no available
   endpoint ``pick`` then returns None and the engine answers 503.
3. When ``exclude`` removes every candidate (a retry and all endpoints already tried),
   the excluded candidates are used again: a retry to an endpoint already tried beats
   no retry, and an unavailable endpoint is never chosen outside panic.

Neighbours: each policy has its own module in this package; ``config`` holds the typed
settings and ``factory.make_balancer`` builds a policy from them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from meshproxy.endpoint import Endpoint

# Envoy's default healthy panic threshold (50%): below half the endpoints healthy, the
# remaining ones would receive more than twice their share, which is usually what made
# the others fail in the first place.
DEFAULT_PANIC_THRESHOLD: Final = 0.5


@dataclass(slots=True)
class PickContext:
    """What a policy may look at in the request: the time, and for consistent hashing
    the hash key the route computed (header, cookie or client address)."""

    now: float
    hash_key: bytes | None = None


class Balancer(Protocol):
    #: Whether :meth:`observe` uses outcomes (False: the cluster skips the call, one
    #: Python call fewer per attempt for the policies that ignore them).
    learns: bool

    @property
    def panic_total(self) -> int:
        """Picks made in panic mode since the balancer was built (a counter)."""

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint set (called on every change, in place of the old set)."""

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """An endpoint for the next attempt, or None when there is no candidate."""

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        """The outcome of one attempt to ``endpoint`` (latency in seconds)."""


def check_panic_threshold(value: float) -> float:
    """``value`` if it is a share in [0, 1]; a ValueError naming the limit otherwise."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"panic_threshold must be a share between 0 and 1, got {value!r}")
    return float(value)


def check_endpoints(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints as a new list, after checking weights and duplicate addresses."""
    seen: set[tuple[str, int]] = set()
    for e in endpoints:
        if e.weight < 1:
            raise ValueError(f"endpoint {e.address}: weight must be >= 1, got {e.weight}")
        if e.key in seen:
            raise ValueError(f"endpoint {e.address} appears twice in the endpoint set")
        seen.add(e.key)
    return list(endpoints)


class EndpointPool:
    """The endpoint list of one balancer and the candidate rule every policy shares.

    Not a balancer itself: it holds no policy state, only the list, the panic threshold
    and the panic counter.
    """

    __slots__ = ("endpoints", "panic_threshold", "panic_total")

    def __init__(self, endpoints: Sequence[Endpoint] = (), *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD) -> None:
        self.panic_threshold = check_panic_threshold(panic_threshold)
        self.endpoints: list[Endpoint] = check_endpoints(endpoints)
        self.panic_total = 0

    def replace(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = check_endpoints(endpoints)

    def candidates(self, now: float, exclude: Collection[Endpoint] = ()) -> list[Endpoint]:
        """The endpoints a policy may choose from now (see the module docstring).

        May be ``self.endpoints`` itself (everything available, nothing excluded):
        callers must not modify it, and may use ``is self.endpoints`` as a fast path.
        Counts one panic pick when in panic."""
        every = self.endpoints
        for e in every:
            if not e.healthy or e.ejected_until > now:
                break
        else:  # all available (the usual case, checked without a new list)
            if not exclude:
                return every  # the stable list (policies cache on it)
            kept = [e for e in every if e not in exclude]
            return kept or every
        pool = [e for e in every if e.healthy and e.ejected_until <= now]
        if len(pool) < self.panic_threshold * len(every):
            pool = every
            self.panic_total += 1
        if not exclude:
            return pool
        kept = [e for e in pool if e not in exclude]
        return kept or pool

    def in_panic(self, now: float) -> bool:
        """Whether a pick made now would be in panic mode (does not count)."""
        available = sum(1 for e in self.endpoints if e.available(now))
        return available < self.panic_threshold * len(self.endpoints)
