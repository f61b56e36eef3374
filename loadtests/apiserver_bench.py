"""API server benchmark (issue #6): ``python -m loadtests.apiserver_bench``.

Against the SQLite store, on loopback:

1. starts the **API server** (``meshctl apiserver``: HTTPS unless ``--http``, SQLite store
   in a temporary directory) in its own process group;
2. **creates** ``--pods`` Pods from ``--clients`` concurrent keep-alive clients: creates
   per second (first request to last answer) and per-request latency;
3. **lists** them: ``--list-rounds`` full lists (one request, no limit), and one paged
   walk with ``limit=500``; the time until the whole body is read and decoded;
4. **watch fan-out**: ``--watchers`` watch streams (``watch=true`` from the list's
   resourceVersion, in a separate watcher process so reading them does not share this
   process's event loop) each must receive every one of ``--updates`` updates (a label
   patch of one Pod after another); for each event at each watcher two delays to the
   moment the watcher read the event line: from the moment the store committed the
   change (the fan-out delay proper, as Kubernetes' watch-latency SLI counts it: "from
   the moment when object is stored in database"; the target is checked on it), and
   from the moment the updater sent the PATCH (which adds the write's own latency,
   queueing in the server included). Run once per ``--update-rates`` entry: paced at
   that many updates/s (open loop), or ``0`` for as fast as ``--update-clients``
   concurrent updaters go.

Delays use ``time.monotonic()`` in every process (one system-wide clock on Linux); the
commit times are the store's own stamps (``commit_times``), read from the SQLite file.
Watchers parse only what they need (each event line's ``resourceVersion``) so the
watcher process measures delivery rather than its own JSON decoding; a watcher that
misses an event is reported, never filled in. Every phase has a time limit; the server
is killed as a process group at the end, also on failure or Ctrl-C.

Neighbours: ``procs.py`` (process groups, CPU of the server); the README's "API server"
section has the measured table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.procs import ServerSet, free_port, group_usage

NS_PODS = "/api/v1/namespaces/default/pods"
RV = re.compile(rb'"resourceVersion":"(\d+)"')
TARGETS = {"writes_per_s": 1000.0, "list_s": 1.0, "watch_p99_s": 0.100}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"bench-{i:05d}", "labels": {"app": "bench",
                                                              "shard": str(i % 16)}},
            "spec": {"containers": [{"name": "app", "image": "registry.local/bench:1.0",
                                     "ports": [{"containerPort": 8080}],
                                     "resources": {"requests": {"cpu": "100m",
                                                                "memory": "64Mi"}}}]}}


@dataclass
class Conn:
    url: str
    token: str
    ssl: ssl.SSLContext | bool

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


# -- phases ----------------------------------------------------------------------------------

class RawHttp(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client connection: one request at a time, answers
    with ``Content-Length`` (all the API server sends for a create). An aiohttp client
    request costs about as much CPU as the server's handling of it, so with aiohttp the
    creating processes, not the server, were what ran out of the two cores."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        length = None
        for line in self.buf[:head_end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            self.waiter.set_exception(RuntimeError(
                f"answer without Content-Length: {self.buf[:200]!r}"))
            self.waiter = None
            return
        total = head_end + 4 + length
        if len(self.buf) < total:
            return
        status = int(self.buf[9:12])
        body, self.buf = self.buf[head_end + 4:total], self.buf[total:]
        self.waiter.set_result((status, body))
        self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        if self.lost is not None or self.transport is None:
            raise ConnectionResetError("connection lost")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return await self.waiter


def request_head(method: str, path: str, conn: Conn, *, body_len: int = 0,
                 content_type: str = "application/json") -> bytes:
    host = conn.url.split("://", 1)[1]
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer "
            f"{conn.token}\r\nContent-Type: {content_type}\r\nContent-Length: "
            f"{body_len}\r\n\r\n").encode()


async def create_pods(conn: Conn, first: int, n: int, clients: int, limit_s: float, *,
                      go: asyncio.Event | None = None) -> dict[str, Any]:
    """Create pods ``first .. first+n-1`` over ``clients`` keep-alive connections
    (:class:`RawHttp`). With ``go``, the connections are opened (and TLS handshakes and
    one request done) first, then the creates wait for ``go``."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    next_i = first
    loop = asyncio.get_running_loop()
    host, port = conn.url.split("://", 1)[1].rsplit(":", 1)
    ctx = conn.ssl if isinstance(conn.ssl, ssl.SSLContext) else None
    conns: list[RawHttp] = []
    try:
        for _ in range(clients):
            _, proto = await loop.create_connection(RawHttp, host, int(port), ssl=ctx)
            conns.append(proto)
        for c in conns:
            status, _ = await c.request(request_head("GET", "/version", conn))
            if status != 200:
                raise RuntimeError(f"GET /version answered {status}")
        if go is not None:
            print("READY", flush=True)
            await go.wait()

        async def worker(c: RawHttp) -> None:
            nonlocal next_i
            while next_i < first + n:
                i = next_i
                next_i += 1
                body = json.dumps(pod(i)).encode()
                t0 = time.monotonic()
                status, _ = await c.request(request_head("POST", NS_PODS, conn,
                                                         body_len=len(body)), body)
                if status != 201:
                    errors[status] = errors.get(status, 0) + 1
                latencies.append(time.monotonic() - t0)
        cpu0 = time.process_time()
        start = time.monotonic()
        async with asyncio.timeout(limit_s):
            await asyncio.gather(*(worker(c) for c in conns))
        end = time.monotonic()
        cpu = time.process_time() - cpu0
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.close()
    return {"start": start, "end": end, "latencies": latencies, "errors": errors,
            "cpu_s": cpu}


