"""``python -m loadtests.lb_bench``: load balancing with one slow backend (issue 4).

Four backends answer after a fixed service time (2 ms by default); one of them is
slowed 10x (20 ms). For each balancing algorithm a meshproxy (one worker, a
subprocess) balances the four, ``wrk`` drives it closed-loop with a fixed number of
connections (every request carries a random ``x-user`` header, which the hash
policies hash on), and the table shows requests/s, p50/p99 latency and the share of
requests the slow backend got. Round robin and random give it a quarter whatever its
latency; least request and peak EWMA should give it less and so cut the tail.

The backends are one Python process (uvloop, asyncio protocols) listening on four
ports; ``GET /__count`` on a backend port returns and resets its request count.
Reuses the proxy benchmark's harness: ``procs.ServerSet`` (process groups, readiness,
cleanup), ``wrk.run`` (bounded runs, exact percentiles), ``targets.meshproxy_config``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from loadtests import wrk
from loadtests.bench import machine
from loadtests.procs import ServerSet, free_port
from loadtests.targets import HOST, meshproxy_config

POLICIES = ("round_robin", "random", "weighted_random", "least_request", "peak_ewma",
            "ring_hash", "maglev")

_LUA_HEADER = """
-- Added by loadtests/lb_bench.py: a random user per request for the hash policies.
math.randomseed(os.time())
request = function()
  return wrk.format(nil, nil, {["x-user"] = tostring(math.random(1, 100000))})
end
"""


# --- the backends (run with --serve) --------------------------------------------------
class _Backend(asyncio.Protocol):
    def __init__(self, delay: float, counter: list[int]) -> None:
        self.delay = delay
        self.counter = counter
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            if head.startswith(b"GET /__count"):
                body = str(self.counter[0]).encode()
                self.counter[0] = 0
                self._answer(body)
                continue
            self.counter[0] += 1
            asyncio.get_running_loop().call_later(self.delay, self._answer, b"ok\n")

    def _answer(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))


async def serve_backends(ports: list[int], delays: list[float]) -> None:
    loop = asyncio.get_running_loop()
    for port, delay in zip(ports, delays, strict=True):
        counter = [0]
        await loop.create_server(lambda d=delay, c=counter: _Backend(d, c), HOST, port,
                                 backlog=4096)
    await asyncio.Event().wait()


def _count(port: int) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/__count")
        return int(conn.getresponse().read())
    finally:
        conn.close()


# --- the benchmark ------------------------------------------------------------------
def _proxy_config(policy: str, port: int, backends: list[int]) -> dict:
    doc = meshproxy_config(layer="l7", port=port, backend_port=backends[0],
                           admin_port=free_port())
    lb: dict = {"policy": policy}
    if policy in ("ring_hash", "maglev"):
        lb["hash_on"] = {"source": "header", "name": "x-user"}
    doc["clusters"][0]["endpoints"] = [{"address": f"{HOST}:{p}"} for p in backends]
    doc["clusters"][0]["load_balancer"] = lb
    doc["admin"] = {"enabled": False}
    return doc


async def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with (tempfile.TemporaryDirectory(prefix="lb-bench-") as tmpdir,
          ServerSet(Path(tmpdir)) as servers):
        tmp = Path(tmpdir)
        ports = [free_port() for _ in range(4)]
        delays = [args.service_ms / 1000.0] * 3 + [args.service_ms * 10 / 1000.0]
        servers.start("backends", [sys.executable, "-m", "loadtests.lb_bench", "--serve",
                                   *map(str, ports), "--delays", *map(str, delays)],
                      port=ports[-1])
        script = tmp / "lb.lua"
        script.write_text(wrk.write_script(tmp).read_text() + _LUA_HEADER)
        exe = Path(sys.executable).with_name("meshproxy")
        for policy in args.policies:
            port = free_port()
            conf = tmp / f"{policy}.yaml"
            conf.write_text(yaml.safe_dump(_proxy_config(policy, port, ports)))
            proxy = servers.start(f"meshproxy-{policy}", [str(exe), "--config", str(conf)],
                                  port=port)
            url = f"http://{HOST}:{port}/"
            await wrk.run(url, script=script, mode="keepalive", duration=1,
                          connections=args.connections)  # warm-up
            for p in ports:
                _count(p)
            res = await wrk.run(url, script=script, mode="keepalive", duration=args.duration,
                                connections=args.connections)
            counts = [_count(p) for p in ports]
            servers.stop(proxy)
            total = sum(counts) or 1
            rows.append({"policy": policy, "rps": res.rps, "p50_ms": res.p50_ms,
                         "p99_ms": res.p99_ms, "errors": res.error_count,
                         "slow_share": counts[-1] / total})
            print(f"{policy:16} {res.rps:8.0f} req/s  p50 {res.p50_ms:6.2f} ms  "
                  f"p99 {res.p99_ms:6.2f} ms  slow backend {counts[-1] / total:5.1%}",
                  flush=True)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Four backends, {args.service_ms:g} ms service time, one slowed 10x "
             f"({args.service_ms * 10:g} ms); wrk -t1 -c{args.connections} "
             f"{args.duration:g} s keep-alive through meshproxy (1 worker).", "",
             "| algorithm | req/s | p50 ms | p99 ms | slow backend's share | errors |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['slow_share']:.1%} | {r['errors']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtests.lb_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", nargs="+", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--delays", nargs="+", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per algorithm")
    # 8: enough concurrency for load-aware policies to matter, few enough that the one
    # proxy worker is not saturated (then queueing in the proxy hides the backends)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--service-ms", type=float, default=2.0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.serve:
        with contextlib.suppress(ImportError):
            import uvloop
            uvloop.install()
        asyncio.run(serve_backends(args.serve, args.delays))
        return 0
    print(json.dumps(machine()), flush=True)
    rows = asyncio.run(run(args))
    print()
    print(table(rows, args))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
