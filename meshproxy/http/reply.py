"""Local replies: responses the proxy makes itself (Envoy's "local reply").

Every one carries ``x-mesh-reason`` (added when the head is written, from
``Response.local_reason``) so a client, a log line and the
``meshproxy_local_replies_total{reason=...}`` metric all name the same cause.
"""

from __future__ import annotations

from typing import Final

from meshproxy.http.headers import STATUS_PHRASES
from meshproxy.http.message import Response

_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")


def local_reply(status: int, reason: str, *, headers: list[tuple[bytes, bytes]] | None = None,
                body: bytes | None = None) -> Response:
    """A small text response: the status phrase and the reason, unless ``body`` is given."""
    phrase = STATUS_PHRASES.get(status, b"Unknown")
    if body is None:
        body = phrase + b" (" + reason.encode() + b")\n"
    hdrs = [_TEXT] if headers is None else [_TEXT, *headers]
    return Response(status, hdrs, phrase=phrase, body=body, local_reason=reason)
