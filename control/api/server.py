"""The aiohttp application: routes, middlewares, metrics.

Middlewares, outermost first, and why in that order:

1. ``errors``: every refusal (an :class:`ApiError` from any layer, aiohttp's own HTTP
   errors, an unexpected exception) becomes one JSON ``Status`` with the right code,
   so clients always get a body they can parse;
2. ``metrics``: counts every request, refused ones included, by verb, resource and
   code (``apiserver_request_total``) and times the short ones;
3. ``authn``: resolves the bearer token to a user (401 otherwise) except on the health
   endpoints; authorization happens per route, where the resource is known.

Routes: discovery and ``/version`` (any valid token), ``/healthz``, ``/livez``,
``/readyz`` (no token), ``/metrics`` (admin or viewer), and the resource tree served by
``handlers.handle``.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import generate_latest

from control.api import discovery, metrics_api
from control.api.auth import USER, Authenticator, Authorizer, require_any
from control.api.codec import json_response
from control.api.errors import ApiError, status_body
from control.api.handlers import API, Api, handle
from control.api.objects import Objects
from control.api.resources import RESOURCES
from control.api.watch import WatchLimits
from control.api.watchcache import WatchCache

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """The server's own Prometheus registry (one per app, so tests can run several)."""

    def __init__(self, cache: WatchCache) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("apiserver_request", "API requests by verb, resource and "
                                "HTTP code", ["verb", "resource", "code"],
                                registry=self.registry)
        self.duration = Histogram("apiserver_request_duration_seconds",
                                  "Latency of non-watch API requests", ["verb"],
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25, 0.5, 1, 2.5, 5),
                                  registry=self.registry)
        watchers = Gauge("apiserver_registered_watchers", "Open watch streams",
                         registry=self.registry)
        watchers.set_function(lambda: cache.watchers)
        revision = Gauge("apiserver_watch_cache_revision",
                         "Latest store revision seen by the watch cache",
                         registry=self.registry)
        revision.set_function(lambda: cache.last_revision)
        fanout = Histogram("apiserver_watch_fanout_duration_seconds",
                           "Duration of one watch fan-out pass (every queued event written "
                           "to every watcher: the events in it wait for it, and new ones "
                           "for the pause after it)",
                           buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1,
                                    0.25), registry=self.registry)
        cache.on_flush = fanout.observe
        self.registry.register(_WatchCacheCounters(cache))
        # labels() costs a lock and a tuple hash per call: keep the children per key.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[str, Any] = {}

    def count(self, verb: str, resource: str, code: int) -> None:
        key = (verb, resource, code)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.requests.labels(verb, resource, str(code))
        child.inc()

    def observe(self, verb: str, seconds: float) -> None:
        child = self._histograms.get(verb)
        if child is None:
            child = self._histograms[verb] = self.duration.labels(verb)
        child.observe(seconds)


class _WatchCacheCounters:
    """The watch cache's running totals, read at scrape time (nothing per event)."""

    def __init__(self, cache: WatchCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("apiserver_watch_cache_events_dispatched",
                                  "Store events the watch cache has dispatched to watchers",
                                  value=self.cache.dispatched)
        yield CounterMetricFamily("apiserver_watch_fanout_passes",
                                  "Watch fan-out passes (each writes once per watcher with "
                                  "events queued)", value=self.cache.flushes)


METRICS = web.AppKey("metrics", Metrics)


_KNOWN_PLURALS = frozenset(r.plural for r in RESOURCES)


def _resource_label(request: web.Request) -> str:
    """The resource of a request for metric labels: a served plural, "" for non-resource
    paths, "other" for anything else (so no client can grow the label set)."""
    rest = request.match_info.get("rest")
    if rest is None:
        return ""
    parts = [p for p in rest.split("/") if p]
    if len(parts) >= 3 and parts[0] == "namespaces":
        parts = parts[2:]
    label = parts[0] if parts else ""
    return label if label in _KNOWN_PLURALS else "other"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        resp = json_response(e.status(), e.code)
        resp.headers.update(e.headers)
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: "NotFound", 405: "MethodNotAllowed",
                  413: "RequestEntityTooLarge"}.get(e.status, "BadRequest")
        message = e.text if e.status != 404 else \
            "the server could not find the requested resource"
        return json_response(status_body(e.status, reason, message or e.reason), e.status)
    except (ConnectionResetError, TimeoutError) as e:
        log.info("client went away: %s", e)
        raise
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return json_response(status_body(500, "InternalError",
                                         "an internal error occurred; see the server log"),
                             500)


