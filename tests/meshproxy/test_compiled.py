"""The request path (HTTP and L4, with the listeners, clusters, balancers and tallies
they call) is compiled (setup.py) and the compiled classes keep the behaviour the rest
of the proxy relies on."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from meshproxy.http import message, server
from meshproxy.http.message import Exchange, RequestBody
from meshproxy.tcp import pipe
from support import system

ROOT = Path(__file__).resolve().parents[2]


def _setup_patterns() -> tuple[str, ...]:
    """setup.py's ``COMPILED_PATTERNS`` (read, not imported: importing it runs setup())."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if (isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", None) == "COMPILED_PATTERNS"):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no COMPILED_PATTERNS")


def _compiled_sources() -> set[str]:
    files = {str(p.relative_to(ROOT)) for pattern in _setup_patterns()
             for p in ROOT.glob(pattern)}
    assert len(files) > 20, files  # the patterns still name the request path
    return files


def test_the_request_path_runs_compiled() -> None:
    """What the benchmarks measure is what runs: the modules setup.py compiles load as
    extension modules. Elsewhere a build without a C compiler (or MESH_COMPILE=0) runs
    them interpreted, which is a skip; in CI (MESH_REQUIRE_SYSTEM=1) a failure."""
    if not server.__file__.endswith(".so"):
        reason = ("the request path runs interpreted (built with MESH_COMPILE=0 or "
                  "without a C compiler and Python headers)")
        if system.required():
            pytest.fail(f"{system.REQUIRE_ENV} is set but {reason}")
        pytest.skip(reason)
    assert message.__file__.endswith(".so")
    assert pipe.__file__.endswith(".so")  # the L4 path too
    interpreted = []
    for source in sorted(_compiled_sources()):
        name = source.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if not importlib.import_module(name).__file__.endswith(".so"):
            interpreted.append(source)
    assert not interpreted, f"setup.py compiles these, yet they load from source: {interpreted}"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_the_makefile_rebuilds_exactly_what_setup_py_compiles() -> None:
    """``make test`` reinstalls (recompiles) when a compiled source changes, going by the
    Makefile's ``COMPILED``; setup.py's ``COMPILED_PATTERNS`` decide what is compiled.
    A module compiled but missing from the Makefile would leave ``make test`` refusing
    to run after an edit (tests/conftest.py: a stale build) until a manual ``make
    build``; one listed only in the Makefile rebuilds for nothing."""
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval",
         "print-compiled: ; @echo $(COMPILED)", "print-compiled"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert set(out.split()) == _compiled_sources()


def _slots(cls: str) -> tuple[str, ...]:
    """``cls.__slots__`` as written in message.py (a compiled class has none at run
    time), so a field added later is checked too."""
    source = Path(__file__).resolve().parents[2] / "meshproxy" / "http" / "message.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                if (isinstance(stmt, ast.Assign)
                        and getattr(stmt.targets[0], "id", None) == "__slots__"):
                    return ast.literal_eval(stmt.value)
    raise AssertionError(f"no __slots__ for {cls} in {source}")


def test_exchange_copy_copies_every_field_and_is_a_new_object() -> None:
    """Hedging runs each attempt on ``Exchange.copy()`` (``copy.copy`` cannot copy the
    compiled class): every field is carried over, and the copy's ``values`` can be
    replaced without touching the original's."""
    body = RequestBody(length=0, chunked=False, flow=None)
    ex = Exchange(b"GET", b"/a?b", b"/a", b"b", "1.1", [(b"h", b"v")], [b"h"], b"host",
                  "10.0.0.1", body, True, b"websocket", 12.5, "web")
    ex.upstream_head()
    ex.route, ex.deadline, ex.attempts, ex.endpoint = "route", 99.0, 2, "ep"
    ex.values = {"tried": ()}
    fields = [name for name in _slots("Exchange") if name != "_head"]
    assert "values" in fields
    sub = ex.copy()
    assert sub is not ex
    for name in fields:
        assert getattr(sub, name) == getattr(ex, name), name
    assert sub.headers is ex.headers  # shallow, as copy.copy was
    assert sub.body is ex.body
    assert sub.upstream_head() is ex.upstream_head()
    sub.values = {"endpoint": "other"}
    assert ex.values == {"tried": ()}
