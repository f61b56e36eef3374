"""Header rules: which headers are hop-by-hop, and serialising message heads.

Heads are kept as lists of ``(name, value)`` byte pairs exactly as received (original
case, order and duplicates), never as dicts: forwarding is then a filter and a join,
with no per-header normalisation beyond one ``lower()`` while parsing.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection and are never forwarded:
``Connection`` and the names it lists, ``Keep-Alive``, ``Proxy-Connection``, ``TE``,
``Trailer``, ``Transfer-Encoding``, ``Upgrade`` (re-added for a WebSocket upgrade),
``Proxy-Authorization``/``Proxy-Authenticate``. ``Content-Length`` is dropped too and
re-added by the framing code, which knows how the body is actually sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    b"content-length", b"http2-settings", b"expect",
})

Headers = list[tuple[bytes, bytes]]

STATUS_PHRASES: Final[dict[int, bytes]] = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
    202: b"Accepted", 204: b"No Content", 206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
    413: b"Content Too Large", 414: b"URI Too Long", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


#: Connection header values already parsed (bounded; read directly on hot paths).
TOKENS_SEEN: Final[dict[bytes, frozenset[bytes]]] = {}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-cased tokens of a ``Connection`` header value (the few values real
    peers send, ``keep-alive``, ``close``, ``Upgrade``, are parsed once and cached)."""
    tokens = TOKENS_SEEN.get(value)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(TOKENS_SEEN) < 64:
            TOKENS_SEEN[value] = tokens
    return tokens


def first_value(headers: Headers, lowered: list[bytes], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None; ``lowered`` holds the
    lower-cased names parallel to ``headers``."""
    for low, (_, value) in zip(lowered, headers, strict=True):
        if low == name:
            return value
    return None


def filter_end_to_end(headers: Headers, lowered: list[bytes], extra: set[bytes] | None) -> Headers:
    """The headers to forward: hop-by-hop and those named by ``Connection`` removed.

    ``lowered`` holds the lower-cased names parallel to ``headers`` (computed once by
    the parser); ``extra`` is the set of names listed in ``Connection``.
    """
    if extra:
        return [h for h, low in zip(headers, lowered, strict=True)
                if low not in HOP_BY_HOP and low not in extra]
    return [h for h, low in zip(headers, lowered, strict=True) if low not in HOP_BY_HOP]


def serialize(first_line: bytes, headers: Headers, extra: Sequence[bytes]) -> bytes:
    """``first_line`` CRLF, each ``name: value`` CRLF, each preformatted ``extra`` line,
    then the blank line. One ``%`` per field and one join (compiled, the loop is C;
    ``map`` over ``b": ".join`` and list unpacking cost twice as much per head)."""
    parts = [first_line]
    for name, value in headers:
        parts.append(b"%s: %s" % (name, value))
    parts.extend(extra)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)
