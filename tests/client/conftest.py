"""Fixtures for the client tests: the real API server in-process (see client_kit.py).

``server_handle`` is a restartable :class:`client_kit.ServerHandle`; ``apiserver`` the
running server; ``api`` an :class:`ApiClient` for it with the admin token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from client_kit import ServerHandle, client_config

from control.api import ApiServer
from control.client.rest import ApiClient


@pytest.fixture
async def server_handle(data_dir: Path) -> AsyncIterator[ServerHandle]:
    handle = ServerHandle(data_dir)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def apiserver(server_handle: ServerHandle) -> ApiServer:
    assert server_handle.server is not None
    return server_handle.server


@pytest.fixture
async def api(apiserver: ApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(client_config(apiserver)) as client:
        yield client
