"""Fixtures for the meshctl tests: the real API server in-process and the real script.

``apiserver`` runs :func:`control.api.serve` (HTTPS, generated CA, admin token) in the
test's event loop; ``meshctl`` runs the installed console script as a subprocess (so the
server keeps serving while it runs) with a client config file pointing at that server,
and returns (exit status, stdout, stderr).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_kit import MESHCTL, Run

from control.api import ApiServer, ApiServerConfig
from control.client.config import ConfigFile


@pytest.fixture
async def apiserver(data_dir: Path) -> AsyncIterator[ApiServer]:
    server = ApiServer(ApiServerConfig(data_dir=data_dir, port=0, bookmark_interval=0.5))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def client_env(apiserver: ApiServer, tmp_path: Path) -> dict[str, str]:
    """Environment whose client config (written by the library) points at the server."""
    cfg = ConfigFile(tmp_path / "client" / "config.yaml")
    cfg.set_context("test", server=apiserver.url, token=apiserver.admin_token,
                    certificate_authority=str(apiserver.ca_file))
    cfg.save()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["MESH_CONFIG"] = str(cfg.path)
    return env


@pytest.fixture
def meshctl(client_env: dict[str, str]) -> Run:
    async def run(*args: str, stdin: str | None = None,
                  timeout: float = 60.0) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            MESHCTL, *args, env=client_env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()
    return run
