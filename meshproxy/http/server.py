"""The downstream side: an HTTP/1.1 server protocol that hands requests to routes.

One :class:`HttpServerProtocol` per client connection, an asyncio ``Protocol`` with an
httptools request parser. Parser callbacks only collect bytes, enforce limits and flip
flags; a complete request head becomes an :class:`~meshproxy.http.message.Exchange`
and is dispatched to its route's handler stack (one task per request: the layers
await; routes with only the default layers run "fused", without a task). The response
is written by ``_send_response`` (in :mod:`meshproxy.http.respond`), which frames it
for this client and then streams the upstream body with backpressure both ways.

A bodiless request on a route without policies takes the plain lane
(:mod:`meshproxy.http.lane`) instead: no Exchange is built, the head goes straight to
an idle pooled connection, and a small complete response is framed by
:meth:`HttpServerProtocol.lane_answer` exactly as ``_send_response`` would; anything
else (a failure, a large or unframed response, no idle connection) makes the Exchange
then and continues on the fused path's code.

Defences against hostile input, each a local reply and a closed connection: malformed
request line or headers (400 ``bad_request``), Content-Length with Transfer-Encoding
or conflicting Content-Lengths or a bad chunk size (400, no request smuggling), a
request line over its limit (414), a header block over its limit (431), a body over
its limit (413), a head that arrives too slowly (408, slowloris). Pipelined requests
are answered in order; ``Upgrade`` (WebSocket) becomes a tunnel after a 101, but
``Upgrade: h2c`` is stripped and the request served as HTTP/1.1.

Timeouts (header, idle) are checked by the listener's one periodic tick over all its
connections (:meth:`HttpServerProtocol.check_timeouts`) rather than a timer per
connection or per request; route timeouts of the fused path are filed in the listener's
:class:`~meshproxy.http.deadlines.TimeoutWheel`.

Neighbours: :mod:`meshproxy.http.request` (the head being parsed, request ids),
:mod:`meshproxy.http.respond` (writing responses: a mixin of this protocol),
:mod:`meshproxy.listener` owns these protocols, :mod:`meshproxy.http.upstream` is the
other side.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from meshproxy.errors import DownstreamError, ProxyError
from meshproxy.http.flow import FlowControl
from meshproxy.http.headers import HOP_BY_HOP, connection_tokens, serialize
from meshproxy.http.lane import IN_LANE, STATUS_LINES, LaneActive, status_line
from meshproxy.http.message import Exchange, RequestBody, Response
from meshproxy.http.reply import local_reply
from meshproxy.http.request import (
    SPECIAL_HEADERS,
    STANDARD_CONN_TOKENS,
    RequestHead,
    request_id,
)
from meshproxy.http.respond import ResponseWriter
from meshproxy.layers.forward import ANSWERED, stale_retry_ok

if TYPE_CHECKING:
    from meshproxy.http.message import BodySource
    from meshproxy.http.transport import PollTransport
    from meshproxy.http.upstream import UpstreamBody, UpstreamConnection
    from meshproxy.listener import HttpListener
    from meshproxy.router import Route

log = logging.getLogger(__name__)

#: Tests: a list that gets the status of each response the plain lane answers (the
#: compiled build cannot be patched per method; a global is read at each answer).
lane_observer: list[int] | None = None

class HttpServerProtocol(ResponseWriter, asyncio.Protocol):
    """One downstream client connection."""

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.limits = listener.config.limits
        self.loop = listener.loop
        # The listener's PollTransport (typed so, compiled code calls it directly).
        self.transport: PollTransport | None = None
        # self.flow: set when connected (declared on ResponseWriter)
        self.parser: Any = httptools.HttpRequestParser(self)
        self.client = ""
        self.closed = False
        self._head: RequestHead | None = None
        self._reading: Exchange | None = None     # request whose body is being received
        self._active: Exchange | LaneActive | None = None  # request being answered
        self._queue: deque[Exchange] = deque()    # pipelined requests waiting their turn
        self._task: asyncio.Task[None] | None = None
        self._direct: UpstreamConnection | None = None  # fused path in progress
        self._direct_q: dict | None = None              # its route timeout's queue (TimeoutWheel)
        self._streaming: BodySource | None = None
        self._head_sent = False
        self._chunked = False
        self._close_after = False
        self._no_more = False                     # client said Connection: close
        self._fresh = True                        # no request has begun on it yet
        self._pending_error: DownstreamError | None = None
        self._refused: DownstreamError | None = None
        self._tunnel: UpstreamBody | None = None
        self._early_tunnel = b""
        self._since = 0.0
        self._trailer_bytes = 0
        self._rx = 0
        self._tx = 0
        self._status = 0
        # The plain lane's request in progress (meshproxy.http.lane): its parts, from
        # which an Exchange is made only when it leaves the lane.
        self._lane_parts: tuple | None = None
        #: a guarded lane request's admission: (guard, switch verdicts, breaker token,
        #: start), fed back once when it ends (see meshproxy.http.lane)
        self._lane_admitted: tuple | None = None

    # --- connection lifecycle -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(PollTransport, transport)
        self.flow = FlowControl(tr)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self._client_b = self.client.encode()
        self._since = self.loop.time()
        self.listener.connection_opened(self)  # also starts its timeout tick if needed

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._direct is not None:
            self._direct.cancel()
        if self._streaming is not None:
            self._streaming.discard()
            self._streaming = None
        if self._tunnel is not None:
            self._tunnel.tunnel_close()
            self._tunnel = None
        self.flush_bytes()
        self.listener.connection_closed(self)
        self.parser = None  # it refers back to us: free by refcount

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading the upstream.
        if self._streaming is not None:
            self._streaming.pause_reading()
        if self._tunnel is not None:
            self._tunnel.pause_reading()

    def resume_writing(self) -> None:
        if self._streaming is not None:
            self._streaming.resume_reading()
        if self._tunnel is not None:
            self._tunnel.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._rx += len(data)
        if self._tunnel is not None:
            self._tunnel.tunnel_write(data)
            return
        if self._no_more or self._refused is not None:
            return  # after Connection: close or a refusal nothing more is read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, DownstreamError):
                self._refuse(cause)
            else:
                log.error("request parser callback failed", exc_info=cause)
                self._refuse(DownstreamError(400, "bad_request", str(cause)))
        except httptools.HttpParserError as e:
            self._refuse(DownstreamError(400, "bad_request", str(e)))

    # --- parser callbacks: collect, enforce limits, flip flags ------------------------
    def on_message_begin(self) -> None:
        self._fresh = False
        self._head = RequestHead(self.loop.time())
        self._trailer_bytes = 0

    def on_url(self, url: bytes) -> None:
        head = self._head
        head.url += url  # type: ignore[union-attr]
        if len(head.url) > self.limits.max_request_line_bytes:  # type: ignore[union-attr]
            raise DownstreamError(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        if head is None:
            # A trailer field after a chunked body: not forwarded (the body is re-framed
            # and trailers are optional to relay), but bounded like a header block.
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > self.limits.max_header_bytes:
                raise DownstreamError(431, "trailer_too_large")
            return
        head.size += len(name) + len(value) + 4
        if head.size > self.limits.max_header_bytes:
            raise DownstreamError(431, "header_too_large")
        if len(head.headers) >= self.limits.max_headers:
            raise DownstreamError(431, "too_many_headers")
        low = name.lower()
        if low == b"host":  # in every request: handled here, without _special's call
            if head.host is not None:
                raise DownstreamError(400, "duplicate_host")
            head.host = value
        elif low in SPECIAL_HEADERS and self._special(head, low, value):
            return
        head.headers.append((name, value))
        head.lowered.append(low)

    def _special(self, head: RequestHead, low: bytes, value: bytes) -> bool:
        """Handle a header the proxy interprets; True when it must not be forwarded."""
        if low == b"content-length":
            if not value.strip().isdigit():
                raise DownstreamError(400, "bad_content_length")
            n = int(value)
            if head.cl is not None and head.cl != n:
                raise DownstreamError(400, "conflicting_content_length")
            head.cl = n
        elif low == b"transfer-encoding":
            head.chunked = True
        elif low == b"connection":
            tokens = connection_tokens(value)
            head.conn_tokens = tokens if head.conn_tokens is None else head.conn_tokens | tokens
        elif low == b"upgrade":
            head.upgrade = value
        elif low == b"expect":
            if value.lower() != b"100-continue":
                raise DownstreamError(417, "unsupported_expectation")
            head.expect = True
        elif low == b"x-forwarded-for":
            if self.listener.config.forwarded_headers:
                head.xff = value if head.xff is None else head.xff + b", " + value
                return True
            return False
        elif low == b"x-forwarded-proto":
            return self.listener.config.forwarded_headers
        elif low == b"x-request-id":
            head.rid = True
            return False
        return low in HOP_BY_HOP

    def on_headers_complete(self) -> None:
        head: RequestHead = self._head  # type: ignore[assignment]
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        if head.chunked and head.cl is not None:
            raise DownstreamError(400, "content_length_with_transfer_encoding")
        if method == b"CONNECT":
            raise DownstreamError(405, "connect_not_allowed")
        url = head.url
        if url.startswith(b"/"):
            path, _, query = url.partition(b"?")
            target = url
        elif url == b"*" and method == b"OPTIONS":
            path, query, target = url, b"", url
        else:  # absolute-form: the authority wins over Host (RFC 9112 §3.2.2)
            try:
                # Any: httptools' stub says bytes and int, but a part the URL lacks is
                # None (compiled code would trust the stub and fail on None).
                parsed: Any = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise DownstreamError(400, "bad_request_target") from None
            url_host: bytes | None = parsed.host
            if url_host is None:
                raise DownstreamError(400, "bad_request_target")
            url_path: bytes | None = parsed.path
            url_query: bytes | None = parsed.query
            url_port: int | None = parsed.port
            path = url_path or b"/"
            query = url_query or b""
            target = path + (b"?" + query if query else b"")
            authority = url_host + (b":%d" % url_port if url_port else b"")
            headers = head.headers
            for i, low in enumerate(head.lowered):
                if low == b"host":
                    headers[i] = (headers[i][0], authority)
                    break
            else:
                headers.append((b"Host", authority))
                head.lowered.append(b"host")
            head.host = authority
        if head.host is None:
            if version != "1.0":
                raise DownstreamError(400, "missing_host")
            host = b""
        else:
            host = head.host.lower()
            host = host[:host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        if head.cl is not None and head.cl > self.limits.max_body_bytes:
            raise DownstreamError(413, "body_too_large")
        tokens = head.conn_tokens
        upgrade = None
        if head.upgrade is not None and tokens is not None and b"upgrade" in tokens:
            # h2c is never forwarded: it would bypass everything this proxy enforces.
            h2c = head.upgrade.strip().lower().startswith(b"h2c")
            upgrade = None if h2c else head.upgrade
        headers, lowered = head.headers, head.lowered
        if tokens and not tokens <= STANDARD_CONN_TOKENS:
            keep = [i for i, low in enumerate(lowered) if low not in tokens]
            headers = [headers[i] for i in keep]
            lowered = [lowered[i] for i in keep]
        cfg = self.listener.config
        if cfg.forwarded_headers:
            xff = self._client_b
            headers.append((b"x-forwarded-for", head.xff + b", " + xff if head.xff else xff))
            headers.append((b"x-forwarded-proto", b"http"))
            lowered += (b"x-forwarded-for", b"x-forwarded-proto")
        if cfg.request_id and not head.rid:
            headers.append((b"x-request-id", request_id()))
            lowered.append(b"x-request-id")
        route: Route | bool | None = False  # False: not matched yet
        if (head.cl is None and not head.chunked and head.upgrade is None and not head.expect
                and self._active is None and method != b"HEAD"):
            # A bodiless request with nothing else in progress: the plain lane when its
            # route has one (routing happens now, as _dispatch would do it now).
            self._head = None
            route = self.listener.router.match_head(host, path, headers, lowered)
            if route is not None and route.lane is not None:
                keep_alive = parser.should_keep_alive()
                if not keep_alive:
                    self._no_more = True
                self._lane(route, (method, target, path, query, version, headers, lowered,
                                   host, keep_alive, head.start, route))
                return
        body = RequestBody(length=head.cl, chunked=head.chunked, flow=self.flow)
        keep_alive = parser.should_keep_alive() and upgrade is None and (
            head.upgrade is None or tokens is None or b"upgrade" not in tokens)
        ex = Exchange(method, target, path, query, version, headers, lowered, host,
                      self.client, body, keep_alive, upgrade, head.start, self.listener.name)
        if head.expect and not body.empty and version == "1.1":
            body.on_first_attach = self._send_continue
        self._head = None
        self._reading = ex if not body.done else None
        if not keep_alive:
            self._no_more = True
        if self._active is None:
            if route is False:
                self._dispatch(ex)
            else:
                self._dispatch_to(ex, route)  # type: ignore[arg-type]
        else:
            self._queue.append(ex)
            if len(self._queue) >= self.limits.max_pipelined:
                self.flow.pause("pipeline")

    def on_body(self, data: bytes) -> None:
        ex = self._reading
        if ex is None:
            return
        body = ex.body
        if body.received + len(data) > self.limits.max_body_bytes:
            raise DownstreamError(413, "body_too_large")
        body.feed(data)

    def on_message_complete(self) -> None:
        ex, self._reading = self._reading, None
        if ex is not None:
            ex.body.end()

    def _upgraded(self, rest: bytes) -> None:
        """The parser stopped after an Upgrade (or h2c) request head."""
        ex = self._queue[-1] if self._queue else self._active
        if ex is not None and ex.upgrade is not None:
            self._early_tunnel += rest  # bytes the client sent before our 101
            self._no_more = True
            self.flow.pause("upgrade")
            return
        # h2c (or Upgrade without Connection: upgrade): the request was served as
        # plain HTTP/1.1; continue parsing with a fresh parser.
        self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    # --- dispatching and answering --------------------------------------------------
    def _dispatch(self, ex: Exchange) -> None:
        self._dispatch_to(ex, self.listener.router.match(ex))

    def _dispatch_to(self, ex: Exchange, route: Route | None) -> None:
        self._active = ex
        self._head_sent = False
        if route is None:
            self._send_response(ex, local_reply(404, "no_route"))
            return
        ex.route = route
        direct = route.direct
        if direct is not None:
            conn = direct.try_direct(ex, self._direct_head)
            if conn is ANSWERED:  # refused or a fallback, already answered
                return
            if conn is not None:
                self._direct = conn
                self._direct_q = self.listener.timeouts.add(
                    min(ex.start + route.timeout, ex.deadline), conn, length=route.timeout)
                return
        self._task = self.loop.create_task(self._run(ex, route.handler))

    # --- the plain lane (meshproxy.http.lane) ----------------------------------------
    def _lane(self, route: Route, parts: tuple) -> None:
        """Send a bodiless request on ``route``'s lane: pick, take an idle pooled
        connection, write the head, file the route timeout. Without an idle connection
        (or an endpoint) the request goes to the route's stack as on the fused path."""
        self._active = IN_LANE
        self._head_sent = False
        self._lane_parts = parts
        lane = route.lane
        assert lane is not None  # only a route with a lane is sent here
        cluster = lane.cluster
        ctx = lane.ctx
        ctx.now = now = self.loop.time()
        ep = cluster.balancer.pick(ctx, ())
        guard = lane.guard
        if guard is None:
            conn = cluster.take_idle(ep) if ep is not None else None
        elif ep is not None and cluster.pool(ep).idle:
            # Admitted only with an idle connection there, as on the fused path, so a
            # request that falls back to the stack is admitted once, by the stack.
            refusal = guard.admit(None, now)
            if refusal is not None:
                self._lane_exchange(ep, attempted=False)
                if isinstance(refusal, Response):
                    self._direct_head(refusal, None)
                else:
                    self._direct_head(None, refusal)
                return
            conn = cluster.take_idle(ep)
            if conn is None:
                guard.undo(guard.token, guard.rate_key)
            else:
                self._lane_admitted = (guard, guard.checked, guard.token, now)
        else:
            conn = None
        if conn is None:
            ex = self._lane_exchange(ep, attempted=False)
            self._task = self.loop.create_task(self._run(ex, route.handler))
            return
        assert ep is not None  # a connection was taken from its pool
        ep.active_requests += 1
        conn.send_lane(serialize(parts[0] + b" " + parts[1] + b" HTTP/1.1", parts[5], ()),
                       self, cluster, ep, now)
        self._direct = conn
        # The route timeout, filed in the listener's wheel without a call (its queue for
        # this timeout is kept by the lane; see meshproxy.http.deadlines).
        queue = lane.deadlines
        if queue is None:
            queue = lane.deadlines = self.listener.timeouts.queue(lane.timeout)
        when = parts[9] + lane.timeout
        queue[conn] = when
        wheel = self.listener.timeouts
        if when < wheel.timer_at:
            wheel.arm(when)
        self._direct_q = queue

    def _lane_exchange(self, ep: object, *, attempted: bool) -> Exchange:
        """The lane request as an Exchange, from here on the active one (it leaves the
        lane: a fallback, a failure, a response the lane does not answer)."""
        (method, target, path, query, version, headers, lowered, host, keep_alive, start,
         route) = self._lane_parts  # type: ignore[misc]
        self._lane_parts = None
        ex = Exchange(method, target, path, query, version, headers, lowered, host,
                      self.client, RequestBody(length=None, chunked=False, flow=self.flow),
                      keep_alive, None, start, self.listener.name)
        ex.route = route
        ex.endpoint = ep
        ex.attempts = 1 if attempted else 0
        if self._active is IN_LANE:
            self._active = ex
        return ex

    def lane_head(self, resp: Response | None, exc: ProxyError | None) -> None:
        """The upstream's answer is not the lane's kind (no or a large Content-Length,
        a 101): it continues as the fused path's response."""
        if self._lane_parts is not None:
            self._lane_exchange(self._direct_ep(), attempted=True)
        if self._lane_admitted is not None:
            self._lane_outcome(resp, exc, retry=True)
        self._direct_head(resp, exc)

    def lane_failed(self, exc: ProxyError, *, after_head: bool) -> None:
        """The lane's attempt failed: mapped to a local reply as on the fused path
        (the keep-alive race retried through the stack, unless a response had begun)."""
        if self._lane_parts is not None:
            self._lane_exchange(self._direct_ep(), attempted=True)
        if self._lane_admitted is not None:
            self._lane_outcome(None, exc, retry=not after_head)
        self._direct_head(None, exc, retry=not after_head)

    def _lane_outcome(self, resp: Response | None, exc: ProxyError | None, *,
                      retry: bool) -> None:
        """A guarded lane request left the lane: its outcome to the admissions, or,
        for the keep-alive race the stack retries (and admits again), their grant
        back; the same decision as ``_direct_head`` takes next."""
        guard, switches, token, started = self._lane_admitted  # type: ignore[misc]
        self._lane_admitted = None
        conn, ex = self._direct, self._active
        if (resp is None and retry and conn is not None and isinstance(ex, Exchange)
                and stale_retry_ok(ex, conn, exc)):  # type: ignore[arg-type]
            guard.undo(token)  # a lane's rate limit is keyed by nothing: no rate key
        else:
            guard.finish(switches, token, resp is not None and resp.status < 500, started,
                         self.loop.time())

    def _direct_ep(self) -> object:
        conn = self._direct
        return conn.lane_endpoint if conn is not None else None

    def lane_answer(self, status: int, headers: list[tuple[bytes, bytes]],
                    chunks: list[bytes] | tuple[()], length: int | None) -> None:
        """The lane's response, complete: framed as ``_send_response`` frames an
        upstream response with a known length, written in one go, and recorded."""
        if lane_observer is not None:
            lane_observer.append(status)
        conn, self._direct = self._direct, None
        if conn is not None:
            queue = self._direct_q
            if queue is not None:
                queue.pop(conn, None)
        now = self.loop.time()
        admitted = self._lane_admitted
        if admitted is not None:  # a guarded lane: the outcome to its admissions
            self._lane_admitted = None
            admitted[0].finish(admitted[1], admitted[2], status < 500, admitted[3], now)
        parts, self._lane_parts = self._lane_parts, None
        transport = self.transport
        if self._active is not IN_LANE or parts is None or self.closed or transport is None:
            return  # the client left meanwhile
        self._status = status
        self._head_sent = True
        close = (self._close_after or not parts[8] or self.listener.draining
                 or (self._no_more and not self._queue))
        if status == 204 or status == 304:  # no body; a 304 keeps its length, if any
            extra = [] if length is None or status == 204 else [b"content-length: %d" % length]
            body = b""
        else:
            assert length is not None  # the lane answers only responses of known length
            extra = [b"content-length: %d" % length]
            body = b"".join(chunks)
        if close:
            extra.append(b"connection: close")
            self._close_after = True
        elif parts[4] == "1.0":
            extra.append(b"connection: keep-alive")
        data = serialize(STATUS_LINES.get(status) or status_line(status), headers, extra) + body
        self._tx += len(data)
        transport.write(data)
        self._active = None
        parts[10].tally.record(status, now - parts[9])
        if self._close_after or self._queue or self._pending_error is not None:
            self._after_response()
        else:
            self._since = now  # idle from now: _after_response's usual case, inline

    def _direct_head(self, resp: Response | None, exc: ProxyError | None, *,
                     retry: bool = True) -> None:
        """The fused path's answer (see meshproxy.stack.direct_forward)."""
        conn, self._direct = self._direct, None
        if conn is not None:
            queue = self._direct_q
            if queue is not None:
                queue.pop(conn, None)
        ex = self._active
        if ex is None or self.closed:
            if resp is not None:
                resp.discard()
            return
        assert isinstance(ex, Exchange)  # a lane request is made an Exchange first
        if resp is None:
            assert exc is not None
            if retry and conn is not None and stale_retry_ok(ex, conn, exc):
                assert ex.route is not None
                self._task = self.loop.create_task(self._run(ex, ex.route.handler))
                return
            resp = local_reply(exc.status, exc.reason, headers=getattr(exc, "headers", None))
        self._send_response(ex, resp)

    async def _run(self, ex: Exchange, handler) -> None:
        try:
            resp = await handler(ex)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("handler failed for %r", ex)
            resp = local_reply(500, "internal_error")
        self._task = None
        if self._active is ex and not self.closed:
            self._send_response(ex, resp)
        else:
            resp.discard()

    def _refuse(self, err: DownstreamError) -> None:
        """The client sent something we refuse: answer (in order) and close."""
        self._refused = err
        self.flow.pause("refused")
        if self._active is None:
            self._reply_and_close(err)
        elif self._reading is self._active and not self._head_sent:
            # The request being answered is itself bad (body over the limit, a bad
            # chunk): drop its upstream exchange and answer now.
            if self._task is not None:
                self._task.cancel()
                self._task = None
            if self._direct is not None:
                conn, self._direct = self._direct, None
                queue = self._direct_q
                if queue is not None:
                    queue.pop(conn, None)
                self._active = None  # so the cancelled attempt's callback answers nothing
                conn.cancel()
            self._reply_and_close(err)
        elif self._reading is self._active:
            self.abort_body(err)
        else:
            self._pending_error = err

    # --- timeouts: checked by the listener's periodic tick -----------------------------
    def check_timeouts(self, now: float) -> None:
        """A head arriving for longer than the header timeout is refused (408, slowloris);
        a connection with nothing to do for longer than the idle timeout is closed; one
        whose client has taken none of the bytes waiting for it for the idle timeout
        (it stopped reading a response, or the last bytes before a close) is cut, as
        nginx's ``send_timeout`` does."""
        if self.closed:
            return
        tr = self.transport
        if (tr is not None and tr.out is not None
                and now - tr.blocked_since > self.limits.idle_timeout):
            tr.abort()
            return
        if self._refused is not None or self._active is not None:
            return
        head = self._head
        if head is not None:
            if now - head.start > self.limits.header_timeout:
                self._refuse(DownstreamError(408, "header_timeout"))
        elif (self._reading is None and self._tunnel is None
              and now - self._since > self.limits.idle_timeout):
            self.transport.close()  # type: ignore[union-attr]

    def drain(self) -> None:
        """Graceful shutdown: close now when idle, else after the current response.

        A connection no request has begun on yet is not idle but new: its client has
        connected to send one and would see a close as a failure (a client retries a
        request on a reused connection that closed, not on a fresh one). Its first
        response says ``Connection: close``; a client that sends nothing is closed by the
        idle timeout or cut at the end of the drain."""
        if (self._active is None and self._head is None and self._tunnel is None
                and not self._fresh):
            if self.transport is not None:
                self.transport.close()
        else:
            self._close_after = True  # the response in progress says so, then we close
