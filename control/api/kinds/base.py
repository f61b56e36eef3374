"""The per-kind seam: how one kind is defaulted and validated (Kubernetes' "strategy").

A :class:`Strategy` knows one kind's rules and nothing about HTTP or the store: it fills
defaults, validates a whole object (``validate``), checks what an update may change
(``validate_update``), says what ``status`` a new object starts with and how long a
delete waits before the object goes (``deletion_grace``). The handlers
call it on every write, so an object in the store has always passed it. Modules beside
this one hold the strategies per API group; ``kinds/__init__.py`` maps kinds to them.
"""

from __future__ import annotations

from typing import Any

from control.api.validation import FieldErrors

META_KEYS = ("apiVersion", "kind", "metadata", "status")


class Strategy:
    """Rules of one kind. The defaults here suit a kind with ``spec`` and ``status``."""

    #: "label" for kinds whose names become DNS labels (Namespace, Service)
    name_rule = "subdomain"

    def default(self, obj: dict[str, Any]) -> None:
        """Fill defaults in place (before validation, as Kubernetes does)."""

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        """Check the whole object's spec (and other non-metadata fields)."""

    def validate_update(self, new: dict[str, Any], old: dict[str, Any],
                        errs: FieldErrors) -> None:
        """Check what an update changes (immutable fields)."""

    def validate_status(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        """Check a status written through the ``status`` subresource."""

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The status a newly created object starts with (None: no status field)."""
        return {}

    def deletion_grace(self, obj: dict[str, Any], requested: int | None) -> int:
        """Seconds a DELETE of ``obj`` leaves it in place (marked with a
        ``deletionTimestamp``) for someone to clean up first; 0 deletes at once.
        ``requested`` is the request's ``gracePeriodSeconds``. Kubernetes' graceful
        deletion: only kinds with a process to stop (Pods) override this."""
        return 0


def spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything a spec write owns: all but apiVersion, kind, metadata and status.

    For kinds with ``spec`` that is ``{"spec": ...}``; for Endpoints and Event it is
    their top-level data fields. ``generation`` is bumped when this part changes."""
    return {k: v for k, v in obj.items() if k not in META_KEYS}
