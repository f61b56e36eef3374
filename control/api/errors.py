"""API errors as Kubernetes ``Status`` bodies.

Every refusal the API server makes is an :class:`ApiError` raised anywhere below the
handlers and turned into one JSON ``Status`` response by the error middleware in
``server.py``: the HTTP code, a machine-readable ``reason`` (``NotFound``, ``Conflict``,
``Invalid``...), a human message, and ``details`` naming the object and, for validation
errors, each offending field (``details.causes[].field``), exactly as kube-apiserver
does, so standard clients show the right message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ApiError(Exception):
    """A refused request: rendered as a ``Status`` with ``code`` as the HTTP status."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The ``Status`` object for this error."""
        return status_body(self.code, self.reason, self.message, details=self.details)


def status_body(code: int, reason: str, message: str, *,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details:
        body["details"] = details
    return body


def _details(name: str | None, group: str, plural: str, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": plural}
    if name:
        d["name"] = name
    if group:
        d["group"] = group
    d.update(extra)
    return d


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, name: str, group: str = "") -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(plural, group)} "{name}" not found',
                    details=_details(name, group, plural))


def already_exists(plural: str, name: str, group: str = "") -> ApiError:
    return ApiError(409, "AlreadyExists",
                    f'{_qualified(plural, group)} "{name}" already exists',
                    details=_details(name, group, plural))


def conflict(plural: str, name: str, group: str = "", why: str = "") -> ApiError:
    why = why or ("the object has been modified; please apply your changes to the "
                  "latest version and try again")
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {_qualified(plural, group)} '
                    f'"{name}": {why}', details=_details(name, group, plural))


def invalid(kind: str, name: str, group: str, causes: Iterable[dict[str, str]]) -> ApiError:
    causes = list(causes)
    qualified = f"{kind}.{group}" if group else kind
    joined = ", ".join(c["message"] for c in causes)
    msg = f'{qualified} "{name}" is invalid: ' + (f"[{joined}]" if len(causes) > 1 else joined)
    return ApiError(422, "Invalid", msg,
                    details={"name": name, "group": group, "kind": kind, "causes": causes})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(content_type: str, allowed: Iterable[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type or '(none)'}"
                    f"; accepted: {', '.join(allowed)}")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "RequestEntityTooLarge",
                    f"the request body is larger than the limit of {limit} bytes")


def unauthorized(message: str = "Unauthorized") -> ApiError:
    return ApiError(401, "Unauthorized", message,
                    headers={"WWW-Authenticate": 'Bearer realm="mesh"'})


def forbidden(user: str, verb: str, plural: str, group: str, *, namespace: str | None = None,
              name: str | None = None, why: str = "") -> ApiError:
    what = f'{_qualified(plural, group)}{f" {name!r}" if name else ""}'
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    msg = f'{what} is forbidden: User "{user}" cannot {verb} resource "{plural}"'
    msg += f' in API group "{group}"{scope}'
    if why:
        msg += f": {why}"
    return ApiError(403, "Forbidden", msg, details=_details(name, group, plural))


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    f"the server does not allow the method {method} on {path}")


def too_many_requests(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(429, "TooManyRequests", message,
                    details={"retryAfterSeconds": retry_after},
                    headers={"Retry-After": str(retry_after)})
