"""A client of one agent's HTTP API (``server.py``): logs, exec, stats, pods.

For whatever needs a node directly: ``meshctl logs`` / ``meshctl exec`` (given the
agent's address and token, or an API server that proxies to it), and the autoscaler's
metrics pipeline (``/stats/summary``). Where an agent listens is in its Node:
``status.addresses`` (InternalIP) and ``status.daemonEndpoints.kubeletEndpoint.Port``;
:func:`endpoint_of` reads them.

Errors come back as :class:`AgentError` carrying the agent's ``Status`` (code, reason,
message), or :class:`AgentUnreachable` when nothing answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

Obj = dict[str, Any]


class AgentUnreachable(Exception):
    """No agent answers at that address."""


class AgentError(Exception):
    """The agent refused the request (its ``Status`` body)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ExecOutput:
    exit_code: int
    output: str


def endpoint_of(node: Obj) -> str:
    """``http://<InternalIP>:<agent port>`` of a Node object; ValueError when missing."""
    status = node.get("status") or {}
    address = next((a.get("address") for a in status.get("addresses") or []
                    if a.get("type") == "InternalIP"), None)
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    name = (node.get("metadata") or {}).get("name")
    if not address or not port:
        raise ValueError(f"node {name!r} does not advertise its agent API "
                         "(status.addresses InternalIP and daemonEndpoints)")
    return f"http://{address}:{port}"


class AgentClient:
    """One agent's API. ``async with AgentClient(url, token) as agent: ...``."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
        try:
            resp = await self._session.request(method, self.base_url + path, **kw)
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            raise AgentUnreachable(f"agent at {self.base_url}: {e}") from e
        if resp.status >= 400:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {}
            finally:
                resp.release()
            raise AgentError(resp.status, str(body.get("reason", "Error")),
                             str(body.get("message", f"HTTP {resp.status}")))
        return resp

    async def logs(self, namespace: str, pod: str, container: str, *,
                   tail: int | None = None) -> bytes:
        params = {"tailLines": str(tail)} if tail is not None else None
        resp = await self._call("GET", f"/containerLogs/{_q(namespace)}/{_q(pod)}/"
                                       f"{_q(container)}", params=params)
        async with resp:
            return await resp.read()

    async def exec(self, namespace: str, pod: str, container: str, command: list[str], *,
                   timeout: float = 30.0) -> ExecOutput:
        resp = await self._call("POST", f"/exec/{_q(namespace)}/{_q(pod)}/{_q(container)}",
                                json={"command": command, "timeoutSeconds": timeout})
        async with resp:
            body = await resp.json()
        return ExecOutput(int(body["exitCode"]), str(body["output"]))

    async def stats(self) -> Obj:
        resp = await self._call("GET", "/stats/summary")
        async with resp:
            return await resp.json()

    async def pods(self) -> list[Obj]:
        resp = await self._call("GET", "/pods")
        async with resp:
            return (await resp.json())["items"]


def _q(part: str) -> str:
    return quote(part, safe="")
