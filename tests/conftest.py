"""Fixtures every test suite shares.

- ``free_port`` / ``data_dir``: a free loopback port, a temporary data directory.
- ``spawn``: start a subprocess that is always killed with its process group at teardown;
  its output is attached to the failure report.
- the ``system`` marker: requirements on root and Debian packages (see support/system.py).
- leak guards: a test that leaves asyncio tasks or child processes behind fails.
- no client config of the developer's: ``MESH_CONFIG`` names an absent file for the
  whole run (``meshctl up`` writes ``~/.config/mesh/config.yaml``; a test that spawns
  ``meshctl`` would otherwise use it, and fail or reach a running system). Tests that
  need a client config set their own.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import system
from support.net import free_port as _free_port
from support.procs import Managed, child_pids

ROOT = Path(__file__).resolve().parent.parent


def _stale_compiled() -> list[str]:
    """Sources of the compiled request path (setup.py) edited since their build: an
    extension module next to its source is what ``import`` loads, so tests would run
    the old code."""
    stale = []
    for ext in sorted((ROOT / "meshproxy").rglob("*.so")):
        src = ext.with_name(ext.name.split(".", 1)[0] + ".py")
        if src.exists() and src.stat().st_mtime > ext.stat().st_mtime:
            stale.append(str(src.relative_to(ROOT)))
    return stale


_NO_CONFIG_DIR: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _NO_CONFIG_DIR
    stale = _stale_compiled()
    if stale:
        pytest.exit(f"changed since they were compiled: {', '.join(stale)}; rebuild with "
                    "`make build` (or remove the build: `make clean-build`)", returncode=4)
    # Inherited by every subprocess: the developer's client config is never read.
    _NO_CONFIG_DIR = tempfile.mkdtemp(prefix="mesh-test-config-")
    os.environ["MESH_CONFIG"] = os.path.join(_NO_CONFIG_DIR, "absent.yaml")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _NO_CONFIG_DIR is not None:
        shutil.rmtree(_NO_CONFIG_DIR, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    import meshproxy.http.server as server

    how = "compiled (mypyc)" if server.__file__.endswith(".so") else "interpreted"
    return f"meshproxy request path: {how}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("system")
    if marker is None:
        return
    lacking = system.missing(marker.kwargs.get("commands", ()),
                             root=marker.kwargs.get("root", False))
    if not lacking:
        return
    reason = "needs " + ", ".join(lacking)
    if system.required():
        pytest.fail(f"{system.REQUIRE_ENV} is set but this test {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free when the test started."""
    return _free_port()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty directory for a component's state (store file, certificates, caches)."""
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Managed]]:
    """Start subprocesses that are killed (whole process group) when the test ends.

    ``spawn(argv, name=..., env=..., cwd=...)`` returns a :class:`support.procs.Managed`.
    ``spawn.python(module_args...)`` runs this interpreter. Output of every process is
    added to the report of a failing test.
    """
    started: list[Managed] = []

    def _spawn(argv, **kw) -> Managed:
        kw.setdefault("log_dir", tmp_path / "logs")
        proc = Managed(argv, **kw)
        started.append(proc)
        return proc

    def _python(*args: str, **kw) -> Managed:
        return _spawn([sys.executable, *args], **kw)

    _spawn.python = _python  # type: ignore[attr-defined]
    yield _spawn
    for proc in reversed(started):
        proc.stop(signal.SIGTERM, grace=3.0)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in started:
            request.node.add_report_section(
                "call", f"output of {proc.name} (rc={proc.poll()})", proc.output()[-20000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(autouse=True)
def _no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves child processes of the test runner running."""
    before = child_pids()
    if inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        request.getfixturevalue("_no_leaked_tasks")
    yield
    leaked = child_pids() - before
    if not leaked:
        return
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    pytest.fail(f"test left child processes running: {sorted(leaked)}", pytrace=False)


@pytest.fixture
async def _no_leaked_tasks() -> object:
    """Fail an async test that leaves asyncio tasks pending on its loop."""
    before = asyncio.all_tasks()
    yield
    for _ in range(3):  # let cancellations that are already under way finish
        await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if leaked:
        for t in leaked:
            t.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test left asyncio tasks pending: {leaked}", pytrace=False)
