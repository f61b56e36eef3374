"""The store: the only persistence of the control plane, used by the API server alone.

``base`` defines the interface (as Kubernetes has over etcd); ``sqlite`` is the embedded
default and ``consul`` the backend for clusters that outgrow one machine; ``watch`` is
the in-process fan-out both use; ``migrate`` copies one store into another.
:func:`open_store` picks a backend from a URL:

- ``sqlite:///abs/path/to/file.db`` (``sqlite://relative/path.db`` is relative to the
  working directory)
- ``consul://host:port/prefix?token=...`` (``consuls://`` for HTTPS; the token may also
  come from ``CONSUL_HTTP_TOKEN``)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from control.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    KeyValue,
    NotFound,
    Store,
    StoreError,
)

__all__ = [
    "AlreadyExists",
    "Compacted",
    "Conflict",
    "Event",
    "KeyValue",
    "NotFound",
    "Store",
    "StoreError",
    "open_store",
]


async def open_store(url: str, **options: Any) -> Store:
    """Open the store named by ``url``; ``options`` go to the backend's ``open``
    (for example ``clock=`` or ``options=SqliteOptions(...)``). Raises ValueError for a
    URL it cannot use, saying why."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"store URL must look like sqlite:///path or consul://host:port/prefix,"
                         f" got {url!r}")
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from control.store.sqlite import SqliteStore

        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"sqlite store URL names no file: {url!r}")
        return await SqliteStore.open(path, **options)
    if parts.scheme in ("consul", "consuls"):
        from control.store.consul import ConsulStore

        return await ConsulStore.from_url(url, **options)
    raise ValueError(f"unknown store scheme {parts.scheme!r} in {url!r}"
                     " (expected sqlite or consul)")
