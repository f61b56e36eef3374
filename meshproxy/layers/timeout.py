"""The route timeout: the response head must arrive within ``timeout`` of dispatch.

It spans everything below it in the stack: waiting for a pool connection, connecting
and every attempt a retry layer makes (as Envoy's route timeout does). It tightens
``Exchange.deadline`` so that inner layers (a per-try timeout, deadline propagation)
can see the time left. One timer handle that cancels the request's task, no extra
task (``asyncio.timeout`` does the same with more machinery per request). Once the
head has arrived the body streams under the cluster's stream idle timeout.
"""

from __future__ import annotations

import asyncio

from meshproxy.errors import UpstreamTimeout
from meshproxy.http.message import Exchange, Response
from meshproxy.layers.base import Handler


class _Expiry:
    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


class RouteTimeout:
    """Fail with 504 ``route_timeout`` when the inner handler takes too long."""

    __slots__ = ("inner", "timeout")

    def __init__(self, inner: Handler, *, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout

    async def __call__(self, ex: Exchange) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if deadline < ex.deadline:
            ex.deadline = deadline
        task = asyncio.current_task()
        assert task is not None
        expiry = _Expiry(task)
        handle = loop.call_at(ex.deadline, expiry)
        try:
            return await self.inner(ex)
        except asyncio.CancelledError:
            if not expiry.fired:
                raise
            task.uncancel()
            raise UpstreamTimeout(f"no response within {self.timeout}s",
                                  reason="route_timeout") from None
        finally:
            handle.cancel()
