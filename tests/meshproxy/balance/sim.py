"""A discrete-event simulation of one proxy sending requests through a balancer.

Requests arrive at a fixed rate on a fake clock; each pick raises the chosen endpoint's
``active_requests`` (as the engine's request path does) and its completion, after that
endpoint's latency, lowers it again and reports the latency to ``observe``. No sockets
and no real time: the latency-aware policies see exactly the load a real proxy would.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable

from meshproxy.balance import Balancer, PickContext
from meshproxy.endpoint import Endpoint


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def simulate(balancer: Balancer, clock: FakeClock, *, requests: int, rate: float,
             latency: Callable[[Endpoint], float]) -> Counter[str]:
    """Send ``requests`` at ``rate`` per second; return picks per endpoint host."""
    counts: Counter[str] = Counter()
    pending: list[tuple[float, int, Endpoint, float]] = []
    start = clock.now
    for i in range(requests):
        t = start + i / rate
        while pending and pending[0][0] <= t:
            done, _, ep, took = heapq.heappop(pending)
            clock.now = done
            ep.active_requests -= 1
            balancer.observe(ep, took, True)
        clock.now = t
        ep = balancer.pick(PickContext(now=t))
        assert ep is not None
        counts[ep.host] += 1
        ep.active_requests += 1
        took = latency(ep)
        heapq.heappush(pending, (t + took, i, ep, took))
    while pending:
        done, _, ep, took = heapq.heappop(pending)
        clock.now = done
        ep.active_requests -= 1
        balancer.observe(ep, took, True)
    return counts
