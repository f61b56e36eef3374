"""Typed errors for API clients, built from the server's ``Status`` bodies.

Every refusal of a Kubernetes-style API server carries a ``Status`` (``code``, ``reason``,
``message``, ``details.causes``). :func:`from_status` maps it once, at the client's
boundary, onto a small tree so callers catch what they mean:

- :class:`NotFound` (404), :class:`AlreadyExists` (409 ``AlreadyExists``),
  :class:`Conflict` (409 otherwise: stale resourceVersion), :class:`Gone` (410 or
  reason ``Expired``/``Gone``: a watch asked for a compacted revision, relist),
  :class:`Unauthorized` (401), :class:`Forbidden` (403), :class:`Invalid` (422, with
  ``causes``), :class:`BadRequest` (400), :class:`TooLarge` (413),
  :class:`UnsupportedMediaType` (415), :class:`TooManyRequests` (429),
  :class:`ServerError` (5xx);
- :class:`ConnectionFailed`: the server could not be reached or the connection broke
  (no ``Status`` at all). Both it and :class:`ApiError` derive from :class:`ClientError`.

Neighbours: :mod:`control.client.rest` raises these.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Anything an API call can fail with."""


class ConnectionFailed(ClientError):
    """The server did not answer (refused, reset, timed out, TLS failure)."""


class ApiError(ClientError):
    """The server answered with an error ``Status``."""

    code: int = 0

    def __init__(self, code: int, reason: str, message: str, *,
                 details: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.status = status or {}

    @property
    def causes(self) -> list[dict[str, Any]]:
        """Per-field causes (``{"field": ..., "message": ..., "reason": ...}``)."""
        return list(self.details.get("causes") or [])

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.reason!r}, {self.message!r})"


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """A write lost a race: the object changed since it was read. Re-read and retry."""


class AlreadyExists(ApiError):
    pass


class Gone(ApiError):
    """The requested resourceVersion is too old (compacted): list again."""


class TooLarge(ApiError):
    pass


class UnsupportedMediaType(ApiError):
    pass


class Invalid(ApiError):
    """The object failed validation; :attr:`causes` names each field."""


class TooManyRequests(ApiError):
    pass


class ServerError(ApiError):
    pass


_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 410: Gone,
    413: TooLarge, 415: UnsupportedMediaType, 422: Invalid, 429: TooManyRequests,
}


def from_status(code: int, body: Any, *, fallback_message: str = "") -> ApiError:
    """The typed error for an HTTP error ``code`` and its decoded body (a ``Status`` when
    the server follows the conventions; anything else is kept as the message)."""
    if isinstance(body, dict) and body.get("kind") == "Status":
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or fallback_message or f"HTTP {code}")
        details = body.get("details") if isinstance(body.get("details"), dict) else None
        code = int(body.get("code") or code)
        status = body
    else:
        reason = ""
        message = fallback_message or (body if isinstance(body, str) and body else f"HTTP {code}")
        details = None
        status = None
    if code == 409:
        cls: type[ApiError] = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif reason in ("Expired", "Gone"):
        cls = Gone
    elif code >= 500:
        cls = ServerError
    else:
        cls = _BY_CODE.get(code, ApiError)
    return cls(code, reason or cls.__name__, message, details=details, status=status)
