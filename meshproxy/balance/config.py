"""Typed, frozen settings of a cluster's load balancing (msgspec Structs).

:class:`LoadBalancerConfig` is what a cluster's ``load_balancer:`` section of the proxy
config validates into; the engine's config schema embeds it, and
:func:`meshproxy.balance.factory.make_balancer` builds the runtime balancer from it.
Every field has a default, its unit, and the reason for the default. Settings of a
policy other than the chosen one are accepted (so switching policy is a one-line
change) but unused.

Example (YAML)::

    load_balancer:
      policy: ring_hash
      panic_threshold_percent: 50
      hash_on: {source: header, name: x-user-id}
      ring_hash: {virtual_nodes: 200}
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from msgspec import Meta

from meshproxy.schema import Frozen, field_error

Policy = Literal["round_robin", "random", "weighted_random", "least_request",
                 "peak_ewma", "ring_hash", "maglev"]
POLICIES: tuple[str, ...] = get_args(Policy)
HASH_POLICIES = frozenset({"ring_hash", "maglev"})

# RFC 9110 token characters: what a header or cookie name may contain.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")




class HashOn(Frozen, kw_only=True):
    """Where a consistent-hash policy takes each request's key from."""

    source: Literal["header", "cookie", "client_address"]
    # The header or cookie name; required for those sources, absent for client_address.
    name: str | None = None

    def __post_init__(self) -> None:
        if self.source == "client_address":
            if self.name is not None:
                raise ValueError("name is not used with source 'client_address'; remove it")
        elif self.name is None:
            raise ValueError(f"source {self.source!r} needs the {self.source} name in 'name'")
        elif not _TOKEN.match(self.name):
            raise ValueError(f"{self.source} name {self.name!r} is not a valid HTTP token")


class LeastRequestSettings(Frozen, kw_only=True):
    # Candidates sampled per pick; 2 is Envoy's default and the classic result that two
    # random choices already give exponentially better balance than one.
    choice_count: Annotated[int, Meta(ge=2, le=100)] = 2
    # Exponent on (active + 1) when weights differ; 1.0 is Envoy's default (divide the
    # weight by the load), 0 ignores load and is weighted round robin.
    active_request_bias: Annotated[float, Meta(ge=0.0, le=10.0)] = 1.0


class PeakEwmaSettings(Frozen, kw_only=True):
    # Seconds for the latency estimate to decay by 1/e; Linkerd's default 10 s: long
    # enough to remember a bad spell, short enough to retry a recovered endpoint.
    decay_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 10.0
    # Seconds assumed for an endpoint with no observation yet; Linkerd's 30 ms.
    default_rtt_s: Annotated[float, Meta(gt=0.0, le=60.0)] = 0.030
    # Seconds a failed attempt counts as at least: refusals are fast, and a dead
    # endpoint must not look like the fastest one. 1 s dwarfs normal latencies.
    failure_penalty_s: Annotated[float, Meta(ge=0.0, le=3600.0)] = 1.0


class RingHashSettings(Frozen, kw_only=True):
    # Ring entries per unit of endpoint weight, independent of the other endpoints so
    # that removing one endpoint moves only its own keys; 200 keeps each endpoint's
    # share of keys within a few percent of its weight.
    virtual_nodes: Annotated[int, Meta(ge=1, le=100_000)] = 200
    # Cap on ring entries (Envoy's 8 Mi) so extreme weights cannot exhaust memory.
    max_ring_size: Annotated[int, Meta(ge=1, le=8 * 1024 * 1024)] = 8 * 1024 * 1024


class MaglevSettings(Frozen, kw_only=True):
    # Lookup-table slots, a prime (Envoy's default 65537): at least 100x the endpoints
    # keeps each endpoint's share within about 1% of its weight. Capped at 131071
    # (Envoy allows 5000011) because the table is built in Python on the event loop at
    # each endpoint change: 65537 slots take ~60 ms here, 524287 took 1.5 s.
    table_size: Annotated[int, Meta(ge=2, le=131071)] = 65537

    def __post_init__(self) -> None:
        from meshproxy.balance.maglev import is_prime

        if not is_prime(self.table_size):
            raise field_error("table_size",
                              f"table_size must be a prime number, got {self.table_size}")


class LoadBalancerConfig(Frozen, kw_only=True):
    """A cluster's load-balancing settings."""

    # Smooth weighted round robin is the default: deterministic, weight-exact, and no
    # surprises for a user who did not choose (nginx's default).
    policy: Policy = "round_robin"
    # Below this percentage of available endpoints, balance across all of them (panic).
    # 50 is Envoy's default: fewer than half left means each takes over twice its load.
    # 0 disables panic (no available endpoint then means 503).
    panic_threshold_percent: Annotated[float, Meta(ge=0.0, le=100.0)] = 50.0
    # Where ring_hash and maglev take the key from; required for them, refused otherwise.
    hash_on: HashOn | None = None
    least_request: LeastRequestSettings = LeastRequestSettings()
    peak_ewma: PeakEwmaSettings = PeakEwmaSettings()
    ring_hash: RingHashSettings = RingHashSettings()
    maglev: MaglevSettings = MaglevSettings()

    def __post_init__(self) -> None:
        if self.policy in HASH_POLICIES and self.hash_on is None:
            raise ValueError(f"policy {self.policy!r} needs 'hash_on' "
                             "(a header, a cookie or the client address)")
        if self.policy not in HASH_POLICIES and self.hash_on is not None:
            raise ValueError(f"'hash_on' only applies to ring_hash and maglev, "
                             f"not to policy {self.policy!r}")

    @property
    def panic_threshold(self) -> float:
        """The panic threshold as a share in [0, 1], as the balancers take it."""
        return self.panic_threshold_percent / 100.0
