"""The upstream side of an exchange: one keep-alive HTTP/1.1 connection to an endpoint.

:class:`UpstreamConnection` is an asyncio ``Protocol`` with an httptools response
parser. It carries one exchange at a time: :meth:`UpstreamConnection.send` writes the
request head, attaches the request body (it is the body's sink, adding chunked
framing when the length is unknown) and returns a future for the response head. The
response body streams through a per-exchange :class:`UpstreamBody` (the
:class:`~meshproxy.http.message.BodySource` the downstream protocol reads), so the
connection can go back to its pool the moment the response is complete, even before
the client has been sent the last bytes.

Errors are translated here, once: a connection lost before the response is complete
is :class:`~meshproxy.errors.UpstreamReset`, an unparseable response
:class:`~meshproxy.errors.UpstreamProtocolError`, silence past the cluster's stream
idle timeout :class:`~meshproxy.errors.UpstreamTimeout` (reason ``upstream_idle``).
Neighbours: :mod:`meshproxy.http.pool` owns these connections; the downstream side is
:mod:`meshproxy.http.server`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools

from meshproxy.errors import ProxyError, UpstreamProtocolError, UpstreamReset, UpstreamTimeout
from meshproxy.http.flow import FlowControl
from meshproxy.http.headers import HOP_BY_HOP, STATUS_PHRASES, TOKENS_SEEN, connection_tokens
from meshproxy.http.lane import LANE_MAX_BODY
from meshproxy.http.message import BODY_HIGH_WATER, RequestBody, Response

if TYPE_CHECKING:
    from meshproxy.cluster import Cluster
    from meshproxy.endpoint import Endpoint
    from meshproxy.http.message import BodySource
    from meshproxy.http.pool import Pool
    from meshproxy.http.server import HttpServerProtocol


class ResponseSink(Protocol):
    """The downstream side of a response body."""

    def write_body(self, data: bytes) -> None: ...
    def end_body(self) -> None: ...
    def abort_body(self, exc: ProxyError) -> None: ...


#: Called once per exchange when it is over: (ok, status or 0, failure reason or "").
DoneCallback = Callable[[bool, int, str], None]
#: Called with the response head, or with the error that came instead.
HeadCallback = Callable[[Response | None, ProxyError | None], None]


_STANDARD_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})


class _HeadResponseDone(Exception):
    """Raised from the parser callback to stop after the head of a HEAD response."""


class _Unsolicited(Exception):
    """Raised from the parser callback when a response begins that no request asked
    for (bytes after a complete response: an upstream out of step, or one trying to
    smuggle a response to the next request on the connection)."""


class UpstreamBody:
    """The body of one upstream response, from the connection to the downstream sink."""

    __slots__ = ("chunks", "complete", "conn", "error", "sink", "size")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn: UpstreamConnection | None = conn
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.error: ProxyError | None = None
        self.sink: ResponseSink | None = None

    def start(self, sink: ResponseSink) -> tuple[list[bytes], bool]:
        if self.error is not None:
            raise self.error
        self.sink = sink
        chunks, self.chunks, self.size = self.chunks, [], 0
        if self.conn is not None:
            self.conn.flow.resume("unconsumed")
        return chunks, self.complete

    def feed(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.write_body(data)
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > BODY_HIGH_WATER and self.conn is not None:
            self.conn.flow.pause("unconsumed")

    def finish(self) -> None:
        self.complete = True
        self.conn = None
        if self.sink is not None:
            self.sink.end_body()

    def fail(self, exc: ProxyError) -> None:
        self.conn = None
        self.error = exc
        if self.sink is not None:
            self.sink.abort_body(exc)

    def pause_reading(self) -> None:
        if self.conn is not None:
            self.conn.flow.pause("downstream")

    def resume_reading(self) -> None:
        if self.conn is not None:
            self.conn.flow.resume("downstream")

    def discard(self) -> None:
        """Not forwarded (a retry or the rescue replaced it): drop it and, when it is
        still arriving, the connection with it."""
        conn, self.conn = self.conn, None
        self.sink = None
        self.chunks = []
        if conn is not None and not self.complete:
            conn.abort()

    # --- tunnel (after 101 Switching Protocols) -----------------------------------
    def set_peer_flow(self, flow: FlowControl) -> None:
        """In a tunnel: the client's reading, paused when the upstream cannot keep up."""
        if self.conn is not None:
            self.conn.peer_flow = flow

    def tunnel_write(self, data: bytes) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.write(data)

    def tunnel_close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()


