"""A request head while it is parsed, and the request id the proxy adds.

:class:`RequestHead` is what the downstream protocol's parser callbacks collect for
one request (:mod:`meshproxy.http.server`): the headers to forward (with their
lower-cased names), the framing facts (Content-Length, chunked), the Connection
tokens, Host, Upgrade, Expect, and X-Forwarded-For / X-Request-Id as received.
:func:`request_id` makes the X-Request-Id of requests that arrive without one.
"""

from __future__ import annotations

import itertools
import random
from typing import Final

#: Request headers the proxy interprets besides Host (which ``on_header`` reads in every
#: request before consulting this set); the rest pass through untouched.
SPECIAL_HEADERS: Final = frozenset({
    b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", b"te", b"keep-alive",
    b"proxy-connection", b"trailer", b"proxy-authorization", b"proxy-authenticate",
    b"http2-settings"})
#: Connection tokens that name no end-to-end header (nothing extra to strip).
STANDARD_CONN_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"te",
                                  b"http2-settings"})


def _id_prefix() -> bytes:
    h = b"%032x" % ((random.getrandbits(128) & ~(0xF000 << 64 | 0xC << 60)) | 0x4000 << 64
                    | 0x8 << 60)
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], b""))


_ID_PREFIX: Final = _id_prefix()  # 74 random bits per process (re-drawn in each worker)
#: The per-process sequence (a C iterator: no global rebound per request).
_IDS: Final = itertools.count(1)


def request_id() -> bytes:
    """An X-Request-Id in UUID version 4 form: a random per-process prefix and a
    48-bit counter. Unique within the process by construction and across processes
    by the prefix; no syscall and no 128-bit random number per request."""
    return _ID_PREFIX + b"%012x" % (next(_IDS) & 0xFFFFFFFFFFFF)


class RequestHead:
    """A request head being parsed: what the callbacks collect."""

    __slots__ = ("chunked", "cl", "conn_tokens", "expect", "headers", "host", "lowered",
                 "rid", "size", "start", "upgrade", "url", "xff")

    def __init__(self, start: float) -> None:
        self.start = start
        self.url = b""
        self.size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.lowered: list[bytes] = []
        self.cl: int | None = None
        self.chunked = False
        self.conn_tokens: frozenset[bytes] | None = None
        self.host: bytes | None = None
        self.upgrade: bytes | None = None
        self.expect = False
        self.xff: bytes | None = None
        self.rid = False
