"""Traffic-management layers: deadline propagation, retries with a budget, hedging.

Each drives the policy objects of its module (:mod:`meshproxy.deadline`,
:mod:`meshproxy.retry`, :mod:`meshproxy.hedge`) around the handler below it; the
order is set in :mod:`meshproxy.stack`.

- :class:`DeadlineLayer` (outside the route timeout): reads the caller's remaining
  budget from ``x-mesh-timeout-ms``, tightens ``Exchange.deadline`` to it (the route
  timeout's timer then fires at the earlier of the two), answers 504
  ``deadline_expired`` at once when it is already spent, and asks
  :class:`~meshproxy.layers.forward.Forward` to send the time left with every attempt.
- :class:`RetryLayer`: :func:`~meshproxy.retry.run_with_retries` with the route's
  policy and budget; each attempt is the inner handler under the per-try timeout, the
  proxy's error tree mapped to retry outcomes; the body is retained for replay up to
  the policy's bound; ``limits.retries`` of the cluster (when configured) caps retries
  in flight.
- :class:`HedgeLayer`: :func:`~meshproxy.hedge.run_hedged` for idempotent requests
  without a body; each copy runs on a shallow copy of the exchange pinned to its
  endpoint, and the copies that lose are discarded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from meshproxy.balance.base import PickContext
from meshproxy.cluster import Cluster
from meshproxy.deadline import Deadline, DeadlineConfig, DeadlineHeaderError, parse_timeout_ms
from meshproxy.endpoint import Endpoint
from meshproxy.errors import (
    ConnectFailure,
    ConnectTimeout,
    DownstreamError,
    NoHealthyUpstream,
    ProxyError,
    UpstreamTimeout,
)
from meshproxy.hedge import HedgePolicy, run_hedged
from meshproxy.http.message import Exchange, Response
from meshproxy.layers.base import Handler
from meshproxy.layers.forward import pick_context
from meshproxy.resilience.concurrency import Limiter
from meshproxy.retry import (
    CONNECT_FAILURE,
    PER_TRY_TIMEOUT,
    RESET,
    Attempt,
    Outcome,
    RetryBudget,
    RetryPolicy,
    run_with_retries,
)

_NO_ENDPOINT = Endpoint("-", 1)  # stands for "no endpoint was picked" in an Attempt


class DeadlineLayer:
    """Honour the caller's deadline header and propagate the time left upstream."""

    __slots__ = ("config", "header", "inner")

    def __init__(self, inner: Handler, *, config: DeadlineConfig) -> None:
        self.inner = inner
        self.config = config
        self.header = config.header.encode()

    async def __call__(self, ex: Exchange) -> Response:
        cfg = self.config
        loop = asyncio.get_running_loop()
        now = loop.time()
        name = self.header
        if cfg.accept or cfg.propagate:
            values = [v for low, (_, v) in zip(ex.lowered, ex.headers, strict=True)
                      if low == name]
            if values:
                if cfg.accept:
                    try:
                        incoming = parse_timeout_ms(values, header=cfg.header)
                    except DeadlineHeaderError as e:
                        raise DownstreamError(400, "bad_deadline_header", str(e)) from None
                    deadline = Deadline.start(now, route_timeout_s=None, incoming_s=incoming)
                    if deadline is not None and deadline.expires_at < ex.deadline:
                        ex.deadline = deadline.expires_at
                if cfg.propagate:  # ours replaces the caller's, per attempt
                    keep = [i for i, low in enumerate(ex.lowered) if low != name]
                    ex.headers = [ex.headers[i] for i in keep]
                    ex.lowered = [ex.lowered[i] for i in keep]
        if ex.deadline - now < cfg.fail_fast_below_s:
            raise UpstreamTimeout("the caller's deadline has already passed",
                                  reason="deadline_expired")
        if cfg.propagate:
            if ex.values is None:
                ex.values = {}
            ex.values["deadline_header"] = name
        return await self.inner(ex)


def outcome_of(exc: ProxyError) -> Outcome:
    """The retry outcome of a failed attempt (see :mod:`meshproxy.retry`)."""
    if isinstance(exc, ConnectFailure | ConnectTimeout | NoHealthyUpstream):
        return CONNECT_FAILURE  # nothing reached an upstream: safe for any method
    if isinstance(exc, UpstreamTimeout):
        return PER_TRY_TIMEOUT
    return RESET