class UpstreamConnection(asyncio.Protocol):
    """One connection to one endpoint, reused for sequential exchanges."""

    flow: FlowControl  # set on connect

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.closed = False
        self.reused = 0             # exchanges completed on this connection
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Response] | HeadCallback | None = None
        self._deliver: tuple[HeadCallback, Response] | None = None
        self._body: UpstreamBody | None = None
        self._on_done: DoneCallback | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._cl: int | None = None
        self._conn_tokens: frozenset[bytes] | None = None
        self._chunked_in = False
        self._close_after = False
        self._informational = False
        self._head_only = False
        self._req_done = True
        self._chunked_out = False
        self._tunnel = False
        self._rx = False
        self._silent = 0
        self._timer: asyncio.TimerHandle | None = None
        self._req_body: RequestBody | None = None
        self.peer_flow: FlowControl | None = None  # the client's reading, for backpressure
        # The plain lane (meshproxy.http.lane): the client waiting for this exchange,
        # the attempt's accounting, and the response collected whole.
        self._down: HttpServerProtocol | None = None
        self._cluster: Cluster | None = None
        self._ep: Endpoint | None = None
        self._started = 0.0
        self._lane_chunks: list[bytes] | None = None
        # A response completed inside a read goes back to the pool only once the whole
        # read is parsed (see data_received): bytes after it mean no reuse.
        self._feeding = False
        self._release_pending = False
        self._out_of_step = False

    # --- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(self.transport)  # type: ignore[arg-type]
        self._arm_idle_check()

    def data_received(self, data: bytes) -> None:
        self._rx = True
        if self._tunnel:
            if self._body is not None:
                self._body.feed(data)
            return
        if not self.busy:
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._start_tunnel(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadResponseDone):
                self._message_complete(reuse=False)
            elif self.busy:
                self._fail(UpstreamProtocolError(f"bad response: {e}"))
            else:
                self._out_of_step = True  # _Unsolicited: a response nobody asked for
        except httptools.HttpParserError as e:
            if self.busy:
                self._fail(UpstreamProtocolError(f"bad response: {e}"))
            else:
                self._out_of_step = True  # garbage after a complete response
        finally:
            self._feeding = False
        if self._release_pending:
            # The response completed in this read and nothing followed it: only now may
            # the connection serve another request (released earlier, a request started
            # from the completion's callbacks could have taken it, and the bytes after
            # the response would then have been parsed as that request's answer).
            self._release_pending = False
            if self._out_of_step:
                self.abort()
            else:
                self.pool.release(self)
        elif self._out_of_step:
            self.abort()
        if self._deliver is not None:
            (callback, resp), self._deliver = self._deliver, None
            callback(resp, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tunnel:
            body, self._body = self._body, None
            if body is not None:
                body.finish()
            self._done(True, 101, "")
        elif self.busy and exc is None and self._until_eof():
            self._message_complete(reuse=False)  # a close-delimited body ends here
        elif self.busy:
            self._fail(UpstreamReset("upstream closed the connection" + (
                f": {exc}" if exc else "")))
        self.pool.forget(self)
        self.parser = None  # type: ignore[assignment]  # it refers back to us: free by refcount

    def pause_writing(self) -> None:
        # The upstream is slower than the client sends (request body or tunnel bytes):
        # stop reading the client until the upstream's buffer drains.
        if self.peer_flow is not None:
            self.peer_flow.pause("upstream")

    def resume_writing(self) -> None:
        if self.peer_flow is not None:
            self.peer_flow.resume("upstream")

    # --- sending ---------------------------------------------------------------------
    def send(self, head: bytes, body: RequestBody | None, *, head_only: bool,
             on_done: DoneCallback, on_head: HeadCallback | None = None,
             ) -> asyncio.Future[Response]:
        """Write a request. The response head resolves the returned future or, when
        ``on_head`` is given, is passed to it (then the future is not used)."""
        assert not self.busy
        assert self.transport is not None
        self.busy = True
        self._silent = 0
        waiter: asyncio.Future[Response] | HeadCallback
        waiter = on_head if on_head is not None else self.loop.create_future()
        self._waiter = waiter
        self._on_done = on_done
        self._head_only = head_only
        self._informational = False
        self._close_after = False
        self._body = None
        self._headers = []
        self._cl = None
        self._chunked_in = False
        self._conn_tokens = None
        self.transport.write(head)
        if body is None or not (body.length or body.chunked):  # RequestBody.empty, inlined
            self._req_done = True
            self._req_body = None
            self.peer_flow = None
        else:
            self.peer_flow = body._flow
            self._req_done = False
            self._chunked_out = body.chunked
            self._req_body = body
            if not body.attach(self):
                raise UpstreamReset("request body cannot be replayed")
        return waiter  # type: ignore[return-value]

    def send_lane(self, head: bytes, down: HttpServerProtocol, cluster: Cluster,
                  ep: Endpoint, started: float) -> None:
        """Write a bodiless request of the plain lane: the response goes to
        ``down.lane_answer`` (or, when it is not the lane's kind, to ``down.lane_head``
        as the fused path's head callback); the attempt is accounted to ``cluster``.
        The caller has raised ``ep.active_requests``."""
        self.busy = True
        self._silent = 0
        self._down = down
        self._cluster = cluster
        self._ep = ep
        self._started = started
        self._head_only = False
        self._close_after = False
        self._req_done = True
        self.peer_flow = None
        self._headers = []
        self._cl = None
        self._chunked_in = False
        self._conn_tokens = None
        self.transport.write(head)  # type: ignore[union-attr]

    @property
    def lane_endpoint(self) -> Endpoint | None:
        """The endpoint of the lane exchange in progress (None once it is accounted)."""
        return self._ep

    def write_body(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        if self._chunked_out:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.transport.write(data)

    def end_body(self) -> None:
        if self._chunked_out and self.transport is not None and not self.closed:
            self.transport.write(b"0\r\n\r\n")
        self._req_done = True
        body, self._req_body = self._req_body, None
        if body is not None:
            body.detach()

    # --- parser callbacks: they only move bytes and flip flags ------------------------
    # The per-message state is reset by send/send_lane and after an informational (1xx)
    # head; on_message_begin only refuses a response no request is waiting for.
    def on_message_begin(self) -> None:
        if not self.busy:
            raise _Unsolicited

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._body is not None:
            return  # a trailer after a chunked body: not relayed (the head is gone)
        # Hop-by-hop headers are dropped here, so the head needs no second pass.
        low = name.lower()
        if low in HOP_BY_HOP:
            if low == b"content-length":
                self._cl = int(value)
            elif low == b"transfer-encoding":
                self._chunked_in = True
            elif low == b"connection":
                # the usual values are parsed once (connection_tokens' cache, read here
                # without its call)
                self._conn_tokens = TOKENS_SEEN.get(value) or connection_tokens(value)
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self._informational = True  # 100 Continue / 103 Early Hints: not forwarded
            self._headers = []  # the final head's fields start afresh
            self._cl = None
            self._chunked_in = False
            self._conn_tokens = None
            return
        self._status = status
        headers = self._headers
        extra = self._conn_tokens
        if extra and not extra <= _STANDARD_TOKENS:
            headers = self._headers = [h for h in headers if h[0].lower() not in extra]
        down = self._down
        if down is not None:
            cl = self._cl
            if ((cl is not None and cl <= LANE_MAX_BODY and status != 101)
                    or status == 204 or status == 304):  # no body, whatever the length
                self._lane_chunks = []  # collected whole; answered at message complete
                return
            # Not the lane's kind of response: from here on the fused path's code
            # (an Exchange is made of the request's parts) streams it.
            self._down = None
            self._waiter = down.lane_head
        self._body = body = UpstreamBody(self)
        # The reason phrase is not kept (no on_status callback: one fewer call per
        # response); the downstream side writes the standard phrase for the code.
        # (cast: the body's sink is the downstream protocol, a BodySink with more)
        resp = Response(status, headers, phrase=STATUS_PHRASES.get(status, b"-"),
                        source=cast("BodySource", body),
                        content_length=self._cl, upgrade=status == 101)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(resp)
            else:
                # Deliver once this read is parsed: the body bytes that came with the
                # head then leave in the same write as the head.
                self._deliver = (waiter, resp)
        if self._head_only and status != 101:
            raise _HeadResponseDone

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)
        elif self._lane_chunks is not None:
            self._lane_chunks.append(data)  # bounded: Content-Length <= LANE_MAX_BODY

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._status == 101:
            return  # llhttp ends the 101 "message" before the upgrade: the tunnel follows
        down = self._down
        if down is not None:
            self._lane_complete(down, self.parser.should_keep_alive())
            return
        self._message_complete(reuse=self.parser.should_keep_alive())

    def _until_eof(self) -> bool:
        """The response head arrived and its body is delimited by the connection's
        close (no Content-Length, not chunked: an HTTP/1.0-style upstream)."""
        return (self._body is not None and self._cl is None and not self._chunked_in
                and not self._head_only and self._status not in (101, 204, 304))

    # --- outcomes ----------------------------------------------------------------------
    def _message_complete(self, *, reuse: bool) -> None:
        down = self._down
        if down is not None:
            self._lane_complete(down, reuse)
            return
        body, self._body = self._body, None
        status = self._status
        self.busy = False
        self._waiter = None
        if not self._req_done:
            reuse = False  # answered before the request body was sent: framing is lost
            self.end_body()
        self.reused += 1
        if reuse and not self._close_after:
            self._release()
        else:
            self.abort()
        self._done(True, status, "")
        if body is not None:
            body.finish()

    def _lane_complete(self, down: HttpServerProtocol, reuse: bool) -> None:
        """A lane response is complete: the connection goes back to its pool, the
        attempt is accounted, and the client is answered in one write."""
        self._down = None
        chunks, self._lane_chunks = self._lane_chunks, None
        status = self._status
        self.busy = False
        self.reused += 1
        if reuse and not self._close_after:
            self._release()
        else:
            self.abort()
        ep, self._ep = self._ep, None
        assert ep is not None  # set with _cluster by send_lane
        assert self._cluster is not None
        self._cluster.attempt_done(ep, self._started, True, status)
        down.lane_answer(status, self._headers, chunks or (), self._cl)

    def _release(self) -> None:
        """Back to the pool for the next request: after the read being parsed, if this
        runs inside one (see data_received)."""
        if self._feeding:
            self._release_pending = True
        else:
            self.pool.release(self)

    def _fail(self, exc: ProxyError) -> None:
        if not self.busy:
            return
        self.busy = False
        down, self._down = self._down, None
        if down is not None:
            # After the head arrived the request is not retried (bytes of a response
            # came back): the client gets the error as a local reply.
            after_head, self._lane_chunks = self._lane_chunks is not None, None
            self.abort()
            down.lane_failed(exc, after_head=after_head)
            self._done(False, 0, exc.reason)
            return
        waiter, self._waiter = self._waiter, None
        if self._deliver is not None:  # the head came but was not handed over yet
            waiter, self._deliver = self._deliver[0], None
        body, self._body = self._body, None
        if self._req_body is not None:
            self._req_body.detach()
            self._req_body = None
        self.abort()
        if waiter is not None:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_exception(exc)
            else:
                waiter(None, exc)
        if body is not None:
            body.fail(exc)
        self._done(False, 0, exc.reason)

    def _done(self, ok: bool, status: int, reason: str) -> None:
        cb, self._on_done = self._on_done, None
        if cb is not None:
            cb(ok, status, reason)
            return
        ep, self._ep = self._ep, None
        if ep is not None:  # an exchange of the plain lane (send_lane)
            assert self._cluster is not None  # set with _ep by send_lane
            self._cluster.attempt_done(ep, self._started, ok, status, reason)

    def _start_tunnel(self, rest: bytes) -> None:
        self._tunnel = True
        self.busy = False
        self.pool.detach(self)  # a tunnel never returns to the pool
        if rest and self._body is not None:
            self._body.feed(rest)

    def abort(self) -> None:
        """Close now; an exchange in progress fails with a reset."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)

    def cancel(self) -> None:
        """The exchange's caller gave up (timeout, cancelled): drop the connection."""
        if self.busy:
            self._fail(UpstreamTimeout("cancelled", reason="route_timeout"))

    # --- stream idle timeout: a periodic check, not a timer per exchange ---------------
    def _arm_idle_check(self) -> None:
        self._timer = self.loop.call_later(self.pool.stream_idle_timeout / 2, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self.busy or self._tunnel:
            if self._rx:
                self._silent = 0
            else:
                self._silent += 1
                if self._silent >= 2 and not self._tunnel:
                    self._fail(UpstreamTimeout("no byte from upstream within the stream idle "
                                               "timeout", reason="upstream_idle"))
                    return
        self._rx = False
        self._arm_idle_check()

    def __repr__(self) -> str:
        return (f"<UpstreamConnection {self.pool.endpoint.address} busy={self.busy} "
                f"closed={self.closed} reused={self.reused}>")
