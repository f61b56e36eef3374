"""Helpers of the metrics tests: a real API server, and small in-process aiohttp apps that
*play* a node agent (``/stats/summary`` behind its bearer token, with cumulative CPU the
test sets) and a meshed Pod's sidecar (``/metrics`` rendered from a real meshproxy
``Stats`` registry, so the metric names are the proxy's own). Neither double is the real
component: the agent would need the process runtime and real load; their wire formats
are the real ones (``control/agent/server.py``, ``meshproxy/metrics.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.exposition import generate_latest

from control.api import ApiServer, ApiServerConfig, serve
from control.api.auth import User
from meshproxy.metrics import Stats

TOKENS = {"viewer-token-0123456789": User("alice", frozenset({"viewer"})),
          "node1-token-0123456789ab": User("system:node:node-1", frozenset({"node"})),
          "proxy-token-0123456789ab": User("sidecar", frozenset({"proxy"}))}
ROLE = {"viewer": "viewer-token-0123456789", "node-1": "node1-token-0123456789ab",
        "proxy": "proxy-token-0123456789ab"}
AGENT_TOKEN = "agent-token-for-tests-0123"


@asynccontextmanager
async def api_server(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with serve(ApiServerConfig(data_dir=data_dir, port=0, tls=False,
                                     tokens=TOKENS)) as server:
        yield server


async def call(server: ApiServer, method: str, path: str, token: str | None,
               body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    async with aiohttp.ClientSession() as s, s.request(
            method, server.url + path, headers=headers,
            data=None if body is None else json.dumps(body)) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@dataclass
class FakeAgent:
    """Plays an agent's ``/stats/summary``: pods -> container -> (cpu ns, memory)."""

    node: str = "node-1"
    usage: dict[tuple[str, str, str], dict[str, tuple[float, int]]] = field(
        default_factory=dict)   # (namespace, name, uid) -> container -> (core-ns, bytes)

    def app(self) -> web.Application:
        async def summary(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {AGENT_TOKEN}":
                return web.json_response({"kind": "Status", "code": 401}, status=401)
            pods = [{"podRef": {"namespace": ns, "name": name, "uid": uid},
                     "containers": [{"name": c, "cpu": {"usageCoreNanoSeconds": int(cpu)},
                                     "memory": {"workingSetBytes": mem}}
                                    for c, (cpu, mem) in cs.items()]}
                    for (ns, name, uid), cs in self.usage.items()]
            return web.json_response({"node": {"nodeName": self.node}, "pods": pods})

        app = web.Application()
        app.router.add_get("/stats/summary", summary)
        return app


@dataclass
class FakeSidecar:
    """Plays a sidecar's admin ``/metrics`` from a real meshproxy registry."""

    stats: Stats = field(default_factory=Stats)

    def serve_requests(self, n: int, seconds: float) -> None:
        self.stats.downstream_requests.labels("inbound", "app", "2xx").inc(n)
        for _ in range(n):
            self.stats.downstream_duration.labels("inbound", "app").observe(seconds)

    def app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.stats.registry),
                                content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app
