"""The real API server for client tests: started in-process, restartable on one data dir.

``ServerHandle`` runs :class:`control.api.ApiServer` (HTTPS with its generated CA, the
admin token, plus a ``viewer`` token) on a free port in the test's event loop; ``stop``
and ``start`` again on the same data directory (by default the same port) are how tests
cut watch connections and make the store's history matter. ``conftest.py`` wraps it in
fixtures; test modules import the helpers from here (a unique module name, unlike
``conftest``).
"""

from __future__ import annotations

from pathlib import Path

from control.api import ApiServer, ApiServerConfig
from control.api.auth import User
from control.client.config import ClientConfig

VIEWER_TOKEN = "viewer-token-for-tests"


def server_config(data_dir: Path, port: int = 0) -> ApiServerConfig:
    # bookmark_interval is short so resumes after quiet periods use recent versions.
    return ApiServerConfig(data_dir=data_dir, port=port, bookmark_interval=0.5,
                           tokens={VIEWER_TOKEN: User("watcher", frozenset({"viewer"}))})


def client_config(server: ApiServer, token: str | None = None) -> ClientConfig:
    return ClientConfig(server=server.url, token=token or server.admin_token,
                        ca_file=str(server.ca_file))


class ServerHandle:
    """The running server, restartable on the same data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: ApiServer | None = None
        self.port = 0

    async def start(self, port: int | None = None) -> ApiServer:
        server = ApiServer(server_config(self.data_dir, self.port if port is None else port))
        await server.start()
        self.server = server
        if port is None:
            self.port = server.port
        return server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
