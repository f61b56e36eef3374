"""Requirements on the machine: root, commands from Debian packages.

``@pytest.mark.system(commands=[...], root=True)`` marks a test that needs them. Where
they are missing the test is skipped with the reason; with ``MESH_REQUIRE_SYSTEM=1``
(as ``.ci/run`` sets) the same test fails instead, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

REQUIRE_ENV = "MESH_REQUIRE_SYSTEM"


def required() -> bool:
    """True when missing system requirements must fail tests instead of skipping them."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


def missing(commands: Iterable[str] = (), *, root: bool = False) -> list[str]:
    """What of the requirements this machine lacks, as human-readable phrases."""
    out = [f"command {c!r} not found (install its Debian package)" for c in commands
           if shutil.which(c) is None]
    if root and os.geteuid() != 0:
        out.append("root privileges")
    return out