def _metrics_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        watch = request.query.get("watch") in ("true", "True", "1")
        verb = "WATCH" if watch else request.method
        code = 500
        try:
            resp = await handler(request)
            code = resp.status
            return resp
        except ApiError as e:  # rendered by the errors middleware outside this one
            code = e.code
            raise
        except web.HTTPException as e:
            code = e.status
            raise
        finally:
            metrics.count(verb, _resource_label(request), code)
            if not watch:
                metrics.observe(verb, time.perf_counter() - start)
    return middleware


def _authn_middleware(authn: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            request[USER] = authn.authenticate(request.headers.get("Authorization"))
        return await handler(request)
    return middleware


def build_app(
    objects: Objects,
    cache: WatchCache,
    authn: Authenticator,
    *,
    body_limit: int = 3 * 1024 * 1024,
    watch_limits: WatchLimits | None = None,
    server_address: str = "127.0.0.1:6443",
    ready: Callable[[], bool] = lambda: True,
    freeze_startup_heap: bool = True,
) -> web.Application:
    """The application. With ``freeze_startup_heap`` (the default), everything alive
    once the app starts (modules, the store, caches, routes: some 100,000 objects that
    live as long as the process) is moved out of the cyclic garbage collector's reach
    with ``gc.freeze()``, so a full collection walks only what came later: measured
    under the watch benchmark, full collections went from 50-100 ms of stopped event
    loop (each one adding that to every delivery waiting behind it) to 3-10 ms."""
    metrics = Metrics(cache)
    app = web.Application(
        middlewares=[errors_middleware, _metrics_middleware(metrics),
                     _authn_middleware(authn)],
        client_max_size=body_limit)
    app[API] = Api(objects, cache, Authorizer(), body_limit, watch_limits or WatchLimits())
    app[METRICS] = metrics
    if freeze_startup_heap:
        async def freeze(_: web.Application) -> None:
            gc.freeze()

        async def unfreeze(_: web.Application) -> None:
            gc.unfreeze()  # a process running several servers (tests) gets it all back
        app.on_startup.append(freeze)
        app.on_cleanup.append(unfreeze)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if not ready():
            return web.Response(status=503, text="not ready")
        return web.Response(text="ok")

    async def metrics_handler(request: web.Request) -> web.Response:
        require_any(request[USER], ("admin", "viewer"), "/metrics")
        resp = web.Response(body=generate_latest(metrics.registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def api_versions(_: web.Request) -> web.Response:
        return json_response(discovery.api_versions(server_address))

    async def api_groups(_: web.Request) -> web.Response:
        return json_response(discovery.api_group_list())

    async def api_group(request: web.Request) -> web.Response:
        body = discovery.api_group(request.match_info["group"])
        if body is None:
            raise ApiError(404, "NotFound", f"API group {request.match_info['group']!r} "
                                            f"is not served")
        return json_response(body)

    async def resource_list(request: web.Request) -> web.Response:
        group = request.match_info.get("group", "")
        version = request.match_info["version"]
        body = discovery.api_resource_list(group, version)
        if body is None:
            raise ApiError(404, "NotFound", f"{group + '/' if group else ''}{version} is "
                                            f"not served")
        return json_response(body)

    async def version(_: web.Request) -> web.Response:
        return json_response(discovery.version_info())

    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/livez", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics_handler)
    r.add_get("/version", version)
    metrics_api.add_routes(app)  # before the generic /apis/{group}/... routes below
    r.add_get("/api", api_versions)
    r.add_get("/apis", api_groups)
    r.add_get("/apis/{group}", api_group)
    r.add_get("/api/{version}", resource_list)
    r.add_get("/apis/{group}/{version}", resource_list)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        r.add_route(method, "/api/{version}/{rest:.+}", handle)
        r.add_route(method, "/apis/{group}/{version}/{rest:.+}", handle)
    return app
