"""``--workers N``: N processes share each port (SO_REUSEPORT), and the supervisor's
admin API merges their metrics and cluster counters; SIGTERM drains all and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from rawclient import request
from test_process import _get, _start, _wait_exit, config

from support.net import free_port as new_port
from support.procs import child_pids


@pytest.mark.system(commands=["promtool"])
async def test_two_workers_share_port_and_merge_metrics(tmp_path: Path, spawn,
                                                         upstream) -> None:
    """With two workers both serve traffic; /metrics and /clusters count every request
    once across them, /metrics passes promtool, and SIGTERM ends all processes."""
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [upstream.address]))
    proc = await _start(spawn, path, port, admin, "--workers", "2")
    for _ in range(100):
        if (await _get(f"http://127.0.0.1:{admin}/ready"))[0] == 200:
            break
        await asyncio.sleep(0.1)
    workers = child_pids(proc.pid)
    assert len(workers) == 2
    n = 40
    for _ in range(n):  # fresh connections: the kernel spreads them over both workers
        assert (await request(port)).status == 200
    await asyncio.sleep(1.5)  # workers publish snapshots and flush tallies each second
    _, body = await _get(f"http://127.0.0.1:{admin}/clusters")
    ep = json.loads(body)["clusters"][0]["endpoints"][0]
    assert ep["requests"] == n
    _, metrics = await _get(f"http://127.0.0.1:{admin}/metrics")
    text = metrics.decode()
    line = [x for x in text.splitlines()
            if x.startswith('meshproxy_downstream_requests_total{code_class="2xx"')]
    assert line
    assert float(line[0].split()[-1]) == n
    assert upstream.connections >= 2  # each worker has its own upstream pool
    check = await asyncio.to_thread(
        subprocess.run, [shutil.which("promtool"), "check", "metrics"], input=metrics,
        capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0
    assert not child_pids(proc.pid)


async def test_dead_worker_is_replaced(tmp_path: Path, spawn, upstream) -> None:
    """A worker killed with SIGKILL is replaced by a new one; traffic keeps flowing and
    /ready answers 200 again once the replacement is up."""
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [upstream.address]))
    proc = await _start(spawn, path, port, admin, "--workers", "2")
    for _ in range(100):
        if len(child_pids(proc.pid)) == 2:
            break
        await asyncio.sleep(0.1)
    before = child_pids(proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    for _ in range(300):
        now = child_pids(proc.pid)
        if len(now) == 2 and victim not in now:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no replacement for {victim}\n{proc.output()}")
    for _ in range(20):
        assert (await request(port)).status == 200
    for _ in range(200):
        if (await _get(f"http://127.0.0.1:{admin}/ready"))[0] == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("not ready again")
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0


async def test_supervisor_reload_reaches_every_worker(tmp_path: Path, spawn, upstreams) -> None:
    """With two workers, an edit of the file is validated once by the supervisor (one
    success counted, not one per worker) and applied by every worker: all fresh
    connections then reach the new endpoint. A bad edit is counted as a failure and
    changes nothing."""
    u1, u2 = await upstreams(2)
    port, admin = new_port(), new_port()
    path = tmp_path / "proxy.yaml"
    path.write_text(config(port, admin, [u1.address]))
    proc = await _start(spawn, path, port, admin, "--workers", "2")
    for _ in range(100):
        if (await _get(f"http://127.0.0.1:{admin}/ready"))[0] == 200:
            break
        await asyncio.sleep(0.1)
    path.write_text(config(port, admin, [u2.address]))
    for _ in range(200):
        seen = {(await request(port)).headers.get("x-upstream") for _ in range(10)}
        if seen == {"up2"}:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"not every worker reloaded: {seen}\n{proc.output()}")
    for _ in range(30):  # more fresh connections, spread by the kernel over both workers
        assert (await request(port)).headers.get("x-upstream") == "up2"
    path.write_text(config(port, admin, [u1.address], route_to="zzz"))
    for _ in range(200):
        if "listeners[0].routes[0].cluster" in proc.output():
            break
        await asyncio.sleep(0.05)
    assert (await request(port)).headers.get("x-upstream") == "up2"
    _, metrics = await _get(f"http://127.0.0.1:{admin}/metrics")
    text = metrics.decode()
    assert 'meshproxy_config_reload_total{result="success"} 1.0' in text
    assert 'meshproxy_config_reload_total{result="failure"} 1.0' in text
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc) == 0
