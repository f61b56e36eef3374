"""The Kubernetes list/watch wire protocol, spoken to the API server with aiohttp.

meshproxy never imports ``control``, so this is a small, self-contained client of the
conventions the API server follows (the same ones client-go's reflector speaks):

- **list** ``GET /api/v1/namespaces/{ns}/{plural}``: the objects and the list's
  ``metadata.resourceVersion``;
- **watch** ``GET ...?watch=true&resourceVersion=N&allowWatchBookmarks=true&
  timeoutSeconds=T``: newline-delimited JSON events ``{"type", "object"}`` (ADDED,
  MODIFIED, DELETED, BOOKMARK, ERROR), resumed from the last resourceVersion seen when
  the stream ends;
- **410 Gone** (as the watch's answer or as an ERROR event): the revision has been
  compacted away; list again (the list *replaces* what is known, so nothing deleted
  meanwhile survives);
- any other failure (refused connection, 5xx, 401/403, a silent connection past
  ``idle_timeout``): counted, then retried after an exponential back-off with full jitter
  (:class:`Backoff`), reset once a watch is open again. What was known stays in force
  meanwhile: that is the proxy's static stability.

One :class:`ResourceWatch` follows one resource in one namespace and reports to its
owner through two callbacks: ``on_reset(objects)`` after every list and ``on_event(type,
obj)`` for every change; :mod:`meshproxy.discovery.runtime` turns them into endpoints.
Each watch also tracks whether it is *live* (its stream open and current) and since when
it is not, which is what ``meshproxy_discovery_staleness_seconds`` reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp

from meshproxy.config.discovery import BackoffConfig, DiscoveryConfig

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Resource = Literal["services", "endpoints", "trafficpolicies"]
#: Path prefix of each resource's group/version.
API_PREFIX: dict[str, str] = {"services": "/api/v1", "endpoints": "/api/v1",
                              "trafficpolicies": "/apis/mesh.io/v1alpha1"}
MAX_LINE = 16 * 1024 * 1024  # one event; an Endpoints of thousands of addresses fits


class WatchFailed(Exception):
    """A list or watch that did not work; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Gone(WatchFailed):
    """410: the resourceVersion asked for has been compacted; relist."""

    def __init__(self, message: str) -> None:
        super().__init__("gone", message)


