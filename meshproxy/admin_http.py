"""The admin port's HTTP/1.1 server: small, bounded, and without aiohttp.

The admin API (:mod:`meshproxy.admin`) answers a handful of JSON and text endpoints
to operators and Prometheus. It used to run on aiohttp, which is about 12 MB of every
proxy process's 55 MB (its client, cookie jar, tracing and multidict machinery come
with ``aiohttp.web``), far over the issue's 40 MB per worker. This module serves the
same endpoints on what the proxy loads anyway: an asyncio ``Protocol`` with an
``httptools`` parser.

What it does, per connection: HTTP/1.1 and 1.0 with keep-alive, requests answered one
at a time in order (pipelined ones wait, reading pauses after a few), ``HEAD`` for every
``GET`` route, ``Content-Length`` or chunked request bodies (with ``Expect:
100-continue`` answered), 404 for an unknown path and 405 (with ``Allow``) for a known
path with another method. It refuses, answering and
then closing: a malformed request (400), a head over :data:`MAX_HEAD_BYTES` (431), a
body over :data:`MAX_BODY_BYTES` (413), a request that has not arrived within
:data:`REQUEST_TIMEOUT` of its first byte (408, slowloris). An idle keep-alive
connection closes after :data:`IDLE_TIMEOUT`. A handler that raises answers 500 and is
logged.

Routes are ``(method, pattern)`` with ``{name}`` standing for one path segment, as in
aiohttp's router (``/switches/{name}``); the values are in ``AdminRequest.match_info``.
Neighbours: :mod:`meshproxy.admin` (the endpoints), :mod:`meshproxy.http.server` (the
proxy's own, much larger, downstream protocol).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger(__name__)

#: Request line plus header block; the admin API takes no large heads.
MAX_HEAD_BYTES = 64 * 1024
#: ``POST /switches/{name}`` and friends carry a small JSON body.
MAX_BODY_BYTES = 1024 * 1024
#: A request (head and body) must be complete within this many seconds of its first
#: byte (slowloris).
REQUEST_TIMEOUT = 10.0
#: A keep-alive connection with nothing to do closes after this many seconds.
IDLE_TIMEOUT = 60.0
#: Complete requests queued behind the one being answered before reading pauses.
MAX_PIPELINED = 8
#: How long ``stop`` lets requests being answered finish before cancelling them.
STOP_GRACE = 5.0


class AdminRequest:
    """One request as a handler sees it (header names lower-cased)."""

    __slots__ = ("body", "headers", "match_info", "method", "path", "query")

    def __init__(self, method: str, path: str, query: dict[str, str],
                 headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.match_info: dict[str, str] = {}

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return json.loads(self.body)


class AdminResponse:
    """What a handler returns: status, body bytes, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, body: bytes = b"", *, status: int = 200,
                 content_type: str = "text/plain; charset=utf-8",
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None,
                  indent: int | None = None) -> AdminResponse:
    return AdminResponse(json.dumps(data, indent=indent).encode(), status=status,
                         content_type="application/json; charset=utf-8", headers=headers)


def text_response(text: str, *, status: int = 200) -> AdminResponse:
    return AdminResponse(text.encode(), status=status)


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


