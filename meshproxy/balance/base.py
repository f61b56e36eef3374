"""The balancer interface: the seam between a cluster and its load-balancing policy.

A balancer is built per cluster, told the endpoint list with :meth:`Balancer.update`
whenever it changes (the same :class:`~meshproxy.endpoint.Endpoint` objects survive an
update), and asked :meth:`Balancer.pick` once per attempt. It skips endpoints that are
unhealthy or ejected and those in ``exclude`` (a retry goes to a different endpoint),
unless none is left. Policies that learn from outcomes (least request, peak EWMA) get
:meth:`Balancer.observe` after each attempt. ``pick`` runs on the hot path: O(1) or
O(log n), no allocation beyond what the policy needs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshproxy.endpoint import Endpoint


@dataclass(slots=True)
class PickContext:
    """What a policy may look at in the request: the time, and for consistent hashing
    the hash key the route computed (header, cookie or client address)."""

    now: float
    hash_key: bytes | None = None


class Balancer(Protocol):
    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the endpoint set (called on every change, in place of the old set)."""

    def pick(self, ctx: PickContext, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """An endpoint for the next attempt, or None when the cluster has none at all."""

    def observe(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        """The outcome of one attempt to ``endpoint`` (latency in seconds)."""
