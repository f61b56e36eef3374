"""``loadtests`` is run from the repository root and is not an installed package: make it
importable here however pytest was started (``pytest`` alone does not put the current
directory on ``sys.path``; ``python -m pytest`` does)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