async def create_child_main(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: one share of the creates, started when the parent says GO."""
    ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca) if args.ca \
        else False
    scheme = "https" if args.ca else "http"
    conn = Conn(f"{scheme}://{args.host}:{args.port}", args.token, ctx)
    go = asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def on_go() -> None:
        # Take the line and stop watching: a pipe left readable would wake the loop on
        # every turn, and the client would spin on a core the server needs.
        os.read(fd, 64)
        loop.remove_reader(fd)
        go.set()
    loop.add_reader(fd, on_go)
    try:
        return await create_pods(conn, args.first, args.count, args.clients, args.limit,
                                 go=go)
    finally:
        loop.remove_reader(fd)


async def create_phase(conn: Conn, args: argparse.Namespace, tmp: Path, host: str,
                       port: int, ca: str | None) -> dict[str, Any]:
    """Creates from ``--client-procs`` processes at once (one client process could not
    keep the server busy: its own HTTP and TLS work is as large as the server's)."""
    procs = args.client_procs
    share = [args.pods // procs + (1 if k < args.pods % procs else 0) for k in range(procs)]
    children = []
    try:
        first = 0
        for k in range(procs):
            out = tmp / f"create-{k}.json"
            children.append((out, await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loadtests.apiserver_bench", "--create-child",
                "--host", host, "--port", str(port), "--token", conn.token,
                "--ca", ca or "", "--first", str(first), "--count", str(share[k]),
                "--clients", str(max(1, args.clients // procs)),
                "--limit", str(args.phase_limit), "--out", str(out),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True)))
            first += share[k]
        async with asyncio.timeout(args.phase_limit):
            for _, child in children:
                assert child.stdout is not None
                line = await child.stdout.readline()
                if line.strip() != b"READY":
                    raise RuntimeError(f"create client did not get ready: {line!r}")
            for _, child in children:
                assert child.stdin is not None
                child.stdin.write(b"GO\n")
                await child.stdin.drain()
            for _, child in children:
                await child.wait()
    finally:
        for _, child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, 9)
                await child.wait()
    parts = [json.loads(out.read_text()) for out, _ in children]
    latencies = [x for p in parts for x in p["latencies"]]
    errors: dict[str, int] = {}
    for p in parts:
        for code, count in p["errors"].items():
            errors[code] = errors.get(code, 0) + count
    elapsed = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    return {"pods": args.pods, "clients": args.clients, "client_procs": procs,
            "seconds": elapsed, "per_s": (args.pods - sum(errors.values())) / elapsed,
            "errors": errors, "p50_ms": pct(latencies, 50) * 1e3,
            "client_cpu_s": sum(p["cpu_s"] for p in parts),
            "p99_ms": pct(latencies, 99) * 1e3}


async def list_pods(conn: Conn, rounds: int, expect: int) -> dict[str, Any]:
    times: list[float] = []
    rv = ""
    async with aiohttp.ClientSession(headers=conn.headers,
                                     connector=aiohttp.TCPConnector(ssl=conn.ssl)) as s:
        for _ in range(rounds):
            t0 = time.monotonic()
            async with s.get(conn.url + NS_PODS) as r:
                body = json.loads(await r.read())
            times.append(time.monotonic() - t0)
            if len(body["items"]) != expect:
                raise RuntimeError(f"list returned {len(body['items'])} pods, expected "
                                   f"{expect}")
            rv = body["metadata"]["resourceVersion"]
        t0 = time.monotonic()
        count, token = 0, ""
        while True:
            params = {"limit": "500"} | ({"continue": token} if token else {})
            async with s.get(conn.url + NS_PODS, params=params) as r:
                body = json.loads(await r.read())
            count += len(body["items"])
            token = body["metadata"].get("continue", "")
            if not token:
                break
        paged = time.monotonic() - t0
    return {"rounds_s": times, "best_s": min(times), "median_s": pct(times, 50),
            "paged_500_s": paged, "paged_count": count, "resource_version": rv}


async def run_updates(conn: Conn, names: list[str], rate: float, clients: int, *,
                      phase: int) -> tuple[dict[int, float], float, list[float]]:
    """Patch each name once (a label unique to this phase, so no write is a no-op);
    ``rate`` > 0 paces sends at fixed times (open loop). Returns resourceVersion ->
    send time, the elapsed time and each PATCH's latency (the event is committed, and
    fanned out, before its answer is sent)."""
    sent: dict[int, float] = {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=max(clients, 64), ssl=conn.ssl)
    async with aiohttp.ClientSession(connector=connector, headers=conn.headers) as s:
        async def one(i: int, name: str) -> None:
            body = json.dumps({"metadata": {"labels": {"round": f"{phase}-{i}"}}}).encode()
            t0 = time.monotonic()
            async with s.patch(f"{conn.url}{NS_PODS}/{name}", data=body, headers={
                    "Content-Type": "application/merge-patch+json"}) as r:
                data = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"update {name} answered {r.status}: {data[:200]!r}")
            latencies.append(time.monotonic() - t0)
            sent[int(json.loads(data)["metadata"]["resourceVersion"])] = t0
        start = time.monotonic()
        if rate > 0:
            tasks = []
            for i, name in enumerate(names):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, name)))
            await asyncio.gather(*tasks)
        else:
            queue = list(enumerate(names))

            async def worker() -> None:
                while queue:
                    i, name = queue.pop(0)
                    await one(i, name)
            await asyncio.gather(*(worker() for _ in range(clients)))
        return sent, time.monotonic() - start, latencies


