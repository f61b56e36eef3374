"""Two ways the meshctl tests run the real command line.

- :func:`run_main`: ``control.cli.main.main(argv)`` in this process with stdin, stdout
  and stderr redirected: the same code path as the script minus interpreter start-up,
  so most tests use it (async tests through ``asyncio.to_thread``, because ``main``
  runs its own event loop while the test's loop keeps serving the API).
- :data:`MESHCTL`: the installed console script, for the tests that pin the script
  itself (exit status through the process, signals, stdin).

Both read the client config from the environment (``MESH_CONFIG``), as a user's would.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple

from control.cli.main import main

MESHCTL = str(Path(sys.executable).parent / "meshctl")


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Awaitable[Result]]


def run_main(argv: Sequence[str], *, stdin: str | None = None) -> Result:
    """(exit status, stdout, stderr) of ``meshctl ARGV`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as e:  # argparse refusing the command line
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = saved_stdin
    return Result(rc, out.getvalue(), err.getvalue())
