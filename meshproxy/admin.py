"""The admin API (its own port, loopback by default).

Read-only endpoints answer anyone who can reach the port: ``GET /ready``,
``GET /metrics`` (Prometheus text format), ``GET /config_dump`` (the config in force
with its version and load time, secrets redacted) and ``GET /clusters`` (every
endpoint with health and counters). Resilience: ``GET /resilience`` (every breaker,
ejection, limiter, rate limiter, switch and retry budget), ``GET /events`` (the
explainable decisions, newest last; ``?kind=breaker.`` and ``?since=SEQ`` filter),
``GET /switches`` and ``POST /switches/{name}`` (body ``{"mode": "on"|"off"|"auto"}``).
Every endpoint that changes state (``POST /reload``, ``POST /switches/{name}``; others
add theirs with :meth:`AdminServer.add_route`) requires ``Authorization: Bearer
<token>``; with no token configured those endpoints refuse everyone (403), unlike
Envoy's admin API, which trusts whoever reaches it.

What the endpoints show comes from an :class:`AdminSource`: the in-process proxy
(:class:`ProxySource`) or, with several workers, the supervisor's merged view
(:mod:`meshproxy.workers`). The HTTP server under it is :mod:`meshproxy.admin_http`
(not aiohttp, whose 12 MB would be a fifth of every proxy process).
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshproxy.admin_http import (
    AdminHttpServer,
    AdminRequest,
    AdminResponse,
    Handler,
    Routes,
    json_response,
    text_response,
)
from meshproxy.config import AdminConfig, Loaded
from meshproxy.metrics import collect_registry
from meshproxy.proxy import Proxy
from meshproxy.resilience.degrade import Mode
from meshproxy.resilience.snapshot import plain
from meshproxy.schema import to_builtins

log = logging.getLogger(__name__)


class AdminSource(Protocol):
    """What the admin API reports on and acts upon."""

    def ready(self) -> bool: ...
    def loaded(self) -> Loaded: ...
    def clusters(self) -> list[dict]: ...
    def registry(self) -> CollectorRegistry: ...
    async def reload(self) -> bool: ...
    def resilience(self) -> dict: ...
    def events(self, *, kind: str | None, since: int) -> list[dict]: ...
    def switches(self) -> list[dict]: ...
    async def flip_switch(self, name: str, mode: Mode) -> dict:
        """Set a switch's mode; KeyError for an unknown switch."""


class ProxySource:
    """The admin view of a single-process proxy."""

    def __init__(self, proxy: Proxy, config_path: str | Path) -> None:
        self.proxy = proxy
        self.path = config_path

    def ready(self) -> bool:
        return self.proxy.started and not self.proxy.draining

    def loaded(self) -> Loaded:
        return self.proxy.loaded

    def clusters(self) -> list[dict]:
        return [c.snapshot() for c in self.proxy.clusters.values()]

    def registry(self) -> CollectorRegistry:
        self.proxy.flush_metrics()
        return collect_registry(self.proxy.stats.registry)

    async def reload(self) -> bool:
        return await self.proxy.reload(self.path)

    def resilience(self) -> dict:
        return self.proxy.resilience_snapshot()

    def events(self, *, kind: str | None, since: int) -> list[dict]:
        return [e.as_dict() for e in
                self.proxy.resilience.events.recent(kind=kind, since_seq=since)]

    def switches(self) -> list[dict]:
        return [plain(s) for s in self.proxy.resilience.switches.list()]

    async def flip_switch(self, name: str, mode: Mode) -> dict:
        return plain(self.proxy.resilience.switches.flip(name, mode))


def read_token(cfg: AdminConfig) -> str | None:
    """The admin token from the config or its file (None: mutations are refused)."""
    if cfg.token_file is not None:
        try:
            return Path(cfg.token_file).read_text().strip() or None
        except OSError as e:
            log.error("admin token_file %s unreadable (%s): state-changing admin "
                      "endpoints are refused", cfg.token_file, e.strerror)
            return None
    return cfg.token


