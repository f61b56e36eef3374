"""What the meshctl tests share: the installed script's path and the runner's type."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")
Run = Callable[..., Awaitable[tuple[int, str, str]]]
