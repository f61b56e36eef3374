"""Shared pieces of the config schema: the frozen base model and small value types.

Every concern's settings live in their own module of this package (``listeners``,
``clusters``, ``admin``, ``runtime``) and derive from :class:`Settings`, which is
:class:`meshproxy.schema.Frozen` (msgspec): frozen (a loaded config is an immutable
value that a reload swaps as a whole), unknown keys refused (a typo is an error, not a
silently ignored option). ``root`` assembles them into
:class:`~meshproxy.config.root.ProxyConfig` and ``load`` turns YAML into one.
"""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta

from meshproxy.schema import PATTERN_HINTS, Frozen

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class Settings(Frozen, kw_only=True):
    """Base of every config model: frozen, strict about unknown keys."""


#: A listener, route or cluster name; it becomes a Prometheus label value: 1-63
#: characters of letters, digits, '_', '.', '-', starting with a letter or digit.
Name = Annotated[str, Meta(pattern=NAME_RE.pattern)]
PATTERN_HINTS[NAME_RE.pattern] = (
    "not a valid name: 1-63 characters of letters, digits, '_', '.', '-', starting with "
    "a letter or digit (names are used as metric labels)")
#: A duration in seconds (floats allowed: 0.25 is 250 ms).
Seconds = Annotated[float, Meta(gt=0, le=86400 * 7)]
#: A size in bytes.
Bytes = Annotated[int, Meta(ge=1, le=1 << 40)]
#: A TCP port.
Port = Annotated[int, Meta(ge=0, le=65535)]


def split_host_port(text: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` into its parts; ValueError naming what is wrong."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if not rest.isdigit() or not 0 < int(rest) < 65536:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return host, int(rest)
