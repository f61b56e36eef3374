"""The rescue layer: the one place where failures become responses.

Every :class:`~meshproxy.errors.ProxyError` raised below (by the forward handler, the
pool, the timeout, or any protective layer added later) is turned into a local reply
with its status and ``x-mesh-reason``. Anything else is a bug: it is logged with its
traceback and answered 500 ``internal_error`` rather than leaving the client hanging.
"""

from __future__ import annotations

import logging

from meshproxy.errors import ProxyError
from meshproxy.http.message import Exchange, Response
from meshproxy.http.reply import local_reply
from meshproxy.layers.base import Handler

log = logging.getLogger(__name__)


class Rescue:
    """Map the error tree to local replies."""

    __slots__ = ("inner",)

    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def __call__(self, ex: Exchange) -> Response:
        try:
            return await self.inner(ex)
        except ProxyError as e:
            # a refusal may say more (a 429's Retry-After and RateLimit-* headers)
            return local_reply(e.status, e.reason, headers=getattr(e, "headers", None))
        except Exception:
            log.exception("unexpected error on %r", ex)
            return local_reply(500, "internal_error")
