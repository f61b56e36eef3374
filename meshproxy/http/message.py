"""What one exchange passes along the layers: the request, its body stream, the response.

:class:`Exchange` is the request as the downstream protocol parsed it plus per-request
state the layers share (route, deadline, attempts). :class:`RequestBody` streams the
body from the downstream protocol to whichever upstream connection is attached, with
backpressure, and can retain what it sent (within a bound) so a retry can replay it.
:class:`Response` is either an upstream response whose body streams through a
:class:`BodySource`, or a local reply with a small in-memory body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from meshproxy.http.headers import Headers, first_value, serialize

if TYPE_CHECKING:
    from meshproxy.http.flow import FlowControl

#: Buffered body bytes without a consumer before the client's reading is paused.
BODY_HIGH_WATER: Final = 256 * 1024


class BodySink(Protocol):
    """Where request or response body bytes go."""

    def write_body(self, data: bytes) -> None: ...
    def end_body(self) -> None: ...


class RequestBody:
    """The request body, streamed from the client to the attached upstream connection.

    Bytes arriving before a sink is attached are buffered; past ``BODY_HIGH_WATER`` the
    client's reading is paused until one attaches. With :meth:`retain` the chunks sent
    are also kept (up to a bound) so a retry layer can re-attach the body to another
    connection; past the bound :attr:`replayable` turns False.
    """

    __slots__ = ("_attached", "_buffer", "_buffered", "_flow", "_keep_limit", "_kept",
                 "_kept_bytes", "chunked", "done", "length", "on_first_attach", "received",
                 "sink")

    def __init__(self, *, length: int | None, chunked: bool, flow: FlowControl | None) -> None:
        self.length = length          # Content-Length as declared, or None
        self.chunked = chunked
        self.done = not length and not chunked
        self.received = 0
        self.sink: BodySink | None = None
        self.on_first_attach: Callable[[], None] | None = None
        self._attached = False
        self._flow = flow
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._kept: list[bytes] | None = None
        self._kept_bytes = 0
        self._keep_limit = 0

    @property
    def empty(self) -> bool:
        return not self.length and not self.chunked

    @property
    def replayable(self) -> bool:
        """True when a new :meth:`attach` can still send the whole body."""
        return not self._attached or self._kept is not None or self.received == 0

    def retain(self, limit: int) -> None:
        """Keep up to ``limit`` bytes of the body for replay by a retry. Call before
        the body is first attached; past the bound the body stops being replayable."""
        if self._kept is None and not self._attached:
            self._kept = list(self._buffer)
            self._kept_bytes = self._buffered
            self._keep_limit = limit
            if self._kept_bytes > limit:
                self._kept = None

    # --- producer side (the downstream protocol) ---------------------------------
    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self._kept is not None:
            self._kept_bytes += len(data)
            if self._kept_bytes > self._keep_limit:
                self._kept = None
            else:
                self._kept.append(data)
        sink = self.sink
        if sink is not None:
            sink.write_body(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_HIGH_WATER and self._flow is not None:
            self._flow.pause("body")

    def end(self) -> None:
        self.done = True
        if self.sink is not None:
            self.sink.end_body()

    # --- consumer side (an upstream connection) ----------------------------------
    def attach(self, sink: BodySink) -> bool:
        """Send what is buffered (or retained, on a replay) to ``sink`` and stream
        the rest; False when a replay is impossible (not retained, or too large)."""
        if self.on_first_attach is not None:
            cb, self.on_first_attach = self.on_first_attach, None
            cb()
        if self._attached:
            if self._kept is not None:
                chunks = self._kept
            elif self.received == 0:
                chunks = []
            else:
                return False
        else:
            self._attached = True
            chunks = self._buffer
        self.sink = sink
        for c in chunks:
            sink.write_body(c)
        self._buffer = []
        self._buffered = 0
        if self._flow is not None:
            self._flow.resume("body")
        if self.done:
            sink.end_body()
        return True

    def detach(self) -> None:
        self.sink = None


class BodySource(Protocol):
    """An upstream response body: started once with a sink, paused by backpressure."""

    def start(self, sink: BodySink) -> tuple[list[bytes], bool]:
        """Attach ``sink``; returns the chunks already received and whether the body is
        complete (then the sink gets no further call)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def discard(self) -> None:
        """The response will not be forwarded (a retry replaced it): drop it."""


