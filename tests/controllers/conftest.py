"""Fixtures for the controller tests: a real API server on SQLite (``controller_kit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from controller_kit import Cluster


@pytest.fixture
async def cluster(data_dir: Path) -> AsyncIterator[Cluster]:
    async with Cluster(data_dir) as c:
        yield c
