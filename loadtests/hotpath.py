"""``python -m loadtests.hotpath``: the proxy's user-space CPU per request, kernel aside.

The socket benchmarks (``loadtests.bench``, ``loadtests.resilience_bench``) measure
what users get, but on a small shared machine their rounds swing by 2x with other
load, and half of the proxy's CPU there is the kernel (loopback writes and the wake-ups
they cause), the same for every configuration. This one isolates what the proxy's
own code costs: a real :class:`~meshproxy.proxy.Proxy` built from a config (the same
listeners, routers, layer stacks, pools and resilience state as in production), one
downstream connection and one pooled upstream connection whose transports are in
memory. Each request is fed to the downstream protocol as bytes, the request head the
proxy writes upstream is checked, a canned nginx response is fed to the upstream
protocol, and the response the proxy writes to the client is checked. Everything
between (httptools parsing both ways, routing, the plain lane for the plain route, the
fused path with its admissions for the guarded one, metrics) is the production code,
synchronously.

It reports microseconds of CPU per request (best of several repeats: the least
disturbed run, since other load only ever adds time) for a plain route and for the
resilience benchmark's guarded route (breaker, rate limit consulted on every request,
automatic switch), and their ratio: the overhead of issue #5 without the kernel's
share, which dilutes it in the socket benchmark. Nothing listens for traffic: the
proxy's listener binds an ephemeral loopback port that no request reaches.

The client's side is the proxy's own transport (:class:`~meshproxy.http.transport.
PollTransport`, what accepted clients get) over :class:`MemorySocket`, which takes every
send whole; the upstream side, an asyncio transport in production, is
:class:`MemoryTransport`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
from collections.abc import Sequence

import uvloop
import yaml

from loadtests.resilience_bench import GUARDS
from loadtests.targets import HOST
from meshproxy.config import parse_config
from meshproxy.http.server import HttpServerProtocol
from meshproxy.http.transport import PollTransport
from meshproxy.http.upstream import UpstreamConnection
from meshproxy.proxy import Proxy

REQUEST = b"GET /index HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
#: What the benchmark's nginx backend answers (``loadtests.targets``), byte for byte
#: in shape: five headers, a 62-byte body.
BODY = b"0123456789012345678901234567890123456789012345678901234567890\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 01:09:19 GMT"
            b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive"
            b"\r\n\r\n%b" % (len(BODY), BODY))


class MemorySocket:
    """Stands in for a client's socket under the real ``PollTransport``: every send is
    taken whole and collected; nothing is read from it (the benchmark feeds the
    protocol itself)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def send(self, data: bytes, flags: int = 0) -> int:
        self.out.append(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return -1  # never registered: no poller sees it

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


class MemoryTransport:
    """Collects what the protocol writes; flow control and closing are recorded."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (HOST, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def config(*, guarded: bool) -> dict:
    """One HTTP listener, one prefix route to a one-endpoint cluster (the socket
    benchmark's shape); ``guarded`` adds the resilience benchmark's guards."""
    doc: dict = {
        "listeners": [{"name": "hot", "address": HOST, "port": 0, "protocol": "http",
                       "routes": [{"name": "all", "match": {"prefix": "/"},
                                   "cluster": "backend"}]}],
        "clusters": [{"name": "backend", "endpoints": [{"address": f"{HOST}:9"}]}],
        "admin": {"enabled": False},
    }
    if guarded:
        doc["clusters"][0].update(copy.deepcopy(GUARDS["cluster"]))
        doc["listeners"][0]["routes"][0].update(copy.deepcopy(GUARDS["route"]))
        doc["resilience"] = {"switches": copy.deepcopy(GUARDS["switches"])}
    return doc


class HotPath:
    """A proxy with one in-memory client connection and one pooled upstream one."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        listener = proxy.listeners["hot"]
        cluster = proxy.clusters["backend"]
        pool = cluster.pool(cluster.endpoints[0])
        self.down = MemorySocket()
        self.client = HttpServerProtocol(listener)  # type: ignore[arg-type]
        self.client.connection_made(PollTransport(
            listener.poller, self.down, (HOST, 40000), self.client))  # type: ignore[arg-type]
        self.up = MemoryTransport()
        self.upstream = UpstreamConnection(pool)
        self.upstream.connection_made(self.up)  # type: ignore[arg-type]
        pool.owned.add(self.upstream)
        pool.release(self.upstream)

    def request(self) -> tuple[bytes, bytes]:
        """One exchange; (what went upstream, what the client got)."""
        self.client.data_received(REQUEST)
        sent = self.up.take()
        self.upstream.data_received(RESPONSE)
        return sent, self.down.take()

    def check(self, n: int) -> None:
        """``n`` exchanges, each verified: the request went upstream, the client got
        the upstream's 200 and body, and both connections are still open."""
        for _ in range(n):
            sent, got = self.request()
            if not sent.startswith(b"GET /index HTTP/1.1\r\n") or \
                    not got.startswith(b"HTTP/1.1 200 OK\r\n") or not got.endswith(BODY):
                raise RuntimeError(f"the hot path did not proxy: sent {sent[:80]!r}, "
                                   f"got {got[:200]!r}")
        if self.down.closed or self.up.closed:
            raise RuntimeError("a connection was closed")

    def run(self, n: int) -> float:
        """CPU seconds for ``n`` exchanges (process time: waiting for a core is not
        counted, other load only adds cache misses)."""
        client, upstream = self.client, self.upstream
        down, up = self.down.out, self.up.out
        t0 = time.process_time()
        for _ in range(n):
            client.data_received(REQUEST)
            up.clear()
            upstream.data_received(RESPONSE)
            down.clear()
        return time.process_time() - t0


async def measure(*, guarded: bool, requests: int, repeats: int) -> dict:
    """Best-of-``repeats`` CPU per request for one config, after a checked warm-up."""
    proxy = Proxy(parse_config(yaml.safe_dump(config(guarded=guarded))))
    await proxy.start()
    try:
        hot = HotPath(proxy)
        hot.check(100)
        gc.collect()
        runs = [hot.run(requests) / requests for _ in range(repeats)]
        hot.check(100)  # still proxying after the timed runs (not refused, not closed)
        return {"us_per_request": min(runs) * 1e6,
                "runs_us": [r * 1e6 for r in runs]}
    finally:
        await proxy.close()


async def main_async(args: argparse.Namespace) -> dict:
    # Interleaved repeats: plain, guarded, plain, ... so drift hits both.
    out: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name in ("plain", "guarded"):
            r = await measure(guarded=name == "guarded", requests=args.requests,
                              repeats=args.repeats)
            best = out.setdefault(name, {"us_per_request": float("inf"), "runs_us": []})
            best["us_per_request"] = min(best["us_per_request"], r["us_per_request"])
            best["runs_us"] += r["runs_us"]
    out["ratio"] = {"cpu": out["guarded"]["us_per_request"] / out["plain"]["us_per_request"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.hotpath", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000, help="exchanges per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    args = ap.parse_args(argv)
    r = uvloop.run(main_async(args))
    for name in ("plain", "guarded"):
        print(f"{name:8} {r[name]['us_per_request']:6.2f} us CPU per request (best of "
              f"{len(r[name]['runs_us'])})")
    print(f"guarded / plain CPU per request: {r['ratio']['cpu']:.3f} "
          f"(as throughput of the proxy's own code: {1 / r['ratio']['cpu']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