class Response:
    """A response head plus its body: streamed from upstream, or a local reply."""

    __slots__ = ("body", "content_length", "headers", "local_reason", "phrase", "source",
                 "status", "upgrade", "version")

    def __init__(self, status: int, headers: Headers, *, phrase: bytes = b"",
                 body: bytes | None = None, source: BodySource | None = None,
                 content_length: int | None = None, local_reason: str | None = None,
                 upgrade: bool = False, version: str = "1.1") -> None:
        self.status = status
        self.phrase = phrase
        self.headers = headers
        self.body = body
        self.source = source
        self.content_length = content_length if body is None else len(body)
        self.local_reason = local_reason
        self.upgrade = upgrade
        self.version = version

    def discard(self) -> None:
        if self.source is not None:
            self.source.discard()
            self.source = None

    def __repr__(self) -> str:
        kind = f"local {self.local_reason}" if self.local_reason else "upstream"
        return f"<Response {self.status} {kind}>"


class Exchange:
    """One request travelling through the layers, and the state they share."""

    __slots__ = ("_head", "attempts", "body", "client", "deadline", "endpoint", "headers",
                 "host", "keep_alive", "listener", "lowered", "method", "path", "query",
                 "route", "start", "target", "upgrade", "values", "version")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes,
                 version: str, headers: Headers, lowered: list[bytes], host: bytes,
                 client: str, body: RequestBody, keep_alive: bool, upgrade: bytes | None,
                 start: float, listener: str) -> None:
        # Positional (unlike the rest of the code base): built once per request on the
        # hot path, where keyword passing of fourteen arguments shows in profiles.
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers        # end-to-end headers to forward (already filtered)
        self.lowered = lowered        # lower-cased names of ``headers``, parallel
        self.host = host
        self.client = client
        self.body = body
        self.keep_alive = keep_alive
        self.upgrade = upgrade        # the Upgrade header's value when forwarded, else None
        self.start = start
        self.listener = listener
        self._head: bytes | None = None
        self.route: Any = None
        self.deadline = float("inf")  # loop-clock time by which the response head is due
        self.attempts = 0
        self.endpoint: Any = None     # the endpoint of the current (or last) attempt
        self.values: dict[str, Any] | None = None  # per-request scratch for layers

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` lower-case), or None."""
        return first_value(self.headers, self.lowered, name)

    def copy(self) -> Exchange:
        """A shallow copy (``copy.copy`` cannot copy the compiled class)."""
        new = Exchange(self.method, self.target, self.path, self.query, self.version,
                       self.headers, self.lowered, self.host, self.client, self.body,
                       self.keep_alive, self.upgrade, self.start, self.listener)
        new._head = self._head
        new.route = self.route
        new.deadline = self.deadline
        new.attempts = self.attempts
        new.endpoint = self.endpoint
        new.values = self.values
        return new

    def upstream_head(self) -> bytes:
        """The request head to send upstream (computed once, reused by retries)."""
        head = self._head
        if head is None:
            extra = []
            body = self.body
            if body.chunked:
                extra.append(b"transfer-encoding: chunked")
            elif body.length is not None:
                extra.append(b"content-length: %d" % body.length)
            if self.upgrade is not None:
                extra.append(b"connection: upgrade")
                extra.append(b"upgrade: " + self.upgrade)
            head = self._head = serialize(
                self.method + b" " + self.target + b" HTTP/1.1", self.headers, extra)
        return head

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode()} {self.target[:80]!r}>"