# -- watcher process -------------------------------------------------------------------------

class WatchReader(asyncio.Protocol):
    """One raw HTTP/1.1 watch stream; records each read's arrival time and the
    resourceVersions (still as bytes) of the event lines it completed.

    The per-read work is kept to what the delay needs (a clock read, one C-level regex
    scan and a line count), so that 500 of these in one process measure the server
    rather than this process's own backlog; the numbers are turned into ints only after
    the phase (:meth:`deliveries`)."""

    def __init__(self, request: bytes, expect: int, done: asyncio.Future[None]) -> None:
        self.request = request
        self.expect = expect
        self.done = done
        self.buf = b""
        self.reads: list[tuple[float, list[bytes]]] = []
        self.count = 0
        self.header_seen = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.header_seen.done():
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                self.buf = data
                return
            if not head.startswith(b"HTTP/1.1 200"):
                self.header_seen.set_exception(RuntimeError(head.split(b"\r\n")[0].decode()))
                return
            self.header_seen.set_result(None)
            data = rest
        cut = data.rfind(b"\n")
        if cut < 0:
            self.buf = data
            return
        if cut + 1 < len(data):
            self.buf = data[cut + 1:]
        rvs = RV.findall(data, 0, cut)
        if rvs:
            self.reads.append((now, rvs))
            self.count += len(rvs)
            if self.count >= self.expect and not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def deliveries(self) -> list[tuple[int, float]]:
        return [(int(rv), t) for t, rvs in self.reads for rv in rvs]


