"""Helpers of the API server tests: starting a server, a JSON client, sample objects.

``start_server`` runs :class:`control.api.ApiServer` in the test's event loop on a free
port (plain HTTP unless a test asks for TLS) over ``sqlite:///<data_dir>/store.db``,
opened through ``open_store``; besides the generated admin token it knows one token per
role (``TOKENS``). :class:`Api` is a small JSON client (``api.as_(role)`` switches the
token). The fixtures in ``conftest.py`` wrap both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from control.api import ApiServer, ApiServerConfig, serve
from control.api.auth import User

TOKENS: dict[str, User] = {
    "viewer-token-0123456789": User("alice", frozenset({"viewer"})),
    "proxy-token-0123456789ab": User("sidecar", frozenset({"proxy"})),
    "node1-token-0123456789ab": User("system:node:node-1", frozenset({"node"})),
    "node2-token-0123456789ab": User("system:node:node-2", frozenset({"node"})),
}
ROLE_TOKENS = {"viewer": "viewer-token-0123456789", "proxy": "proxy-token-0123456789ab",
               "node-1": "node1-token-0123456789ab", "node-2": "node2-token-0123456789ab"}


@asynccontextmanager
async def start_server(data_dir: Path, **kw: Any) -> AsyncIterator[ApiServer]:
    kw.setdefault("tls", False)
    kw.setdefault("tokens", TOKENS)
    async with serve(ApiServerConfig(data_dir=data_dir, port=0, **kw)) as server:
        yield server


class Api:
    """A JSON client of one server; every call returns ``(status, body)``."""

    def __init__(self, server: ApiServer, session: aiohttp.ClientSession,
                 token: str | None) -> None:
        self.server = server
        self.session = session
        self.token = token

    def as_(self, role_or_token: str | None) -> Api:
        """The same client with another identity (a role of ROLE_TOKENS, a raw token, or
        None for no token at all)."""
        token = ROLE_TOKENS.get(role_or_token or "", role_or_token)
        return Api(self.server, self.session, token)

    async def request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json", raw: bytes | None = None,
                      params: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = raw
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.server.url + path, data=data,
                                        headers=headers, params=params) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any,
                    content_type: str = "application/merge-patch+json") -> tuple[int, Any]:
        return await self.request("PATCH", path, body, content_type=content_type)

    async def delete(self, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        return await self.request("DELETE", path, body, params=params or None)


def pod(name: str, *, labels: dict[str, str] | None = None, node: str | None = None,
        image: str = "registry.local/web:1.0") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image,
                                            "ports": [{"containerPort": 8080}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def deployment(name: str, replicas: int = 2, app: str | None = None) -> dict[str, Any]:
    app = app or name
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}},
                                  "spec": {"containers": [{"name": "app",
                                                           "image": "registry.local/x:1"}]}}}}


PODS = "/api/v1/namespaces/default/pods"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
