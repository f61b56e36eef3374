"""A strict little HTTP/1.1 client on raw sockets, for proxy tests.

Tests need to send exact bytes (malformed, pipelined, slow) and to see exactly what
came back, so this is not a general client: :class:`RawConn` writes bytes and parses
responses with httptools' strict response parser, one at a time, in order.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httptools


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    keep_alive: bool = True

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-mesh-reason")


class _Collector:
    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.done: list[Reply] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self.parser: httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.head_only:
            self._finish()
            raise _HeadDone

    def on_body(self, data: bytes) -> None:
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._finish()

    def _finish(self) -> None:
        p = self.parser
        assert p is not None
        status = p.get_status_code()
        if 100 <= status < 200 and status != 101:
            return
        self.done.append(Reply(status, dict(self._headers), b"".join(self._body),
                               self._headers, p.should_keep_alive()))


class _HeadDone(Exception):
    pass


class RawConn:
    """One client connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._buf = b""

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawConn:
        r, w = await asyncio.open_connection(host, port)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_reply(self, *, head_only: bool = False, timeout: float = 10.0) -> Reply:
        """Read exactly one response (the bytes after it stay buffered)."""
        col = _Collector(head_only)
        parser = httptools.HttpResponseParser(col)
        col.parser = parser
        data, self._buf = self._buf, b""
        async with asyncio.timeout(timeout):
            while True:
                if data:
                    consumed = await self._feed(parser, col, data)
                    if col.done:
                        self._buf = data[consumed:]
                        return col.done[0]
                data = await self.reader.read(65536)
                if not data:
                    try:
                        parser.feed_data(b"")  # close-delimited bodies end here
                    except httptools.HttpParserError:
                        pass
                    if col.done:
                        return col.done[0]
                    raise ConnectionError("connection closed before a complete response")

    async def _feed(self, parser, col: _Collector, data: bytes) -> int:
        # Feed byte ranges so that we know where one response ends (pipelining).
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _HeadDone):
                raise
            return data.index(b"\r\n\r\n") + 4
        except httptools.HttpParserUpgrade as e:
            return e.args[0]
        if col.done and len(data) > 1:
            # More than one response in this read: find the boundary by re-feeding.
            return self._boundary(data, col.head_only)
        return len(data)

    @staticmethod
    def _boundary(data: bytes, head_only: bool) -> int:
        for end in range(1, len(data) + 1):
            col = _Collector(head_only)
            p = httptools.HttpResponseParser(col)
            col.parser = p
            try:
                p.feed_data(data[:end])
            except httptools.HttpParserError:
                return end
            if col.done:
                return end
        return len(data)

    async def read_all(self, timeout: float = 10.0) -> bytes:
        """Everything until the proxy closes the connection."""
        out = self._buf
        self._buf = b""
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                out += chunk
        return out

    async def read_count(self, n: int, timeout: float = 20.0) -> int:
        """Read ``n`` bytes as they come (without keeping them); how many came before
        the peer closed (``n`` when all did)."""
        got = 0
        while got < n:
            chunk = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
            if not chunk:
                break
            got += len(chunk)
        return got

    async def closed_by_peer(self, timeout: float = 10.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b"" and not self._buf
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def request(port: int, method: str = "GET", target: str = "/echo", *,
                  headers: dict[str, str] | None = None, body: bytes = b"",
                  host: str = "test") -> Reply:
    """One request on a fresh connection."""
    conn = await RawConn.open(port)
    try:
        await conn.send(build(method, target, headers=headers, body=body, host=host))
        return await conn.read_reply(head_only=method == "HEAD")
    finally:
        await conn.close()


def build(method: str = "GET", target: str = "/echo", *, headers: dict[str, str] | None = None,
          body: bytes = b"", host: str = "test") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    hs = dict(headers or {})
    if body and "transfer-encoding" not in {k.lower() for k in hs}:
        hs.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in hs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