async def watcher_main(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: open the watches, print READY, collect; what each watcher got,
    and this process's own CPU time and reads while it waited for the events."""
    host, port = args.host, args.port
    ctx = ssl.create_default_context(cafile=args.ca) if args.ca else None
    request = (f"GET {NS_PODS}?watch=true&resourceVersion={args.rv} HTTP/1.1\r\n"
               f"Host: {host}:{port}\r\nAuthorization: Bearer {args.token}\r\n"
               f"Accept: application/json\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    readers: list[WatchReader] = []
    transports = []
    for _ in range(args.watchers):
        done: asyncio.Future[None] = loop.create_future()
        t, r = await loop.create_connection(
            lambda d=done: WatchReader(request, args.expect, d), host, port, ssl=ctx)
        transports.append(t)
        readers.append(r)
    await asyncio.gather(*(r.header_seen for r in readers))
    print("READY", flush=True)
    cpu0 = time.process_time()
    try:
        async with asyncio.timeout(args.limit):
            await asyncio.gather(*(r.done for r in readers))
    except TimeoutError:
        pass
    cpu = time.process_time() - cpu0
    for t in transports:
        t.close()
    return {"cpu_s": cpu, "reads": sum(len(r.reads) for r in readers),
            "got": [r.deliveries() for r in readers]}


# -- orchestration ---------------------------------------------------------------------------

@dataclass
class Result:
    machine: dict[str, Any]
    params: dict[str, Any]
    create: dict[str, Any] = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)
    watch: list[dict[str, Any]] = field(default_factory=list)
    server_cpu_s: dict[str, float] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"cpu": model, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
            "python": platform.python_version(), "kernel": platform.release(),
            "commit": commit}


async def fanout_totals(conn: Conn) -> tuple[float, float]:
    """The server's watch fan-out passes so far and the seconds they took (its
    ``/metrics``): a pass writes to every watcher in turn, so its length is part of the
    delay of the events in it."""
    async with aiohttp.ClientSession(headers=conn.headers,
                                     connector=aiohttp.TCPConnector(ssl=conn.ssl)) as s, \
            s.get(conn.url + "/metrics") as r:
        text = await r.text()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("apiserver_watch_fanout_duration_seconds_count",
                    "apiserver_watch_fanout_duration_seconds_sum"):
            values[name] = float(value)
    return (values["apiserver_watch_fanout_duration_seconds_count"],
            values["apiserver_watch_fanout_duration_seconds_sum"])


