"""The shared test harness does what later suites rely on.

Pins: spawned processes die with their whole group at teardown; the ``system`` marker
skips with a reason normally and fails under MESH_REQUIRE_SYSTEM=1; a test that leaks a
child process or an asyncio task fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.net import free_port, port_open, wait_for_port
from support.procs import Managed, child_pids

pytest_plugins = ["pytester"]
TESTS = Path(__file__).resolve().parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); read its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_managed_stop_kills_grandchildren(tmp_path: Path) -> None:
    # The child starts a grandchild that ignores SIGTERM and prints its pid.
    code = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print(g.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = Managed([sys.executable, "-c", code], log_dir=tmp_path, name="parent")
    deadline = time.monotonic() + 10
    while not proc.output().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    grandchild = int(proc.output().split()[0])
    assert _alive(grandchild)
    proc.stop(signal.SIGTERM, grace=0.5)
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(grandchild), "grandchild survived the process-group kill"
    assert proc.pid not in child_pids()


def test_wait_for_port_reports_early_exit_with_output(tmp_path: Path) -> None:
    proc = Managed([sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                   log_dir=tmp_path, name="dies")
    with pytest.raises(AssertionError, match="boom"):
        wait_for_port("127.0.0.1", free_port(), timeout=10, proc=proc)
    proc.stop()


def test_spawn_fixture_serves_a_port(spawn) -> None:
    port = free_port()
    proc = spawn.python("-m", "http.server", "--bind", "127.0.0.1", str(port), name="http")
    wait_for_port("127.0.0.1", port, proc=proc)
    assert port_open("127.0.0.1", port)


def _inner_suite(pytester: pytest.Pytester, body: str) -> None:
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    shutil.copytree(TESTS / "support", pytester.path / "support")
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    system: needs system packages\n")
    pytester.makepyfile(test_inner=body)


SYSTEM_BODY = """
import pytest

@pytest.mark.system(commands=["surely-not-a-real-command-xyz"])
def test_needs_missing_command():
    pass
"""


def test_system_marker_skips_with_reason_locally(pytester: pytest.Pytester,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_REQUIRE_SYSTEM", raising=False)
    _inner_suite(pytester, SYSTEM_BODY)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*surely-not-a-real-command-xyz*not found*"])


def test_system_marker_fails_when_ci_requires_it(pytester: pytest.Pytester,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_REQUIRE_SYSTEM", "1")
    _inner_suite(pytester, SYSTEM_BODY)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*MESH_REQUIRE_SYSTEM is set*surely-not-a-real-command-xyz*"])


def test_leaked_process_and_task_fail_the_test(pytester: pytest.Pytester) -> None:
    _inner_suite(pytester, """
import asyncio, subprocess, sys

def test_leaks_process():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])

async def test_leaks_task():
    asyncio.get_running_loop().create_task(asyncio.sleep(30))
""")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*left child processes running*", "*left asyncio tasks pending*"])


@pytest.mark.system(commands=["podman", "runc", "busybox", "nginx", "haproxy", "wrk",
                              "promtool", "ip"])
def test_ci_system_packages_are_usable() -> None:
    for argv in (["podman", "--version"], ["nginx", "-v"], ["haproxy", "-v"],
                 ["promtool", "--version"], ["busybox", "true"], ["ip", "-V"]):
        subprocess.run(argv, check=True, capture_output=True)
    conf = Path("/etc/containers/containers.conf")
    if os.environ.get("CI"):
        text = conf.read_text()
        assert 'runtime = "runc"' in text
        assert 'cgroup_manager = "cgroupfs"' in text
