"""Fixtures for the meshctl tests: the real API server in-process and the real CLI.

``apiserver`` runs :class:`control.api.ApiServer` (HTTPS, generated CA, admin token) in
the test's event loop; ``client_env`` points ``MESH_CONFIG`` at a client config for it
(in ``os.environ`` too, for in-process runs); ``meshctl`` runs the command line
in-process in a worker thread and ``meshctl_script`` the installed script as a
subprocess; both return (exit status, stdout, stderr). See cli_kit.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_kit import MESHCTL, Result, Run, run_main

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
def client_env(apiserver: ApiServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment whose client config (written by the library) points at the server;
    also applied to this process for in-process runs."""
    cfg = ConfigFile(tmp_path / "client" / "config.yaml")
    cfg.set_context("test", server=apiserver.url, token=apiserver.admin_token,
                    certificate_authority=str(apiserver.ca_file))
    cfg.save()
    for key in [k for k in os.environ if k.startswith("MESH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MESH_CONFIG", str(cfg.path))
    return dict(os.environ)


@pytest.fixture
def meshctl(client_env: dict[str, str]) -> Run:
    """``await meshctl(*argv, stdin=...)``: the CLI in-process, off the event loop."""
    async def run(*args: str, stdin: str | None = None) -> Result:
        return await asyncio.to_thread(run_main, args, stdin=stdin)
    return run


@pytest.fixture
def meshctl_script(client_env: dict[str, str]) -> Run:
    """``await meshctl_script(*argv, stdin=...)``: the installed script, a subprocess."""
    async def run(*args: str, stdin: str | None = None,
                  timeout: float = 60.0) -> Result:
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
        return Result(proc.returncode, out.decode(), err.decode())
    return run
