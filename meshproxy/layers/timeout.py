"""The route timeout: the response head must arrive within ``timeout`` of dispatch.

It spans everything below it in the stack: waiting for a pool connection, connecting
and every attempt a retry layer makes (as Envoy's route timeout does). It tightens
``Exchange.deadline`` so that inner layers (a per-try timeout, deadline propagation)
can see the time left. Runs on ``asyncio.timeout_at``: a timer handle, no extra task.
Once the head has arrived the body streams under the cluster's stream idle timeout.
"""

from __future__ import annotations

import asyncio

from meshproxy.errors import UpstreamTimeout
from meshproxy.http.message import Exchange, Response
from meshproxy.layers.base import Handler


class RouteTimeout:
    """Fail with 504 ``route_timeout`` when the inner handler takes too long."""

    __slots__ = ("inner", "timeout")

    def __init__(self, inner: Handler, *, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout

    async def __call__(self, ex: Exchange) -> Response:
        deadline = asyncio.get_running_loop().time() + self.timeout
        if deadline < ex.deadline:
            ex.deadline = deadline
        try:
            async with asyncio.timeout_at(ex.deadline):
                return await self.inner(ex)
        except TimeoutError:
            raise UpstreamTimeout(f"no response within {self.timeout}s",
                                  reason="route_timeout") from None
