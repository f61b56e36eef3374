"""Writing responses to the client: the one place that answers (a mixin of the
downstream protocol, :class:`meshproxy.http.server.HttpServerProtocol`).

:meth:`ResponseWriter._send_response` frames a response for this client: it keeps
Content-Length when known, re-chunks a body of unknown length for HTTP/1.1 clients and
delimits it by closing for HTTP/1.0 ones, sends no body for HEAD, 204 and 304, adds
``x-mesh-reason`` to local replies (and counts them), and decides whether the
connection closes after it. The head and the body bytes already received leave in one
write; the rest of the body streams through the ``ResponseSink`` methods
(``write_body``, ``end_body``, ``abort_body``). A 101 turns the connection into a
byte tunnel. When a response ends, the next pipelined request is dispatched.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

from meshproxy.errors import DownstreamError, ProxyError
from meshproxy.http.headers import serialize
from meshproxy.http.message import Exchange, Response
from meshproxy.http.reply import local_reply

if TYPE_CHECKING:
    from meshproxy.http.flow import FlowControl
    from meshproxy.http.lane import LaneActive
    from meshproxy.http.message import BodySource
    from meshproxy.http.transport import PollTransport
    from meshproxy.http.upstream import UpstreamBody
    from meshproxy.listener import HttpListener


class ResponseWriter:
    """Response framing and streaming for the downstream protocol (state lives there)."""

    # Set by HttpServerProtocol.__init__; listed here for the reader and type checkers.
    transport: PollTransport | None
    listener: HttpListener
    loop: asyncio.AbstractEventLoop
    flow: FlowControl
    closed: bool
    _active: Exchange | LaneActive | None
    _queue: deque[Exchange]
    _streaming: BodySource | None
    _tunnel: UpstreamBody | None
    _early_tunnel: bytes
    _head_sent: bool
    _chunked: bool
    _close_after: bool
    _no_more: bool
    _reading: Exchange | None
    _pending_error: DownstreamError | None
    _status: int
    _since: float
    _rx: int
    _tx: int

    def _dispatch(self, ex: Exchange) -> None:
        """Start the next exchange. ``HttpServerProtocol`` overrides it (the only class
        built on this mixin; the pipelining tests go through it); declared as a method,
        not an annotation, because the compiled build would make an annotation an unset
        slot (meshproxy/http/__init__.py)."""
        raise NotImplementedError

    def _send_continue(self) -> None:
        if self.transport is not None and not self.closed and not self._head_sent:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _send_response(self, ex: Exchange, resp: Response) -> None:
        """Write a response head and start its body: the only place that answers."""
        transport = self.transport
        if transport is None or self.closed:
            resp.discard()
            return
        status = resp.status
        self._status = status
        self._head_sent = True
        extra: list[bytes] = []
        if resp.local_reason is not None:
            extra.append(b"x-mesh-reason: " + resp.local_reason.encode())
            self.listener.count_local_reply(resp.local_reason, status)
        if resp.upgrade and ex.upgrade is not None:
            self._start_tunnel(ex, resp)
            return
        if resp.upgrade:  # a 101 we did not ask for: refuse it
            resp.discard()
            resp = local_reply(502, "upstream_protocol_error")
            status = self._status = 502
            extra = [b"x-mesh-reason: upstream_protocol_error"]
            self.listener.count_local_reply("upstream_protocol_error", 502)
        # Answered before its body was fully received (an early upstream answer):
        # the rest of that body would stall the connection, so it closes after this.
        close = (self._close_after or not ex.keep_alive or self.listener.draining
                 or (self._no_more and not self._queue) or self._reading is ex)
        no_body = ex.method == b"HEAD" or status in (204, 304) or status < 200
        chunked = False
        if no_body:
            if resp.content_length is not None and status != 204:
                extra.append(b"content-length: %d" % resp.content_length)
        elif resp.content_length is not None:
            extra.append(b"content-length: %d" % resp.content_length)
        elif ex.version == "1.1":
            extra.append(b"transfer-encoding: chunked")
            chunked = True
        else:
            close = True  # HTTP/1.0 client, unknown length: the close delimits the body
        if close:
            extra.append(b"connection: close")
            self._close_after = True
        elif ex.version == "1.0":
            extra.append(b"connection: keep-alive")
        phrase = resp.phrase or b"-"
        head = serialize(b"HTTP/1.1 %d %b" % (status, phrase), resp.headers, extra)
        self._chunked = chunked
        if resp.source is None:
            data = head if no_body or not resp.body else head + resp.body
            self._tx += len(data)
            transport.write(data)
            self._response_done()
            return
        source = resp.source
        try:
            chunks, complete = source.start(self)
        except ProxyError as e:  # failed between head and start: cut the connection
            self.abort_body(e)
            return
        if no_body:
            chunks = []
        if chunks:
            if chunked:
                parts = [head]
                for c in chunks:
                    parts.append(b"%x\r\n%b\r\n" % (len(c), c))
                data = b"".join(parts)
            else:
                data = head + b"".join(chunks)
        else:
            data = head
        if complete:
            if chunked:
                data += b"0\r\n\r\n"
            self._tx += len(data)
            transport.write(data)
            self._response_done()
            return
        self._tx += len(data)
        transport.write(data)
        self._streaming = source
        if no_body:  # a 204/304 with a body still arriving: not for this client
            self._streaming = None
            source.discard()
            self._response_done()

    # ResponseSink: the upstream body streams here.
    def write_body(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._tx += len(data)
        self.transport.write(data)

    def end_body(self) -> None:
        if self._tunnel is not None:
            self.end_tunnel()
            return
        if self._streaming is None:
            return
        self._streaming = None
        if self._chunked and self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")
            self._tx += 5
        self._response_done()

    def abort_body(self, exc: ProxyError) -> None:
        # The upstream failed mid-body: the client cannot be told with a status any
        # more; cutting the connection is the only honest signal.
        self._streaming = None
        self._record(self._active, failed=True)
        self._active = None
        if self.transport is not None:
            self.transport.abort()

    def _response_done(self) -> None:
        ex, self._active = self._active, None
        self._record(ex, failed=False)
        self._after_response()

    def _after_response(self) -> None:
        """A response is written: close, or go on with the next pipelined request."""
        if self._close_after:
            if self.transport is not None:
                self.transport.close()
            return
        if self._queue:
            nxt = self._queue.popleft()
            self.flow.resume("pipeline")
            self._dispatch(nxt)
        elif self._pending_error is not None:
            err, self._pending_error = self._pending_error, None
            self._reply_and_close(err)
        else:
            self._since = self.loop.time()

    def _record(self, ex: Exchange | LaneActive | None, *, failed: bool) -> None:
        if not isinstance(ex, Exchange):  # none, or the lane's (it records its own)
            return
        route = ex.route
        if route is not None:
            route.tally.record(self._status, self.loop.time() - ex.start)

    def flush_bytes(self) -> None:
        if self._rx or self._tx:
            self.listener.count_bytes(self._rx, self._tx)
            self._rx = self._tx = 0

    def _reply_and_close(self, err: DownstreamError) -> None:
        self._close_after = True
        self._queue.clear()
        ex = self._active
        if ex is None:
            self._active = None
        self._status = err.status
        resp = local_reply(err.status, err.reason)
        head = serialize(b"HTTP/1.1 %d %b" % (err.status, resp.phrase),
                         resp.headers, [b"x-mesh-reason: " + err.reason.encode(),
                                        b"content-length: %d" % len(resp.body or b""),
                                        b"connection: close"])
        self.listener.count_local_reply(err.reason, err.status)
        if self.transport is not None and not self.closed:
            data = head + (resp.body or b"")
            self._tx += len(data)
            self.transport.write(data)
            self.transport.close()
        self._active = None

    # --- upgrade tunnel -------------------------------------------------------------
    def _start_tunnel(self, ex: Exchange, resp: Response) -> None:
        source = cast("UpstreamBody", resp.source)
        assert ex.upgrade is not None  # a 101 answers a request that asked to upgrade
        head = serialize(b"HTTP/1.1 101 %b" % (resp.phrase or b"Switching Protocols"),
                         resp.headers, [b"connection: upgrade", b"upgrade: " + ex.upgrade])
        self._tunnel = source
        chunks, complete = source.start(self)
        source.set_peer_flow(self.flow)
        self._chunked = False
        data = head + b"".join(chunks)
        self._tx += len(data)
        self.transport.write(data)  # type: ignore[union-attr]
        self._record(ex, failed=False)
        self._active = None
        if self._early_tunnel:
            source.tunnel_write(self._early_tunnel)
            self._early_tunnel = b""
        self.flow.resume("upgrade")
        if complete:
            self.end_tunnel()

    def end_tunnel(self) -> None:
        self._tunnel = None
        if self.transport is not None:
            self.transport.close()
