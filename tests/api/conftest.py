"""Fixtures of the API server tests: ``apiserver`` (a real server on a real SQLite
file, see ``apitest.start_server``) and ``api`` (an admin JSON client of it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from apitest import Api, start_server

from control.api import ApiServer


@pytest.fixture
async def apiserver(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with start_server(data_dir) as server:
        yield server


@pytest.fixture
async def api(apiserver: ApiServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(apiserver, session, apiserver.admin_token)


