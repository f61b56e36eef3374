"""The ``meshproxy`` process: --validate, SIGHUP and file-change reload, SIGTERM drain,
the admin API served by the real command.

These start the installed script as a subprocess (through the ``spawn`` fixture, which
kills its process group at teardown) against upstreams running in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rawclient import RawConn, build, request

from support.net import async_wait_for_port
from support.net import free_port as new_port

MESHPROXY = str(Path(sys.executable).parent / "meshproxy")
TOKEN = "test-token-0123456789"


def config(port: int, admin_port: int, cluster_eps: list[str], *, route_to: str = "c",
           drain: float = 10.0, poll: float = 0.1) -> str:
    eps = ", ".join(f'"{e}"' for e in cluster_eps)
    return f"""
admin: {{port: {admin_port}, token: {TOKEN}}}
reload: {{poll_interval: {poll}}}
drain: {{timeout: {drain}}}
listeners:
  - {{protocol: http, name: web, port: {port}, routes: [{{name: all, cluster: {route_to}}}]}}
clusters:
  - {{name: c, endpoints: [{eps}]}}
  - {{name: d, endpoints: [{eps}]}}
"""


async def _get(url: str, *, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    def call() -> tuple[int, bytes]:
        req = urllib.request.Request(url, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    return await asyncio.to_thread(call)


async def _start(spawn, path: Path, port: int, admin_port: int, *extra: str):
    proc = spawn([MESHPROXY, "--config", str(path), *extra], name="meshproxy")
    try:
        await async_wait_for_port("127.0.0.1", port, timeout=30)
        await async_wait_for_port("127.0.0.1", admin_port, timeout=30)
    except TimeoutError:
        raise AssertionError(proc.output()) from None
    return proc


async def _wait_exit(proc, timeout: float = 30) -> int:
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("process did not exit\n" + proc.output()) from None


def test_validate_reports_field_paths(tmp_path: Path) -> None:
    """--validate exits 0 for a good file and 1 with 'path: reason' lines for a bad one."""
    good = tmp_path / "good.yaml"
    good.write_text(config(8080, 9901, ["127.0.0.1:1"]))
    out = subprocess.run([MESHPROXY, "--config", str(good), "--validate"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0
    assert "valid" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(config(8080, 9901, ["127.0.0.1:1"], route_to="zzz"))
    out = subprocess.run([MESHPROXY, "--config", str(bad), "--validate"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert "listeners[0].routes[0].cluster: no cluster named 'zzz'" in out.stderr


async def test_sighup_and_file_change_reload(tmp_path: Path, spawn, upstreams) -> None:
    """Editing the file reloads it; SIGHUP reloads it too; a bad edit is refused, logged
    with its field path and counted, and the old config keeps serving. /config_dump
    shows the version in force."""
    u1, u2 = await upstreams(2)
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [u1.address]))
    proc = await _start(spawn, path, port, admin)
    _, dump = await _get(f"http://127.0.0.1:{admin}/config_dump")
    v1 = json.loads(dump)["version"]
    # 1. a file edit is picked up by the watcher
    path.write_text(config(port, admin, [u2.address]))
    for _ in range(200):
        if (await request(port)).headers.get("x-upstream") == "up2":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("file change was not applied\n" + proc.output())
    # 2. a bad edit is refused; traffic still flows on the last good config
    path.write_text(config(port, admin, [u1.address], route_to="zzz"))
    for _ in range(200):
        if "listeners[0].routes[0].cluster" in proc.output():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("bad file not reported\n" + proc.output())
    assert (await request(port)).headers.get("x-upstream") == "up2"
    # 3. SIGHUP (watching off) reloads
    text = config(port, admin, [u1.address]).replace("poll_interval: 0.1", "poll_interval: 60")
    path.write_text(text)
    proc.send_signal(signal.SIGHUP)
    for _ in range(200):
        if (await request(port)).headers.get("x-upstream") == "up1":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("SIGHUP reload not applied\n" + proc.output())
    _, dump = await _get(f"http://127.0.0.1:{admin}/config_dump")
    assert json.loads(dump)["version"] != v1
    assert json.loads(dump)["config"]["admin"]["token"] == "<redacted>"
    _, metrics = await _get(f"http://127.0.0.1:{admin}/metrics")
    assert b'meshproxy_config_reload_total{result="failure"} 1.0' in metrics
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0


async def test_sigterm_drains_requests_in_flight(tmp_path: Path, spawn, upstream) -> None:
    """SIGTERM: /ready stops answering, idle keep-alive connections are closed at once,
    a request in flight (slow upstream) still completes with 200, new connections are
    refused, and the process exits 0."""
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [upstream.address]))
    proc = await _start(spawn, path, port, admin)
    idle = await RawConn.open(port)
    await idle.send(build("GET", "/echo"))
    assert (await idle.read_reply()).status == 200
    busy = await RawConn.open(port)
    await busy.send(build("GET", "/slow/1.0"))
    await asyncio.sleep(0.3)  # the slow request is in flight
    proc.send_signal(signal.SIGTERM)
    assert await idle.closed_by_peer(timeout=5)
    r = await busy.read_reply(timeout=15)
    assert r.status == 200
    assert r.headers.get("connection") == "close"
    assert await busy.closed_by_peer(timeout=5)
    assert await _wait_exit(proc) == 0
    with pytest.raises(ConnectionRefusedError):
        await RawConn.open(port)
    await idle.close()
    await busy.close()


async def test_drain_timeout_cuts_what_is_left(tmp_path: Path, spawn, upstream) -> None:
    """A request that outlives the drain timeout is cut and the process still exits 0."""
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [upstream.address], drain=0.5))
    proc = await _start(spawn, path, port, admin)
    conn = await RawConn.open(port)
    await conn.send(build("GET", "/hang"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0
    assert time.monotonic() - started < 10
    await conn.close()


async def test_admin_endpoints(tmp_path: Path, spawn, upstream) -> None:
    """/ready, /clusters (endpoint counters), and POST /reload guarded by the token:
    401 without it, 200 with it."""
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [upstream.address]))
    proc = await _start(spawn, path, port, admin)
    base = f"http://127.0.0.1:{admin}"
    assert (await _get(f"{base}/ready"))[0] == 200
    for _ in range(3):
        await request(port)
    _, body = await _get(f"{base}/clusters")
    c = {c["name"]: c for c in json.loads(body)["clusters"]}["c"]
    assert c["endpoints"][0]["address"] == upstream.address
    assert c["endpoints"][0]["requests"] == 3
    assert c["endpoints"][0]["healthy"] is True
    assert (await _get(f"{base}/reload", method="POST"))[0] == 401
    assert (await _get(f"{base}/reload", method="POST", token="wrong-token-xxxxxxxx"))[0] == 401
    status, body = await _get(f"{base}/reload", method="POST", token=TOKEN)
    assert status == 200
    assert json.loads(body)["reloaded"] is True
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0


@pytest.mark.system(commands=["promtool"])
async def test_metrics_pass_promtool(tmp_path: Path, spawn, upstream) -> None:
    """/metrics after real traffic (successes and local replies) passes
    ``promtool check metrics`` and holds the documented series."""
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [upstream.address]))
    proc = await _start(spawn, path, port, admin)
    await request(port)
    await request(port, "GET", "/reset")
    _, body = await _get(f"http://127.0.0.1:{admin}/metrics")
    check = await asyncio.to_thread(
        subprocess.run, [shutil.which("promtool"), "check", "metrics"], input=body,
        capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    text = body.decode()
    for series in ('meshproxy_downstream_requests_total{code_class="2xx",listener="web",'
                   'route="all"} 1.0',
                   'meshproxy_local_replies_total{code="502",listener="web",'
                   'reason="upstream_reset"} 1.0',
                   "meshproxy_downstream_request_duration_seconds_bucket",
                   "meshproxy_upstream_request_duration_seconds_bucket",
                   "meshproxy_downstream_connections_active",
                   "meshproxy_upstream_pool_connections"):
        assert series in text, series
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0
