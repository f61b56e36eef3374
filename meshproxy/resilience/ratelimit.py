"""Rate limits: token buckets per route, keyed by nothing, the client address or a header.

A route's :class:`RateLimiter` turns a request into a bucket key, asks a
:class:`BucketBackend` to take one token, and returns a :class:`RateDecision` carrying
everything the response needs: admit or 429, ``Retry-After`` and the
``RateLimit-Limit``/``RateLimit-Remaining``/``RateLimit-Reset`` headers (IETF httpapi
rate-limit headers draft). A bucket holds up to ``burst`` tokens and refills at ``rate``
per second; requests without the configured header share one bucket, so leaving the header
out is no way around the limit.

The backend is a seam because the limit's scope differs:

- :class:`LocalBackend`: this process only; a bounded LRU table of buckets.
- :class:`~.shm_buckets.SharedBucketTable` (``shm_buckets.py``): every worker process of
  one proxy (``--workers N`` with ``SO_REUSEPORT``) on one table in shared memory, so N
  workers admit ``rate``, not ``N x rate``.
- a future global limiter (control plane or a shared store) implements the same
  protocol without a network round trip per request: it leases tokens in batches in the
  background and serves ``take`` from its local share (the Doorman / Envoy quota-lease
  pattern). ``take`` is synchronous on purpose: no request waits on the network for a
  rate-limit answer.

Neighbours: :mod:`.shedding` drops by priority under overload; this module enforces a
contract on a client's rate whatever the load.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from msgspec import Meta

from meshproxy.resilience.events import Clock
from meshproxy.schema import Frozen

KeyKind = Literal["none", "client_address", "header"]
REASON = "rate_limited"
"""The ``x-mesh-reason`` of a refused request (429 by default)."""


class RateLimitConfig(Frozen, kw_only=True):
    """A token bucket for one route. It applies where the route is: on a sidecar's
    inbound listener it protects the local app from its callers; on an outbound route
    (and so in a TrafficPolicy, which callers' sidecars apply) it keeps each caller
    within the upstream's contract."""

    rate: Annotated[float, Meta(gt=0, le=1e7)]
    """Tokens added per second: the sustained requests/s allowed per key."""
    burst: Annotated[int, Meta(ge=1, le=10**9)] | None = None
    """Bucket size: requests admitted at once after a quiet spell. Default: one second's
    worth of ``rate`` (at least 1), the usual choice when nothing better is known."""
    key: KeyKind = "none"
    """What separates buckets: one for the route, one per client address, one per value
    of ``header``."""
    header: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    """Header whose value keys the bucket (only with ``key: header``)."""
    backend: Literal["local", "shared"] = "shared"
    """``shared``: one limit for all worker processes (what users expect of "rate");
    ``local``: per process (cheaper, N workers admit N x rate)."""
    max_keys: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    """Distinct keys remembered; beyond it the least recently used bucket is forgotten
    (a forgotten bucket comes back full, which is what an idle bucket is anyway)."""
    status: Annotated[int, Meta(ge=400, le=599)] = 429
    """Status of the refusal (429 Too Many Requests)."""

    def __post_init__(self) -> None:
        if self.key == "header" and not self.header:
            raise ValueError("key 'header' needs 'header' (the header name)")
        if self.key != "header" and self.header is not None:
            raise ValueError(f"'header' is only used with key 'header', not {self.key!r}")

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate))


class BucketBackend(Protocol):
    """Where buckets live. ``take`` refills the bucket ``key`` to ``now`` (capped at
    ``burst``), takes ``cost`` tokens if it holds that many, and returns whether it did
    and the tokens left. Must be O(1) and never block on the network."""

    def take(self, key: bytes, now: float, rate: float, burst: float,
             cost: float = 1.0) -> tuple[bool, float]: ...


def refill_and_take(tokens: float, last: float, now: float, rate: float, burst: float,
                    cost: float) -> tuple[bool, float, float]:
    """The bucket arithmetic every backend shares: (admitted, tokens after, new last).
    A negative ``cost`` gives tokens back (never above ``burst``)."""
    if now > last:
        tokens = min(burst, tokens + (now - last) * rate)
        last = now
    if tokens >= cost:
        return True, min(burst, tokens - cost), last
    return False, tokens, last