class Routes:
    """``(method, pattern) -> handler``; ``{name}`` matches one non-empty segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern {pattern!r} must start with '/'")
        self._routes.append((method.upper(), tuple(pattern.split("/")[1:]), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | AdminResponse:
        """The handler and the pattern's values, or the 404/405 answer."""
        segments = path.split("/")[1:]
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            info = _match(pattern, segments)
            if info is None:
                continue
            if route_method == method or (method == "HEAD" and route_method == "GET"):
                return handler, info
            allowed.append(route_method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            return json_response({"error": f"method {method} not allowed on {path}"},
                                 status=405, headers={"Allow": ", ".join(sorted(allowed))})
        return json_response({"error": f"no admin endpoint {path}"}, status=404)


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    info: dict[str, str] = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            info[want[1:-1]] = unquote(got)
        elif want != got:
            return None
    return info


class _Refused(Exception):
    """A request refused while parsing: answered with ``status`` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _AdminConnection(asyncio.Protocol):
    """One admin client connection: parse, queue, answer in order."""

    def __init__(self, server: AdminHttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[tuple[AdminRequest, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.paused = False
        self.refusal: AdminResponse | None = None  # answered after the queue, then close
        self._reset()
        self._timer: asyncio.TimerHandle | None = None
        self._last = self.loop.time()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._started: float | None = None  # first byte of the request being received

    # --- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._timer = self.loop.call_later(self.server.tick, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.parser = None  # type: ignore[assignment]  # it refers back to us

    def data_received(self, data: bytes) -> None:
        if self.closing or self.refusal is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                log.error("admin request parser callback failed", exc_info=cause)
                self._refuse(400, "bad request")
        except httptools.HttpParserUpgrade:
            self._refuse(400, "the admin API does not upgrade connections")
        except httptools.HttpParserError as e:
            self._refuse(400, f"bad request: {e}")

    # --- parser callbacks: collect and bound ------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            raise _Refused(413 if length.isdigit() else 400, "bad or too large content-length")
        if (self._headers.get("expect", "").lower() == "100-continue" and self.task is None
                and not self.queue and self.transport is not None):
            # The client waits for this before sending the body (curl does for bodies
            # over 1 KiB). Only when nothing is being answered: an interim response must
            # not overtake the answer to an earlier request.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY_BYTES:
            raise _Refused(413, "request body too large")
        self._body.append(data)

    def on_message_complete(self) -> None:
        parser = self.parser
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "bad request target") from None
        path = unquote((url.path or b"/").decode("latin-1"))
        query = dict(parse_qsl((url.query or b"").decode("latin-1"), keep_blank_values=True))
        request = AdminRequest(parser.get_method().decode("ascii"), path, query,
                               self._headers, b"".join(self._body))
        self._reset()  # also ends the request timeout
        self.queue.append((request, parser.should_keep_alive()))
        if len(self.queue) >= MAX_PIPELINED and not self.paused and self.transport:
            self.paused = True
            self.transport.pause_reading()
        if self.task is None:
            self.task = self.loop.create_task(self._answer())
            self.server.tasks.add(self.task)

    def _grow(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(431, "request head too large")

    # --- answering ---------------------------------------------------------------------
    async def _answer(self) -> None:
        try:
            while self.queue and not self.closing:
                request, keep_alive = self.queue.popleft()
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                resp = await self.server.handle(request)
                self._write(request.method, resp, keep_alive=keep_alive)
                self._last = self.loop.time()
            if self.refusal is not None:
                self._write("GET", self.refusal, keep_alive=False)
        finally:
            task, self.task = self.task, None
            self.server.tasks.discard(task)  # type: ignore[arg-type]

    def _write(self, method: str, resp: AdminResponse, *, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        close = not keep_alive or self.server.stopping
        try:
            phrase = HTTPStatus(resp.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {resp.status} {phrase}",
                 f"Content-Type: {resp.content_type}",
                 f"Content-Length: {len(resp.body)}"]
        lines += [f"{k}: {v}" for k, v in resp.headers.items()]
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport.write(head if method == "HEAD" else head + resp.body)
        if close:
            self.closing = True
            transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Stop reading; answer the refusal after the requests before it, then close."""
        self.refusal = json_response({"error": message}, status=status)
        if self.task is None:
            self._write("GET", self.refusal, keep_alive=False)

    # --- timeouts: one periodic tick per connection -------------------------------------
    def _tick(self) -> None:
        self._timer = None
        if self.closing or self.transport is None:
            return
        now = self.loop.time()
        if self.refusal is not None:
            return  # being answered and closed
        if self._started is not None and now - self._started > self.server.request_timeout:
            self._refuse(408, "request not received in time")
            return
        if (self.task is None and self._started is None
                and now - self._last > self.server.idle_timeout):
            self.closing = True
            self.transport.close()
            return
        self._timer = self.loop.call_later(self.server.tick, self._tick)

    def close_idle(self) -> None:
        """Server stopping: close now when nothing is being answered."""
        if self.task is None and self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()


class AdminHttpServer:
    """Serves :class:`Routes` on one TCP port."""

    def __init__(self, routes: Routes, *, request_timeout: float = REQUEST_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.routes = routes
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        #: How often each connection checks its timeouts.
        self.tick = min(1.0, request_timeout / 4, idle_timeout / 4)
        self.loop = asyncio.get_running_loop()
        self.connections: set[_AdminConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await self.loop.create_server(
            lambda: _AdminConnection(self), host, port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def handle(self, request: AdminRequest) -> AdminResponse:
        found = self.routes.resolve(request.method, request.path)
        if isinstance(found, AdminResponse):
            return found
        handler, request.match_info = found
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admin handler for %s %s failed", request.method, request.path)
            return json_response({"error": "internal error"}, status=500)

    async def stop(self) -> None:
        """Stop listening, let answers in progress finish (bounded), close everything."""
        if self._server is None:
            return
        self.stopping = True
        server, self._server = self._server, None
        server.close()
        for conn in list(self.connections):
            conn.close_idle()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=STOP_GRACE)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await server.wait_closed()
