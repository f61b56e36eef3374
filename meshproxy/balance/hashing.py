"""Hashing for the consistent-hash balancers, and the request's hash key.

``hash64`` is the one hash function of ``ring_hash`` and ``maglev``: BLAKE2b cut to 64
bits. Python's ``hash()`` would be faster but is salted per process, and every worker
(and every sidecar) must send the same key to the same endpoint.

``request_hash_key`` is what the route calls per request to fill
``PickContext.hash_key`` from its :class:`~meshproxy.balance.config.HashOn` setting:

- ``header``: the value of the first header of that name (case-insensitive);
- ``cookie``: the value of the named cookie in the ``Cookie`` header(s);
- ``client_address``: the downstream peer's IP address (not its port, which changes
  with every connection).

It returns None when the header or cookie is absent; the balancer then picks a random
candidate (Envoy's behaviour), so such requests still succeed but are not sticky.
Headers are taken as the raw ``(name, value)`` byte pairs the httptools parser gives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from meshproxy.balance.config import HashOn

if TYPE_CHECKING:
    from meshproxy.endpoint import Endpoint


def hash64(data: bytes, *, salt: bytes = b"") -> int:
    """A stable 64-bit hash of ``data``; ``salt`` (up to 16 bytes) gives independent ones."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=salt).digest(), "big")


def _cookie_value(cookie_header: bytes, name: bytes) -> bytes | None:
    for part in cookie_header.split(b";"):
        key, sep, value = part.strip().partition(b"=")
        if sep and key == name:
            value = value.strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]  # RFC 6265 allows a quoted cookie value
            return value
    return None


def request_hash_key(hash_on: HashOn, *, headers: Iterable[tuple[bytes, bytes]],
                     client_host: str) -> bytes | None:
    """The hash key of one request under ``hash_on``, or None when it has none."""
    if hash_on.source == "client_address":
        return client_host.encode() if client_host else None
    assert hash_on.name is not None  # the config model requires it for header/cookie
    if hash_on.source == "header":
        wanted = hash_on.name.lower().encode()
        for name, value in headers:
            if name.lower() == wanted:
                return value.strip()
        return None
    cookie_name = hash_on.name.encode()
    for name, value in headers:
        if name.lower() == b"cookie":
            found = _cookie_value(value, cookie_name)
            if found is not None:
                return found
    return None


def first_allowed(owners: Sequence[Endpoint], start: int,
                  candidates: Collection[Endpoint]) -> Endpoint:
    """The owner at ``start`` of a ring or lookup table, or the next one clockwise that
    is a candidate (unhealthy, ejected or excluded owners are skipped), so a key moves
    only when its own endpoint cannot take it. Shared by ring hash and Maglev."""
    size = len(owners)
    allowed = set(candidates)
    for step in range(size):
        owner = owners[(start + step) % size]
        if owner in allowed:
            return owner
    raise AssertionError("every candidate owns entries of the table")  # pragma: no cover
