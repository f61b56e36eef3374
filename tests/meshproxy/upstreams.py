"""Deliberately misbehaving upstream HTTP servers for proxy tests (httpx's test servers).

:class:`Upstream` is a small HTTP/1.1 server on a real loopback socket, written on raw
asyncio streams so that it can break the protocol on purpose. What it does depends on
the request path:

==========================  ==========================================================
``/echo`` (and anything     200, JSON body with method, target, headers, body length,
not below)                  body sha256, connection number and request number on it
``/status/{code}``          that status (204/304 without body), ``x-upstream: name``
``/slow/{seconds}``         waits, then answers like ``/echo``
``/hang``                   reads the request and never answers
``/reset``                  closes the connection with a TCP RST before answering
``/reset-mid-body``         sends a head promising 1000 bytes, 10 of them, then RST
``/chunked/{n}``            n chunks of ``chunk-i\n``, chunked encoding
``/trailers``               a chunked body followed by a trailer field
``/big/{bytes}``            a body of that many bytes, with Content-Length
``/huge-headers/{bytes}``   a response header of that size
``/close``                  answers with ``Connection: close`` and closes
``/close-delimited``        an HTTP/1.0 answer without length: the close ends the body
``/early``                  answers (and closes) before reading the request body
``/garbage``                answers with bytes that are not HTTP
``/websocket``              RFC 6455 handshake (101), then echoes raw tunnel bytes
``/drip/{n}/{interval}``    n chunks, one every interval seconds (slow streaming)
==========================  ==========================================================

Every server counts connections and requests, and names itself in ``x-upstream`` so
tests can see which endpoint answered. Other helpers' tests reuse it.

:class:`Scripted` is rawer still: every bodiless request head it reads is answered with
whatever bytes a test's function returns (several responses in one write, a 1xx before
the final head), for the upstream misbehaviours the path table cannot express.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import struct
from collections.abc import Callable

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Upstream:
    """One misbehaving HTTP/1.1 server on 127.0.0.1."""

    def __init__(self, name: str = "up", *, port: int = 0, delay: float = 0.0) -> None:
        self.name = name
        self.port = port
        self.delay = delay        # added before every answer (a uniformly slow server)
        self.connections = 0
        self.requests: list[dict] = []
        self.status_override: int | None = None  # answer every request with this status
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Upstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._serve(reader, writer, self.connections)
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback cannot take a cancelled task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     conn_no: int) -> None:
        n = 0
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    return
                n += 1
                req["conn"] = conn_no
                req["n"] = n
                self.requests.append(req)
                if self.delay:
                    await asyncio.sleep(self.delay)
                keep = await self._answer(req, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def _answer(self, req: dict, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        path = req["path"]
        parts = path.strip("/").split("/")
        hdr = [("x-upstream", self.name), ("x-upstream-conn", str(req["conn"]))]
        if self.status_override is not None:
            return await respond(writer, self.status_override, b"override\n", hdr)
        if parts[0] == "status":
            code = int(parts[1])
            body = b"" if code in (204, 304) else f"status {code}\n".encode()
            return await respond(writer, code, body, hdr, head=req["method"] == "HEAD")
        if parts[0] == "slow":
            await asyncio.sleep(float(parts[1]))
        if parts[0] == "hang":
            await asyncio.sleep(3600)
        if parts[0] == "reset":
            _rst(writer)
            return False
        if parts[0] == "reset-mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            await writer.drain()
            await asyncio.sleep(0.05)
            _rst(writer)
            return False
        if parts[0] == "chunked":
            writer.write(_head(200, [*hdr, ("transfer-encoding", "chunked")]))
            for i in range(int(parts[1])):
                c = f"chunk-{i}\n".encode()
                writer.write(b"%x\r\n%b\r\n" % (len(c), c))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if parts[0] == "trailers":
            writer.write(_head(200, [*hdr, ("transfer-encoding", "chunked"),
                                     ("trailer", "x-checksum")])
                         + b"3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n")
            await writer.drain()
            return True
        if parts[0] == "drip":
            writer.write(_head(200, [*hdr, ("transfer-encoding", "chunked")]))
            for i in range(int(parts[1])):
                c = f"drip-{i}\n".encode()
                writer.write(b"%x\r\n%b\r\n" % (len(c), c))
                await writer.drain()
                await asyncio.sleep(float(parts[2]))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if parts[0] == "big":
            size = int(parts[1])
            writer.write(_head(200, [*hdr, ("content-length", str(size))]))
            block = b"x" * 65536
            left = size
            while left > 0:
                writer.write(block[:left])
                left -= 65536
                await writer.drain()
            return True
        if parts[0] == "huge-headers":
            return await respond(writer, 200, b"ok\n", [*hdr, ("x-big", "h" * int(parts[1]))])
        if parts[0] == "close":
            await respond(writer, 200, b"bye\n", [*hdr, ("connection", "close")])
            return False
        if parts[0] == "early":
            await respond(writer, 200, b"early\n", [*hdr, ("connection", "close")])
            await asyncio.sleep(0.5)  # keep reading nothing for a while, then leave
            return False
        if parts[0] == "close-delimited":
            writer.write(b"HTTP/1.0 200 OK\r\nx-upstream: " + self.name.encode()
                         + b"\r\n\r\nuntil the end")
            await writer.drain()
            return False
        if parts[0] == "garbage":
            writer.write(b"SPDY/9 what is this\r\n\r\n")
            await writer.drain()
            return False
        if parts[0] == "websocket" and req["headers"].get("upgrade", "").lower() == "websocket":
            key = req["headers"].get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            writer.write(_head(101, [("upgrade", "websocket"), ("connection", "Upgrade"),
                                     ("sec-websocket-accept", accept)],
                               phrase="Switching Protocols"))
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return False
        body = json.dumps({
            "upstream": self.name, "method": req["method"], "target": req["target"],
            "headers": req["raw_headers"], "body_len": len(req["body"]),
            "body_sha256": hashlib.sha256(req["body"]).hexdigest(),
            "conn": req["conn"], "n": req["n"],
        }).encode()
        return await respond(writer, 200, body, [*hdr, ("content-type", "application/json")],
                             head=req["method"] == "HEAD")


def _head(status: int, headers: list[tuple[str, str]], phrase: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def respond(writer: asyncio.StreamWriter, status: int, body: bytes,
                  headers: list[tuple[str, str]], *, head: bool = False) -> bool:
    hs = list(headers)
    if status not in (204, 304):
        hs.append(("content-length", str(len(body))))
    writer.write(_head(status, hs) + (b"" if head or status in (204, 304) else body))
    await writer.drain()
    return not any(k == "connection" and v == "close" for k, v in headers)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> dict | None:
    """Read one request (head and body, Content-Length or chunked); None at EOF.
    For ``/early`` the body is left unread (that upstream answers before it)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    if head.split(b" ", 2)[1].startswith(b"/early"):
        return {"method": "POST", "target": "/early", "path": "/early", "headers": {},
                "raw_headers": [], "body": b""}
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    raw_headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    headers = {k.lower(): v for k, v in raw_headers}
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return {"method": method, "target": target, "path": target.split("?")[0],
            "headers": headers, "raw_headers": raw_headers, "body": body}


class Scripted:
    """A raw HTTP/1.1 upstream on 127.0.0.1 answering each request head (bodiless
    requests only) with ``answer(target, connection_number)``, written as one send.
    Use as ``async with Scripted(answer) as up: ... up.address``."""

    def __init__(self, answer: Callable[[bytes, int], bytes]) -> None:
        self.answer = answer
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self.answer(head.split(b" ", 2)[1], number))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