def _discard(value: object) -> None:
    if isinstance(value, Response):
        value.discard()


class RetryLayer:
    """Retry failed attempts within the route's budget (see the module docstring)."""

    __slots__ = ("budget", "inner", "limiter", "policy", "rng")

    def __init__(self, inner: Handler, *, policy: RetryPolicy, budget: RetryBudget,
                 limiter: Limiter | None = None, rng: random.Random | None = None) -> None:
        self.inner = inner
        self.policy = policy
        self.budget = budget
        self.limiter = limiter
        self.rng = rng or random.Random()

    async def __call__(self, ex: Exchange) -> Response:
        loop = asyncio.get_running_loop()
        if not ex.body.empty:
            ex.body.retain(self.policy.config.max_replay_body_bytes)
        if ex.values is None:
            ex.values = {}
        values = ex.values
        limiter = self.limiter

        async def attempt(tried: Sequence[Endpoint], timeout: float | None) -> Attempt:
            values["tried"] = tried
            ex.endpoint = None
            retrying = bool(tried) and limiter is not None
            if retrying and not limiter.try_acquire():  # type: ignore[union-attr]
                return Attempt(RESET, ProxyError("retry limit", reason="max_retries"),
                               _NO_ENDPOINT)
            try:
                if timeout is None:
                    resp = await self.inner(ex)
                else:
                    values["try_deadline"] = loop.time() + timeout
                    async with asyncio.timeout(timeout):
                        resp = await self.inner(ex)
                return Attempt(Outcome.response(resp.status), resp, ex.endpoint or _NO_ENDPOINT)
            except TimeoutError:
                return Attempt(PER_TRY_TIMEOUT,
                               UpstreamTimeout(f"no response within the per-try timeout "
                                               f"{timeout}s", reason="per_try_timeout"),
                               ex.endpoint or _NO_ENDPOINT)
            except ProxyError as e:
                return Attempt(outcome_of(e), e, ex.endpoint or _NO_ENDPOINT)
            finally:
                if retrying:
                    limiter.release()  # type: ignore[union-attr]

        deadline = Deadline(ex.deadline) if ex.deadline != float("inf") else None
        result = await run_with_retries(
            attempt, policy=self.policy, budget=self.budget, method=ex.method, rng=self.rng,
            deadline=deadline, now=loop.time, body_replayable=lambda: ex.body.replayable,
            discard=_discard)
        value = result.last.value
        if isinstance(value, ProxyError):
            raise value
        return value


class HedgeLayer:
    """Hedge idempotent, bodiless requests (see the module docstring)."""

    __slots__ = ("budget", "cluster", "inner", "policy")

    def __init__(self, inner: Handler, *, policy: HedgePolicy, budget: RetryBudget,
                 cluster: Cluster) -> None:
        self.inner = inner
        self.policy = policy
        self.budget = budget
        self.cluster = cluster

    async def __call__(self, ex: Exchange) -> Response:
        if not ex.body.empty or not self.policy.allows(ex.method, 0):
            return await self.inner(ex)
        loop = asyncio.get_running_loop()
        cluster = self.cluster
        ctx: PickContext = pick_context(ex, cluster, loop.time())
        base_exclude = tuple(ex.values.get("tried", ())) if ex.values else ()
        results: list[Response] = []

        def pick(tried: Sequence[Endpoint]) -> Endpoint | None:
            ctx.now = loop.time()
            return cluster.balancer.pick(ctx, (*base_exclude, *tried))

        async def send(ep: Endpoint) -> Response:
            sub = ex.copy()
            sub.values = {**(ex.values or {}), "endpoint": ep}
            resp = await self.inner(sub)
            results.append(resp)
            return resp

        try:
            resp, ep = await run_hedged(send, pick, policy=self.policy, budget=self.budget,
                                        method=ex.method, clock=loop.time,
                                        succeeded=lambda r: r.status < 500)
        except LookupError:
            raise NoHealthyUpstream(f"cluster {cluster.name} has no endpoint") from None
        for other in results:
            if other is not resp:
                other.discard()
        ex.endpoint = ep
        return resp