def commit_times(store_file: Path, sent: dict[int, float]) -> dict[int, float]:
    """resourceVersion -> when the store committed it, on ``time.monotonic()``'s clock.

    The SQLite store stamps every history entry with its wall clock (``created_at``,
    ``time.time()`` in the writer thread as it starts the transaction, before the
    fsync, so the delay measured from it is if anything too long); the file is read
    here, read-only, while the server runs. Wall clock and monotonic clock are the same
    for every process on the machine, so one offset (taken as a median of readings,
    around the phase's few seconds in which neither is stepped) converts."""
    offsets = sorted(time.time() - time.monotonic() for _ in range(9))
    offset = offsets[len(offsets) // 2]
    wanted = sorted(sent)
    db = sqlite3.connect(f"file:{store_file}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT revision, created_at FROM log WHERE revision BETWEEN ? "
                          "AND ?", (wanted[0], wanted[-1])).fetchall() if wanted else []
    finally:
        db.close()
    return {rev: stamp - offset for rev, stamp in rows if rev in sent}


async def watch_phase(conn: Conn, args: argparse.Namespace, tmp: Path, rv: str,
                      names: list[str], rate: float, host: str, port: int,
                      ca: str | None, *, phase: int, store_file: Path) -> dict[str, Any]:
    shares = [args.watchers // args.watcher_procs + (i < args.watchers % args.watcher_procs)
              for i in range(args.watcher_procs)]
    outs = [tmp / f"watch-{rate:g}-{i}.json" for i in range(len(shares))]
    children = []
    try:
        for share, out in zip(shares, outs, strict=True):
            children.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loadtests.apiserver_bench", "--watcher-child",
                "--host", host, "--port", str(port), "--token", conn.token, "--rv", rv,
                "--ca", ca or "", "--watchers", str(share), "--expect", str(len(names)),
                "--limit", str(args.phase_limit), "--out", str(out),
                stdout=asyncio.subprocess.PIPE, start_new_session=True))
        for child in children:
            assert child.stdout is not None
            async with asyncio.timeout(args.phase_limit):
                line = await child.stdout.readline()
            if line.strip() != b"READY":
                raise RuntimeError(f"watcher process did not get ready: {line!r}")
        cpu0 = time.process_time()
        sent, elapsed, patch_latencies = await run_updates(conn, names, rate, args.update_clients,
                                          phase=phase)
        updater_cpu = time.process_time() - cpu0
        async with asyncio.timeout(args.phase_limit + 30):
            await asyncio.gather(*(child.wait() for child in children))
    finally:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, 9)
                await child.wait()
    results = [json.loads(out.read_text()) for out in outs]
    watcher = {"cpu_s": sum(r["cpu_s"] for r in results),
               "reads": sum(r["reads"] for r in results)}
    received = [got for r in results for got in r["got"]]
    committed = commit_times(store_file, sent)
    delays: list[float] = []
    from_commit: list[float] = []
    complete = 0
    for got in received:
        rvs = {rv_ for rv_, _ in got}
        if set(sent) <= rvs:
            complete += 1
        delays.extend(t - sent[rv_] for rv_, t in got if rv_ in sent)
        from_commit.extend(t - committed[rv_] for rv_, t in got if rv_ in committed)
    if len(from_commit) != len(delays):
        raise RuntimeError(f"the store's log has commit times for {len(committed)} of "
                           f"{len(sent)} updates")
    return {"rate": rate or "max", "updates": len(names), "update_seconds": elapsed,
            "updates_per_s": len(names) / elapsed, "watchers": len(received),
            "complete_watchers": complete, "deliveries": len(delays),
            "p50_ms": pct(delays, 50) * 1e3, "p99_ms": pct(delays, 99) * 1e3,
            "max_ms": max(delays, default=float("nan")) * 1e3,
            "commit_p50_ms": pct(from_commit, 50) * 1e3,
            "commit_p99_ms": pct(from_commit, 99) * 1e3,
            "commit_max_ms": max(from_commit, default=float("nan")) * 1e3,
            # the measuring processes' own load: if either were saturated it, not the
            # server, would be adding the delay
            "patch_p50_ms": pct(patch_latencies, 50) * 1e3,
            "patch_p99_ms": pct(patch_latencies, 99) * 1e3,
            "watcher_cpu_s": watcher["cpu_s"], "updater_cpu_s": updater_cpu,
            "events_per_read": len(delays) / max(1, watcher["reads"])}


