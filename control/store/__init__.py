"""The store: the only persistence of the control plane, used by the API server alone.

``base`` defines the interface (as Kubernetes has over etcd); ``sqlite`` is the embedded
default and ``consul`` the backend for clusters that outgrow one machine. ``open_store``
picks one from a URL (``sqlite:///path/to/file.db``, ``consul://host:port/prefix``).
"""

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
]
