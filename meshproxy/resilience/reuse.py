"""Rebuild runtime objects from a new config, keeping the ones whose config did not change.

A reload builds a whole new config (see the engine's reload path) but must not reset a
breaker that is open, forget an endpoint's ejection history or refill a drained rate
limit bucket just because an unrelated route was edited. Every runtime object here keeps
the frozen config it was built from in ``.config``; config models are frozen msgspec
Structs, so equality is by value. :func:`rebuild` keeps an old object when its key
survives and its config is equal, resizes it in place when it offers ``reconfigure`` and
only its sizes changed, and builds a fresh one otherwise.

Neighbours: used by :mod:`.degrade` (the switch registry) and meant for the engine's
cluster and route tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar


class Configured(Protocol):
    @property
    def config(self) -> Any: ...


K = TypeVar("K")
C = TypeVar("C")
T = TypeVar("T", bound=Configured)


def rebuild(old: Mapping[K, T], new: Mapping[K, C], build: Callable[[K, C], T]) -> dict[K, T]:
    """A new table for ``new``'s keys: old objects reused where the config is equal or
    the object accepts the new config through ``reconfigure(config) -> bool`` (True: it
    adapted in place and keeps its state), fresh ones from ``build`` otherwise. Keys not in
    ``new`` are dropped."""
    out: dict[K, T] = {}
    for key, cfg in new.items():
        prev = old.get(key)
        if prev is not None:
            if prev.config == cfg:
                out[key] = prev
                continue
            reconfigure = getattr(prev, "reconfigure", None)
            if reconfigure is not None and reconfigure(cfg):
                out[key] = prev
                continue
        out[key] = build(key, cfg)
    return out