async def bench(args: argparse.Namespace) -> Result:
    result = Result(machine(), {k: v for k, v in vars(args).items()
                                if k not in ("watcher_child", "create_child", "token")})
    with tempfile.TemporaryDirectory(prefix="apiserver-bench-") as tmp_name, \
            ServerSet(Path(tmp_name)) as servers:
        tmp = Path(tmp_name)
        port = free_port()
        argv = [sys.executable, "-m", "control.cli.main", "apiserver", "--data-dir",
                str(tmp / "data"), "--port", str(port), "--log-level", "WARNING",
                "--max-watchers", str(args.watchers + 50)]
        if args.http:
            argv.append("--insecure-http")
        server = servers.start("apiserver", argv, port=port, timeout=60)
        token = (tmp / "data" / "admin.token").read_text().strip()
        ca = None if args.http else str(tmp / "data" / "ca.crt")
        ctx: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else False
        conn = Conn(f"{'http' if args.http else 'https'}://127.0.0.1:{port}", token, ctx)

        cpu0 = group_usage(server.pgid).cpu_seconds
        print(f"creating {args.pods} pods with {args.clients} clients...", flush=True)
        result.create = await create_phase(conn, args, tmp, "127.0.0.1", port, ca)
        cpu1 = group_usage(server.pgid).cpu_seconds
        print(f"  {result.create['per_s']:.0f} creates/s", flush=True)
        result.listing = await list_pods(conn, args.list_rounds, args.pods)
        cpu2 = group_usage(server.pgid).cpu_seconds
        print(f"  list of {args.pods}: best {result.listing['best_s']:.3f} s", flush=True)
        names = [f"bench-{i:05d}" for i in range(args.updates)]
        rv = result.listing["resource_version"]
        for phase_no, rate in enumerate(args.update_rates):
            print(f"watch fan-out: {args.watchers} watchers, {args.updates} updates at "
                  f"{rate or 'max'}/s...", flush=True)
            cpu_w = group_usage(server.pgid).cpu_seconds
            fanout_w = await fanout_totals(conn)
            phase = await watch_phase(conn, args, tmp, rv, names, rate, "127.0.0.1", port,
                                      ca, phase=phase_no, store_file=tmp / "data" / "store.db")
            phase["server_cpu_s"] = group_usage(server.pgid).cpu_seconds - cpu_w
            passes, seconds = (b - a for a, b in zip(fanout_w, await fanout_totals(conn),
                                                      strict=True))
            phase["fanout_passes"] = passes
            phase["fanout_mean_ms"] = seconds / max(1, passes) * 1e3
            result.watch.append(phase)
            print(f"  from commit p50 {phase['commit_p50_ms']:.1f} ms, p99 "
                  f"{phase['commit_p99_ms']:.1f} ms; from send p50 {phase['p50_ms']:.1f} ms, "
                  f"p99 {phase['p99_ms']:.1f} ms; {phase['complete_watchers']}/"
                  f"{phase['watchers']} complete", flush=True)
            async with aiohttp.ClientSession(headers=conn.headers,
                                             connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
                    s.get(conn.url + NS_PODS, params={"limit": "1"}) as r:
                rv = json.loads(await r.read())["metadata"]["resourceVersion"]
        cpu3 = group_usage(server.pgid).cpu_seconds
        result.server_cpu_s = {"create": cpu1 - cpu0, "list": cpu2 - cpu1,
                               "watch": cpu3 - cpu2}
    return result


def report(r: Result) -> str:
    c, li = r.create, r.listing
    lines = [
        f"machine: {r.machine['cpu']}, {r.machine['cpus']} CPUs, load before "
        f"{', '.join(f'{x:.1f}' for x in r.machine['loadavg_before'])}; Python "
        f"{r.machine['python']}; commit {r.machine['commit']}; "
        f"{'HTTP' if r.params['http'] else 'HTTPS'}",
        "",
        "| measurement | result | target | met |",
        "| --- | --- | --- | --- |",
        f"| create {c['pods']} pods ({c['clients']} clients in {c['client_procs']} "
        f"processes) | {c['per_s']:.0f} creates/s "
        f"({c['seconds']:.1f} s; latency p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms"
        f"{'; errors ' + str(c['errors']) if c['errors'] else ''}) | >= 1,000 writes/s | "
        f"{'yes' if c['per_s'] >= TARGETS['writes_per_s'] else 'NO'} |",
        f"| list {c['pods']} pods, one request | best {li['best_s']:.3f} s, median "
        f"{li['median_s']:.3f} s of {len(li['rounds_s'])} | < 1 s | "
        f"{'yes' if li['best_s'] < TARGETS['list_s'] else 'NO'} |",
        f"| list {c['pods']} pods, pages of 500 | {li['paged_500_s']:.3f} s | - | - |",
    ]
    for w in r.watch:
        ok = w["commit_p99_ms"] / 1e3 < TARGETS["watch_p99_s"] and \
            w["complete_watchers"] == w["watchers"]
        lines.append(
            f"| watch: {w['watchers']} watchers x {w['updates']} updates at {w['rate']}/s "
            f"(achieved {w['updates_per_s']:.0f}/s) | from the store's commit to each "
            f"watcher's read: p50 {w['commit_p50_ms']:.1f} ms, p99 "
            f"{w['commit_p99_ms']:.1f} ms, max {w['commit_max_ms']:.0f} ms "
            f"(from the PATCH's send: p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms); "
            f"{w['complete_watchers']}/{w['watchers']} watchers got every update "
            f"({w['deliveries']} deliveries) | p99 < 100 ms from commit | "
            f"{'yes' if ok else 'NO'} |")
    for w in r.watch:
        lines.append(
            f"\nwatch at {w['rate']}/s: CPU seconds of the API server "
            f"{w['server_cpu_s']:.1f} ({w['server_cpu_s'] / max(1, w['deliveries']) * 1e6:.1f}"
            f" us per delivery), of the watcher process {w['watcher_cpu_s']:.1f}, of the "
            f"updater {w['updater_cpu_s']:.1f} over {w['update_seconds']:.1f} s; "
            f"{w['events_per_read']:.1f} events per watcher read; "
            f"{w['fanout_passes']:.0f} fan-out passes of {w['fanout_mean_ms']:.1f} ms on "
            f"average; PATCH latency p50 "
            f"{w['patch_p50_ms']:.1f} ms, p99 {w['patch_p99_ms']:.1f} ms")
    cpu = r.server_cpu_s
    lines += ["", f"API server CPU time: create {cpu['create']:.1f} s "
                  f"({cpu['create'] / max(1, c['pods']) * 1e3:.2f} ms per create; the "
                  f"creating processes {c['client_cpu_s']:.1f} s), list "
                  f"{cpu['list']:.1f} s, watch phases {cpu['watch']:.1f} s"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.apiserver_bench",
                                description="API server benchmark (issue #6)")
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=32, help="concurrent creating clients")
    p.add_argument("--client-procs", type=int, default=2,
                   help="processes the creating clients are spread over")
    p.add_argument("--list-rounds", type=int, default=3)
    p.add_argument("--watchers", type=int, default=500)
    p.add_argument("--watcher-procs", type=int, default=1,
                   help="processes the watch streams are spread over")
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--update-rates", type=lambda s: [float(x) for x in s.split(",")],
                   default=[100.0, 0.0],
                   help="updates/s per watch phase, comma-separated; 0 = unpaced")
    p.add_argument("--update-clients", type=int, default=8,
                   help="concurrent updaters when unpaced")
    p.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    p.add_argument("--phase-limit", type=float, default=300.0,
                   help="seconds each phase may take at most")
    p.add_argument("--json", type=Path, help="also write every number to this file")
    p.add_argument("--quick", action="store_true",
                   help="a small run (1,000 pods, 50 watchers, 100 updates) to check it works")
    # the watcher child process
    p.add_argument("--watcher-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--create-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    for name in ("--host", "--token", "--rv", "--ca", "--out"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.pods, args.watchers, args.updates = 1000, 50, 100
    if not (args.watcher_child or args.create_child) and args.updates > args.pods:
        p.error("--updates must not exceed --pods (each update patches a distinct pod)")
    if not 1 <= args.watcher_procs <= max(1, args.watchers):
        p.error(f"--watcher-procs must be between 1 and --watchers ({args.watchers}), got "
                f"{args.watcher_procs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        run = asyncio.run
    if args.watcher_child:
        Path(args.out).write_text(json.dumps(run(watcher_main(args))))
        return 0
    if args.create_child:
        Path(args.out).write_text(json.dumps(run(create_child_main(args))))
        return 0
    result = run(bench(args))
    print()
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result.__dict__, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