class Backoff:
    """Exponential back-off with full jitter: the n-th wait (from 0) is uniform in
    ``[0, min(max, initial * 2**n)]`` (AWS's "full jitter"), so proxies that lost the
    control plane together do not reconnect together."""

    def __init__(self, config: BackoffConfig, *,
                 rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self.rng = rng
        self.attempt = 0

    def next(self) -> float:
        cap = min(self.config.max, self.config.initial * 2 ** min(self.attempt, 62))
        self.attempt += 1
        return self.rng() * cap

    def reset(self) -> None:
        self.attempt = 0


class ApiConnection:
    """An aiohttp session to the API server with the proxy's credentials."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.config.server.startswith("https://"):
            return True  # unused for plain http
        if not self.config.tls_verify:
            return False
        return ssl.create_default_context(cafile=self.config.ca_file)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=0))
        return self._session

    def headers(self) -> dict[str, str]:
        """Read the token at every (re)connect: a rotated token file is picked up."""
        headers = {"Accept": "application/json", "User-Agent": "meshproxy-discovery"}
        if self.config.token_file is not None:
            try:
                token = Path(self.config.token_file).read_text().strip()
            except OSError as e:
                raise WatchFailed("token", f"cannot read token_file "
                                  f"{self.config.token_file}: {e.strerror}") from None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def url(self, resource: Resource, namespace: str) -> str:
        return f"{self.config.server}{API_PREFIX[resource]}/namespaces/{namespace}/{resource}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _status_failure(status: int, text: str, what: str) -> WatchFailed:
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        message = text
    if status == 410:
        return Gone(f"{what}: {message}")
    return WatchFailed(f"http_{status}", f"{what}: HTTP {status}: {str(message)[:200]}")


class ResourceWatch:
    """List then watch one resource in one namespace, forever, until cancelled."""

    def __init__(self, conn: ApiConnection, resource: Resource, *, namespace: str,
                 on_reset: Callable[[dict[str, Obj]], None],
                 on_event: Callable[[str, Obj], None],
                 on_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.conn = conn
        self.resource = resource
        self.namespace = namespace
        self.on_reset = on_reset
        self.on_event = on_event
        self.on_error = on_error
        self.clock = clock
        self.backoff = Backoff(conn.config.backoff, rng=rng)
        self.live = False
        #: Wall-clock time this watch was last known current (None: never).
        self.last_live: float | None = None
        self.lists = 0
        self.last_error: WatchFailed | None = None
        self._rv: str | None = None
        self._listed_at = float("-inf")
        self._gones = 0  # 410s since an event last got through

    @property
    def what(self) -> str:
        return f"{self.resource} in namespace {self.namespace}"

    def _touch(self) -> None:
        self.live = True
        self.last_live = self.clock()

    async def run(self) -> None:
        cfg = self.conn.config
        while True:
            try:
                if self._rv is None or self.clock() - self._listed_at >= cfg.resync:
                    await self._list()
                await self._watch()
            except WatchFailed as e:
                self._failed(e)
                if isinstance(e, Gone):
                    # Relist at once: the server is up, only history is gone. Again
                    # before any event got through (compaction racing our list): wait
                    # like after any failure, never spin.
                    self._rv = None
                    self._gones += 1
                    if self._gones == 1:
                        continue
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as e:
                reason = "timeout" if isinstance(e, TimeoutError) else (
                    "decode" if isinstance(e, ValueError | KeyError) else "connect")
                self._failed(WatchFailed(reason, f"{self.what}: {type(e).__name__}: {e}"))
            else:
                continue  # the stream ended cleanly (timeoutSeconds): resume at once
            await asyncio.sleep(self.backoff.next())

    def _failed(self, e: WatchFailed) -> None:
        if self.live:
            self.last_live = self.clock()
        self.live = False
        if self.last_error is None or str(self.last_error) != str(e):
            log.warning("discovery: %s (keeping the last known state)", e)
        self.last_error = e
        if self.on_error is not None:
            self.on_error(e.reason)

    async def _list(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.conn.config.idle_timeout,
                                        connect=self.conn.config.connect_timeout)
        async with self.conn.session.get(self.conn.url(self.resource, self.namespace),
                                         headers=self.conn.headers(),
                                         timeout=timeout) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise _status_failure(resp.status, text, f"list {self.what}")
        body = json.loads(text)
        items = body.get("items") or []
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not isinstance(items, list) or not rv:
            raise WatchFailed("decode", f"list {self.what}: not a list with a "
                              f"resourceVersion")
        objects = {o["metadata"]["name"]: o for o in items}
        self._rv = str(rv)
        self._listed_at = self.clock()
        self.lists += 1
        self._touch()
        self.on_reset(objects)

    async def _watch(self) -> None:
        cfg = self.conn.config
        remaining = cfg.resync - (self.clock() - self._listed_at)
        params = {"watch": "true", "resourceVersion": self._rv or "0",
                  "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(max(1, int(remaining)))}
        timeout = aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout,
                                        sock_read=cfg.idle_timeout)
        async with self.conn.session.get(self.conn.url(self.resource, self.namespace),
                                         params=params, headers=self.conn.headers(),
                                         timeout=timeout) as resp:
            if resp.status != 200:
                raise _status_failure(resp.status, await resp.text(), f"watch {self.what}")
            self.backoff.reset()
            self._touch()
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                if b"\n" not in buf:
                    if len(buf) > MAX_LINE:
                        raise WatchFailed("decode", f"watch {self.what}: event over "
                                          f"{MAX_LINE} bytes")
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._apply(json.loads(line))
        # A clean end (timeoutSeconds): still current; resume from self._rv.
        self._gones = 0
        self._touch()

    def _apply(self, event: Obj) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            msg = obj.get("message", "watch error")
            if code == 410:
                raise Gone(f"watch {self.what}: {msg}")
            raise WatchFailed(f"http_{code}", f"watch {self.what}: {msg}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self._rv = str(rv)
        self._gones = 0
        self._touch()
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.on_event(kind, obj)