def redacted(loaded: Loaded) -> dict:
    data = to_builtins(loaded.config)
    if data.get("admin", {}).get("token"):
        data["admin"]["token"] = "<redacted>"
    return data


class AdminServer:
    """The admin endpoints on their port."""

    def __init__(self, source: AdminSource, config: AdminConfig) -> None:
        self.source = source
        self.config = config
        self.token = read_token(config)
        self.routes = Routes()
        self.add_route("GET", "/ready", self._ready, mutating=False)
        self.add_route("GET", "/metrics", self._metrics, mutating=False)
        self.add_route("GET", "/config_dump", self._config_dump, mutating=False)
        self.add_route("GET", "/clusters", self._clusters, mutating=False)
        self.add_route("GET", "/resilience", self._resilience, mutating=False)
        self.add_route("GET", "/events", self._events, mutating=False)
        self.add_route("GET", "/switches", self._switches, mutating=False)
        self.add_route("POST", "/reload", self._reload)
        self.add_route("POST", "/switches/{name}", self._flip)
        self._server: AdminHttpServer | None = None
        self.port = 0

    def add_route(self, method: str, path: str, handler: Handler, *,
                  mutating: bool = True) -> None:
        """Add an endpoint; ``mutating`` ones require the bearer token."""
        self.routes.add(method, path, self._guard(handler) if mutating else handler)

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: AdminRequest) -> AdminResponse:
            if self.token is None:
                return json_response(
                    {"error": "no admin token is configured: state changes are disabled"},
                    status=403)
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return json_response({"error": "missing or wrong bearer token"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)
        return guarded

    async def start(self) -> None:
        self._server = AdminHttpServer(self.routes)
        await self._server.start(self.config.address, self.config.port)
        self.port = self._server.port

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    # --- handlers ----------------------------------------------------------------------
    async def _ready(self, request: AdminRequest) -> AdminResponse:
        if self.source.ready():
            return text_response("ready\n")
        return text_response("not ready\n", status=503)

    async def _metrics(self, request: AdminRequest) -> AdminResponse:
        body = generate_latest(self.source.registry())
        return AdminResponse(body, content_type=CONTENT_TYPE_LATEST)

    async def _config_dump(self, request: AdminRequest) -> AdminResponse:
        loaded = self.source.loaded()
        return json_response({
            "version": loaded.version, "source": loaded.source,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(loaded.loaded_at)),
            "loaded_at_unix": loaded.loaded_at, "config": redacted(loaded)}, indent=2)

    async def _clusters(self, request: AdminRequest) -> AdminResponse:
        return json_response({"clusters": self.source.clusters()}, indent=2)

    async def _reload(self, request: AdminRequest) -> AdminResponse:
        ok = await self.source.reload()
        return json_response({"reloaded": ok, "version": self.source.loaded().version},
                             status=200 if ok else 422)

    async def _resilience(self, request: AdminRequest) -> AdminResponse:
        return json_response(self.source.resilience(), indent=2)

    async def _events(self, request: AdminRequest) -> AdminResponse:
        since = request.query.get("since", "0")
        if not since.isdigit():
            return json_response({"error": "since must be an event sequence number"},
                                 status=400)
        events = self.source.events(kind=request.query.get("kind"), since=int(since))
        return json_response({"events": events}, indent=2)

    async def _switches(self, request: AdminRequest) -> AdminResponse:
        return json_response({"switches": self.source.switches()}, indent=2)

    async def _flip(self, request: AdminRequest) -> AdminResponse:
        try:
            body = request.json()
        except ValueError:
            body = None
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in ("on", "off", "auto"):
            return json_response(
                {"error": 'body must be {"mode": "on" | "off" | "auto"}'}, status=400)
        try:
            status = await self.source.flip_switch(request.match_info["name"], mode)
        except KeyError as e:
            return json_response({"error": str(e.args[0])}, status=404)
        return json_response(status)