class LocalBackend:
    """Buckets in a dict, in this process only; least recently used forgotten past
    ``max_keys``."""

    def __init__(self, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def take(self, key: bytes, now: float, rate: float, burst: float,
             cost: float = 1.0) -> tuple[bool, float]:
        b = self._buckets.get(key)
        if b is None:
            b = self.bucket(key, burst, now)
        else:
            self._buckets.move_to_end(key)
        ok, b[0], b[1] = refill_and_take(b[0], b[1], now, rate, burst, cost)
        return ok, b[0]

    def bucket(self, key: bytes, burst: float, now: float) -> list[float]:
        """The ``[tokens, last]`` list of ``key`` (a full bucket when new), for a caller
        that refills and takes on it directly with :func:`refill_and_take`."""
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            b = self._buckets[key] = [float(burst), now]
        return b

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer for one request, and the headers that say it."""

    allowed: bool
    limit: int          # bucket size
    remaining: int      # whole tokens left
    reset: int          # seconds until the bucket is full again
    retry_after: int    # seconds until one token is there (0 when allowed)
    status: int

    def headers(self) -> list[tuple[str, str]]:
        h = [("RateLimit-Limit", str(self.limit)),
             ("RateLimit-Remaining", str(self.remaining)),
             ("RateLimit-Reset", str(self.reset))]
        if not self.allowed:
            h.append(("Retry-After", str(self.retry_after)))
        return h


class RateLimiter:
    """The rate limit of one route (not a concurrency limit: it counts arrivals, not
    requests in flight)."""

    def __init__(self, route: str, config: RateLimitConfig, *, backend: BucketBackend,
                 clock: Clock) -> None:
        self.route = route
        self.config = config
        self.header_name = config.header.lower() if config.header else None
        self._backend = backend
        self._clock = clock
        self._prefix = route.encode() + b"\x00"
        self._capacity = float(config.capacity)
        self.admitted_total = 0
        self.limited_total = 0
        #: A route-wide bucket in this process (key "none", local backend) is the usual
        #: case and is held here, the very list the backend keeps under the route's key
        #: (so a limiter rebuilt by a reload continues its bucket): the hot path then
        #: refills and takes inline, without the key and the backend's LRU bookkeeping.
        self._inline: list[float] | None = None
        if config.key == "none" and isinstance(backend, LocalBackend):
            self._inline = backend.bucket(self._prefix, self._capacity, clock())

    def key(self, *, client_address: str | None = None,
            header_value: str | bytes | None = None) -> bytes:
        kind = self.config.key
        if kind == "none":
            return self._prefix
        value = client_address if kind == "client_address" else header_value
        if value is None:
            return self._prefix + b"\x00"   # one shared bucket for "not given"
        return self._prefix + (value if isinstance(value, bytes) else value.encode())

    def check(self, *, client_address: str | None = None,
              header_value: str | bytes | None = None, now: float | None = None,
              cost: float = 1.0) -> RateDecision:
        """Take a token for one request. The engine passes the client address and, for a
        header-keyed limit, the value of :attr:`header_name` (None when absent)."""
        now = self._clock() if now is None else now
        rate, cap = self.config.rate, self._capacity
        ok, left = self._backend.take(self.key(client_address=client_address,
                                               header_value=header_value),
                                      now, rate, cap, cost)
        if ok:
            self.admitted_total += 1
            retry = 0
        else:
            self.limited_total += 1
            retry = max(1, math.ceil((cost - left) / rate))
        return RateDecision(ok, int(cap), int(left), math.ceil((cap - left) / rate), retry,
                            200 if ok else self.config.status)

    def refusal(self, now: float | None = None, *, client_address: str | None = None,
                header_value: str | bytes | None = None,
                key: bytes | None = None) -> RateDecision | None:
        """The hot path's form of :meth:`check`: None when admitted (no decision object
        is built), the refusal's decision (for its status and headers) otherwise.
        ``key``: the bucket's key when the caller has it already (see :meth:`key`)."""
        now = self._clock() if now is None else now
        b = self._inline
        if b is not None:
            ok, b[0], b[1] = refill_and_take(b[0], b[1], now, self.config.rate,
                                             self._capacity, 1.0)
            left = b[0]
        else:
            if key is None:
                key = self.key(client_address=client_address, header_value=header_value)
            ok, left = self._backend.take(key, now, self.config.rate, self._capacity, 1.0)
        if ok:
            self.admitted_total += 1
            return None
        self.limited_total += 1
        rate, cap = self.config.rate, self._capacity
        return RateDecision(False, int(cap), int(left), math.ceil((cap - left) / rate),
                            max(1, math.ceil((1.0 - left) / rate)), self.config.status)

    def refund(self, key: bytes | None = None, now: float | None = None) -> None:
        """Give back the token of an admitted request that is about to be admitted again
        (the layer stack retrying what the fused path admitted: one request, one token).
        ``key``: its bucket's key (:meth:`key`; None for a limit keyed by nothing)."""
        b = self._inline
        if b is not None:
            b[0] = min(self._capacity, b[0] + 1.0)
        else:
            now = self._clock() if now is None else now
            self._backend.take(self._prefix if key is None else key, now, self.config.rate,
                               self._capacity, -1.0)
        self.admitted_total -= 1  # the admission is counted once, when made again

    def __repr__(self) -> str:
        c = self.config
        return (f"<RateLimiter {self.route} {c.rate:g}/s burst {c.capacity} by {c.key} "
                f"admitted={self.admitted_total} limited={self.limited_total}>")
