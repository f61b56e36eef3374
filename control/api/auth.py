"""Who is asking (bearer tokens) and what they may do (four fixed roles).

Authentication: ``Authorization: Bearer <token>`` looked up in the tokens the server
loaded: a tokens file (CSV lines ``token,user,roles`` with roles separated by ``;``,
like kube-apiserver's static token file) plus the admin token generated once into the
data directory at first start. Tokens are kept only as SHA-256 digests, so lookups do
not compare secrets byte by byte. No or an unknown token is a 401.

Authorization: roles, each a fixed rule set (no RBAC objects):

- ``admin``: everything;
- ``viewer``: get, list and watch of every resource (and status/scale reads);
- ``proxy``: get, list, watch of Services, Endpoints and TrafficPolicies (the sidecars);
- ``node``: the node agent of node ``N`` (user ``system:node:N`` or ``N``): its own Node
  and its status, the Pods bound to it (list/watch only with ``fieldSelector
  spec.nodeName=N``) and their status, creating Events.

Rules that need the object (is this pod bound to me?) are checked by
:meth:`Authorizer.check_object` once the handler has read it. Everything else is a 403
naming user, verb and resource. Health endpoints need no token; discovery and
``/version`` need any valid token; ``/metrics`` needs admin or viewer.
"""

from __future__ import annotations

import csv
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from control.api.errors import ApiError, forbidden, unauthorized
from control.api.resources import Resource

Role = Literal["admin", "node", "proxy", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "node", "proxy", "viewer")
READ_VERBS = frozenset({"get", "list", "watch"})
PROXY_READS = frozenset({"services", "endpoints", "trafficpolicies"})
ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    roles: frozenset[str]

    @property
    def node_name(self) -> str:
        return self.name.removeprefix("system:node:")


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a request does, as the authorizer sees it."""

    verb: str
    resource: Resource
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    field_selector: Any = None  # selectors.FieldSelector for list/watch


# The authenticated user of a request (typed request keys need aiohttp >= 3.12; older
# versions take a plain string key without the warning newer ones give for it).
USER: Any = web.RequestKey("user", User) if hasattr(web, "RequestKey") else "user"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens_file(path: Path) -> dict[str, User]:
    """Parse a tokens file; ValueError names the line and what is wrong with it."""
    users: dict[str, User] = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{lineno}: expected 'token,user,roles', got "
                                 f"{len(row)} fields")
            token, user, roles_text = (c.strip() for c in row)
            roles = frozenset(r.strip() for r in roles_text.split(";") if r.strip())
            if len(token) < 16:
                raise ValueError(f"{path}:{lineno}: token is too short (at least 16 "
                                 f"characters)")
            if not user:
                raise ValueError(f"{path}:{lineno}: user is empty")
            unknown = roles - set(ROLES)
            if not roles or unknown:
                raise ValueError(f"{path}:{lineno}: roles must be some of {', '.join(ROLES)}"
                                 f" separated by ';', got {roles_text!r}")
            if _digest(token) in users:
                raise ValueError(f"{path}:{lineno}: duplicate token")
            users[_digest(token)] = User(user, roles)
    return users


def ensure_admin_token(data_dir: Path) -> tuple[str, bool]:
    """The admin token in ``data_dir`` (created 0600 on first call); True if new."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{path} does not hold a usable token; delete it to "
                             f"generate a new one")
        return token, False
    token = secrets.token_hex(32)  # hex: never starts with "-", which CLIs would read as a flag
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


class Authenticator:
    def __init__(self, users: dict[str, User]) -> None:
        self._users = users  # sha256(token) -> user

    @classmethod
    def from_tokens(cls, tokens: dict[str, User]) -> Authenticator:
        """From plain ``token -> user`` pairs (tests, the admin token)."""
        return cls({_digest(t): u for t, u in tokens.items()})

    def add(self, token: str, user: User) -> None:
        self._users[_digest(token)] = user

    def authenticate(self, header: str | None) -> User:
        if not header:
            raise unauthorized("no bearer token given (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        user = self._users.get(_digest(token.strip()))
        if user is None:
            raise unauthorized("the bearer token is not valid")
        return user


class Authorizer:
    """The role rules of the module docstring."""

    def check(self, user: User, a: Attributes) -> None:
        if "admin" in user.roles:
            return
        plural = a.resource.plural
        full = f"{plural}/{a.subresource}" if a.subresource else plural
        if "viewer" in user.roles and a.verb in READ_VERBS:
            return
        if "proxy" in user.roles and a.verb in READ_VERBS and plural in PROXY_READS \
                and not a.subresource:
            return
        if "node" in user.roles and self._node_allows(user, a):
            return
        raise forbidden(user.name, a.verb, full, a.resource.group, namespace=a.namespace,
                        name=a.name, why=f"roles {sorted(user.roles)} do not allow it")

    @staticmethod
    def _node_allows(user: User, a: Attributes) -> bool:
        node = user.node_name
        plural = a.resource.plural
        if plural == "events" and a.verb in ("create", "get", "list", "watch"):
            return True
        if plural == "nodes":
            if a.verb in ("list", "watch"):
                return a.field_selector is not None and \
                    a.field_selector.required_value("metadata.name") == node
            return a.name == node and a.subresource in (None, "status") and \
                a.verb in ("get", "create", "update", "patch", "delete")
        if plural == "pods":
            if a.verb in ("list", "watch"):
                return a.field_selector is not None and \
                    a.field_selector.required_value("spec.nodeName") == node
            # Whether the pod is bound to this node is checked on the object itself.
            return (a.subresource is None and a.verb in ("get", "delete")) or \
                (a.subresource == "status" and a.verb in ("get", "update", "patch"))
        return False

    def check_object(self, user: User, a: Attributes, obj: dict[str, Any]) -> None:
        """Rules that depend on the stored object (node role and pods)."""
        if "admin" in user.roles or ("viewer" in user.roles and a.verb in READ_VERBS):
            return
        if a.resource.plural == "pods" and "node" in user.roles:
            bound = (obj.get("spec") or {}).get("nodeName")
            if bound != user.node_name:
                raise forbidden(user.name, a.verb, "pods" + (f"/{a.subresource}"
                                                             if a.subresource else ""),
                                "", namespace=a.namespace, name=a.name,
                                why=f"the pod is not bound to node {user.node_name!r}")


def require_any(user: User, roles: tuple[Role, ...], what: str) -> None:
    """Non-resource paths (``/metrics``): one of ``roles`` or 403."""
    if not user.roles & set(roles):
        raise ApiError(403, "Forbidden", f'User "{user.name}" cannot get path {what}')
