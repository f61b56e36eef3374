"""Build a cluster's balancer from its :class:`~meshproxy.balance.config.LoadBalancerConfig`.

The one place that maps policy names to classes. A reload that changes a cluster's
policy builds a new balancer here; an endpoint change calls ``update()`` on the
existing one instead, so learned state (EWMA estimates, rotation, rings) survives.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Sequence

from meshproxy.balance.base import Balancer
from meshproxy.balance.config import LoadBalancerConfig, Policy
from meshproxy.balance.least_request import LeastRequest
from meshproxy.balance.maglev import Maglev
from meshproxy.balance.peak_ewma import PeakEwma
from meshproxy.balance.random_pick import Random, WeightedRandom
from meshproxy.balance.ring_hash import RingHash
from meshproxy.balance.round_robin import RoundRobin
from meshproxy.endpoint import Endpoint


def make_balancer(config: LoadBalancerConfig | Policy, endpoints: Sequence[Endpoint] = (), *,
                  rng: _random.Random | None = None,
                  clock: Callable[[], float] = time.monotonic) -> Balancer:
    """A balancer for ``config`` (or a policy name with default settings).

    ``rng`` seeds the randomised policies (tests, simulations); ``clock`` is the time
    source of peak EWMA (pass ``loop.time`` in the engine).
    """
    if isinstance(config, str):
        config = LoadBalancerConfig(policy=config)
    panic = config.panic_threshold
    match config.policy:
        case "round_robin":
            return RoundRobin(endpoints, panic_threshold=panic)
        case "random":
            return Random(endpoints, panic_threshold=panic, rng=rng)
        case "weighted_random":
            return WeightedRandom(endpoints, panic_threshold=panic, rng=rng)
        case "least_request":
            s = config.least_request
            return LeastRequest(endpoints, panic_threshold=panic, choice_count=s.choice_count,
                                active_request_bias=s.active_request_bias, rng=rng)
        case "peak_ewma":
            p = config.peak_ewma
            return PeakEwma(endpoints, panic_threshold=panic, decay_s=p.decay_s,
                            default_rtt_s=p.default_rtt_s,
                            failure_penalty_s=p.failure_penalty_s, clock=clock, rng=rng)
        case "ring_hash":
            r = config.ring_hash
            return RingHash(endpoints, panic_threshold=panic, virtual_nodes=r.virtual_nodes,
                            max_ring_size=r.max_ring_size, rng=rng)
        case "maglev":
            return Maglev(endpoints, panic_threshold=panic,
                          table_size=config.maglev.table_size, rng=rng)
    raise AssertionError(f"unhandled policy {config.policy!r}")  # the Literal is exhaustive
