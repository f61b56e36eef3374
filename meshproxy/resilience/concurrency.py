"""Concurrency limits: connections, pending requests, active requests and active retries,
per cluster and per endpoint (Envoy's circuit-breaker thresholds).

The building block is :class:`Limiter`, read like trio's ``CapacityLimiter``:
``try_acquire()`` answers at once (the request path's call: excess is refused
immediately, and :attr:`Limiter.refusal` says why, for the ``x-mesh-reason`` header);
``async acquire()`` waits in a FIFO bounded by ``max_waiting`` (how "pending requests"
wait for an upstream connection); ``release()``; a ``statistics()`` snapshot; a repr with
live state; and ``limit``/``max_waiting`` setters that validate, so a reload resizes a
limiter without losing who holds it (shrinking below the holders refuses new ones until
enough release; nobody is cut off).

:class:`LimitSet` groups the four limits of one cluster or one endpoint;
:class:`EndpointLimits` makes a set per endpoint on first use. All of it is single-threaded
asyncio: plain integers, no locks.

Neighbours: :mod:`.shedding` decides *which* requests to drop when near a limit;
:mod:`.breaker` reacts to failures, not load.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta

from meshproxy.schema import Frozen


class ConcurrencyConfig(Frozen, kw_only=True):
    """Limits for a cluster (or for each of its endpoints). Defaults are Envoy's."""

    max_connections: Annotated[int, Meta(ge=1)] = 1024
    """Upstream connections open at once (Envoy default 1024)."""
    max_pending_requests: Annotated[int, Meta(ge=0)] = 1024
    """Requests waiting for a connection when all are busy (Envoy default 1024); 0: none
    wait, a request without a free connection is refused."""
    max_requests: Annotated[int, Meta(ge=1)] = 1024
    """Requests in flight (Envoy default 1024)."""
    max_retries: Annotated[int, Meta(ge=0)] = 3
    """Retries in flight at once (Envoy default 3): the last guard against a retry storm,
    beside the retry budget."""


@dataclass(frozen=True, slots=True)
class LimiterStats:
    name: str
    in_use: int
    limit: int
    waiting: int
    max_waiting: int
    acquired_total: int
    refused_total: int


class Limiter:
    """At most ``limit`` holders at once; up to ``max_waiting`` more may wait in line."""

    def __init__(self, limit: int, *, name: str, max_waiting: int = 0,
                 code: str = "overflow") -> None:
        self.name = name
        self.code = code                   # the x-mesh-reason / metric label of a refusal
        self._limit = self._check("limit", limit, minimum=0)
        self._max_waiting = self._check("max_waiting", max_waiting, minimum=0)
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.acquired_total = 0
        self.refused_total = 0

    @staticmethod
    def _check(what: str, value: int, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
        return value

    # -- sizes (validated: a reload resizes in place) ---------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = self._check("limit", value, minimum=0)
        self._wake()

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int) -> None:
        self._max_waiting = self._check("max_waiting", value, minimum=0)

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def refusal(self) -> str:
        """Why the last refusal happened, for the response reason and the log."""
        return f"{self.name} limit {self._limit} reached"

    # -- acquire / release --------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a slot now or refuse at once. Waiters keep their place in line."""
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            self.acquired_total += 1
            return True
        self.refused_total += 1
        return False

    async def acquire(self) -> bool:
        """Take a slot, waiting in FIFO order if the line has room; False (refused at
        once) when it has none. Cancellation while waiting leaves no slot taken."""
        if self.try_acquire():
            return True
        if len(self._waiters) >= self._max_waiting:
            return False                   # try_acquire already counted the refusal
        self.refused_total -= 1            # ... but this one waits instead
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()             # the slot was handed over as we were cancelled
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        self.acquired_total += 1
        return True

    def release(self) -> None:
        if self._in_use <= 0:
            raise RuntimeError(f"{self.name}: release() without a matching acquire")
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._in_use += 1          # handed straight to the waiter: no barging
                fut.set_result(None)

    def statistics(self) -> LimiterStats:
        return LimiterStats(self.name, self._in_use, self._limit, len(self._waiters),
                            self._max_waiting, self.acquired_total, self.refused_total)

    def __repr__(self) -> str:
        return (f"<Limiter {self.name} {self._in_use}/{self._limit} in use, "
                f"{len(self._waiters)}/{self._max_waiting} waiting, "
                f"refused={self.refused_total}>")


class LimitSet:
    """The four limits of one cluster or one endpoint.

    - ``requests``: taken for every request (``try_acquire``), released when it ends.
    - ``retries``: taken for each retry attempt on top of ``requests``.
    - ``connections``: taken when an upstream connection is opened, released when it
      closes; a request that needs a new connection while all are taken waits with
      ``await connections.acquire()``, and its line is bounded by
      ``max_pending_requests``: that line *is* the pending-request limit.
    """

    def __init__(self, name: str, config: ConcurrencyConfig) -> None:
        self.name = name
        self.config = config
        self.requests = Limiter(config.max_requests, name=f"{name} max_requests",
                                code="max_requests")
        self.retries = Limiter(config.max_retries, name=f"{name} max_retries",
                               code="max_retries")
        # a refusal here means the line of pending requests was full
        self.connections = Limiter(config.max_connections, name=f"{name} max_connections",
                                   max_waiting=config.max_pending_requests,
                                   code="max_pending_requests")

    def reconfigure(self, config: ConcurrencyConfig) -> bool:
        """Resize in place: holders and waiters are kept."""
        self.requests.limit = config.max_requests
        self.retries.limit = config.max_retries
        self.connections.limit = config.max_connections
        self.connections.max_waiting = config.max_pending_requests
        self.config = config
        return True

    def statistics(self) -> dict[str, LimiterStats]:
        return {"requests": self.requests.statistics(),
                "retries": self.retries.statistics(),
                "connections": self.connections.statistics()}

    def __repr__(self) -> str:
        return (f"<LimitSet {self.name} requests {self.requests.in_use}/"
                f"{self.requests.limit} retries {self.retries.in_use}/{self.retries.limit} "
                f"connections {self.connections.in_use}/{self.connections.limit} "
                f"pending {len(self.connections._waiters)}>")


class EndpointLimits:
    """A :class:`LimitSet` per endpoint address of one cluster, made on first use."""

    def __init__(self, cluster: str, config: ConcurrencyConfig) -> None:
        self.cluster = cluster
        self.config = config
        self._by_addr: dict[str, LimitSet] = {}

    def get(self, address: str) -> LimitSet:
        s = self._by_addr.get(address)
        if s is None:
            s = self._by_addr[address] = LimitSet(f"{self.cluster}/{address}", self.config)
        return s

    def retain(self, addresses: Iterable[str]) -> None:
        """Forget endpoints that left; their in-flight requests release into the old
        object harmlessly."""
        keep = set(addresses)
        for a in [a for a in self._by_addr if a not in keep]:
            del self._by_addr[a]

    def reconfigure(self, config: ConcurrencyConfig) -> bool:
        for s in self._by_addr.values():
            s.reconfigure(config)
        self.config = config
        return True

    def __len__(self) -> int:
        return len(self._by_addr)
