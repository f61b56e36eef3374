"""Build of the ``mesh`` distribution (metadata in ``pyproject.toml``).

The data plane's per-request code (the HTTP request path, ``meshproxy/http/`` and
``meshproxy/router.py``; the L4 path, ``meshproxy/tcp/``) is compiled with mypyc into C
extension modules placed next to their sources; each request then runs without the
interpreter's per-bytecode dispatch (about a sixth less user time per request through
the L7 proxy, a fifth per L4 keep-alive request and an eighth per L4 connection;
``loadtests/README.md``). The sources stay the code:
the same files run interpreted when the build is skipped (``MESH_COMPILE=0``) or
cannot compile (no C compiler or Python headers), with a warning at build time.
``docs/ARCHITECTURE.md`` ("Departures": the request path is compiled) has the rules
such code keeps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: Compiled with mypyc; ``tests/conftest.py`` refuses to run against a stale build.
COMPILED = [*sorted(str(p) for p in Path("meshproxy/http").glob("*.py")),
            "meshproxy/router.py",
            *sorted(str(p) for p in Path("meshproxy/tcp").glob("*.py"))]


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
