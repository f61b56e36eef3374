"""Build of the ``mesh`` distribution (metadata in ``pyproject.toml``).

The data plane's per-request code is compiled with mypyc into C extension modules
placed next to their sources: the HTTP request path (``meshproxy/http/``,
``meshproxy/router.py``), the L4 path (``meshproxy/tcp/``) and what both call for every
request or connection (listeners, clusters, endpoints, balancers, metrics tallies).
Each request then runs without the interpreter's per-bytecode dispatch
(``docs/ARCHITECTURE.md``, "Departures": the request path is compiled, has each step's
interleaved A/B measurement and the rules such code keeps). The sources stay the code:
the same files run interpreted when the build is skipped (``MESH_COMPILE=0``) or cannot
compile (no C compiler or Python headers), with a warning at build time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The modules compiled with mypyc, as glob patterns (the ``Makefile``'s ``COMPILED``
#: names the same files: ``tests/meshproxy/test_compiled.py`` checks both lists, and
#: ``tests/conftest.py`` refuses to run against a build older than its sources).
COMPILED_PATTERNS = (
    "meshproxy/http/*.py",
    "meshproxy/router.py",
    "meshproxy/tcp/*.py",
    "meshproxy/listener.py",
    "meshproxy/poller.py",
    "meshproxy/cluster.py",
    "meshproxy/endpoint.py",
    "meshproxy/metrics.py",
    "meshproxy/balance/base.py",
    "meshproxy/balance/hashing.py",
    "meshproxy/balance/least_request.py",
    "meshproxy/balance/maglev.py",
    "meshproxy/balance/peak_ewma.py",
    "meshproxy/balance/random_pick.py",
    "meshproxy/balance/ring_hash.py",
    "meshproxy/balance/round_robin.py",
)
COMPILED = sorted(str(p) for pattern in COMPILED_PATTERNS for p in Path().glob(pattern))


def _interpreted(reason: object) -> None:
    print(f"mesh: the request path is not compiled ({reason}); it runs as pure Python",
          file=sys.stderr)


def ext_modules() -> list:
    if os.environ.get("MESH_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify

        # The isolated build environment has no runtime dependencies: their types are
        # Any to mypyc (correct, only less specialised); modules not compiled are read
        # for their types only (their type errors are not this build's concern).
        return mypycify([*COMPILED, "--ignore-missing-imports", "--follow-imports=silent"],
                        opt_level="3")
    except (Exception, SystemExit) as e:  # any failure means: run interpreted
        _interpreted(e)
        return []


class BuildAllOrNone(build_ext):
    """Compile every module or none: a module compiled without the shared library the
    others need would not import, so a failure (no C compiler, no Python headers)
    removes whatever was built and leaves the sources to run interpreted."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # CompileError, LinkError, the compiler missing
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            _interpreted(e)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildAllOrNone})
