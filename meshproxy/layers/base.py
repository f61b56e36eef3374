"""The layer interface: the seam every resilience concern plugs into.

A ``Handler`` is an async callable ``(Exchange) -> Response``. It either returns a
response (an upstream one whose body is still streaming, or a local reply) or raises a
:class:`~meshproxy.errors.ProxyError`; the rescue layer turns the latter into a local
reply. A ``Layer`` is any callable that wraps an inner handler into a new one; in
practice a class whose ``__init__(inner, *, settings...)`` keeps ``inner`` and whose
``__call__`` does its work around ``await self.inner(ex)``.

Rules for a layer:

- refuse with a ``ProxyError`` subclass (``Overloaded`` and friends), never by writing
  to the client: there is exactly one place that writes responses.
- a response it will not return (a retry replacing it) must be ``discard()``-ed so
  its upstream connection is released or closed.
- per-request state goes on the ``Exchange`` (``ex.values`` for anything new), never
  on the layer, which is shared by every request of the route.
- a concern that is not configured is not in the stack at all: zero cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meshproxy.http.message import Exchange, Response


class Handler(Protocol):
    async def __call__(self, ex: Exchange) -> Response: ...


#: Wraps an inner handler; ``functools.partial(SomeLayer, setting=...)`` is a Layer.
Layer = Callable[[Handler], Handler]
