"""Starting the API server: in-process (``ApiServer``, ``serve``) or as ``meshctl apiserver``.

:class:`ApiServer` wires the layers together: the store (``open_store`` from a URL, or
one the caller already opened), object storage and semantics, the watch cache, the
garbage collector, authentication (admin token generated once into the data directory,
plus an optional tokens file), TLS (certificates from the data directory, generated on
first start) and the aiohttp app. ``async with serve(config) as server:`` is the
fixture-friendly form other components' tests use; ``server.url``, ``server.ca_file``
and ``server.admin_token`` are what a client needs. ``port=0`` picks a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from control.api.auth import Authenticator, User, ensure_admin_token, load_tokens_file
from control.api.errors import ApiError
from control.api.gc import GarbageCollector
from control.api.objects import NAMESPACES, Objects
from control.api.storage import ObjectStorage
from control.api.tls import TlsFiles, ensure_certificates
from control.api.watch import WatchLimits
from control.api.watchcache import WatchCache
from control.signals import on_stop_signals
from control.store import Store, open_store

log = logging.getLogger(__name__)

DEFAULT_PORT = 6443


@dataclass(frozen=True)
class ApiServerConfig:
    """Settings of one API server. Defaults suit one machine."""

    data_dir: Path
    #: store URL; default ``sqlite:///{data_dir}/store.db``
    store_url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port
    #: serve HTTPS (certificates from ``tls_cert``/``tls_key`` or generated in data_dir)
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens_file: Path | None = None
    #: extra tokens (token -> user) beside the file, e.g. for tests
    tokens: Mapping[str, User] = field(default_factory=dict)
    body_limit: int = 3 * 1024 * 1024  # bytes; Kubernetes' default request limit is 3 MiB
    max_watchers: int = 1000
    bookmark_interval: float = 5.0  # seconds of quiet before a BOOKMARK
    watch_ring: int = 20_000  # events kept in memory for resuming watches

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.body_limit < 1024:
            raise ValueError(f"body_limit must be at least 1024 bytes, got {self.body_limit}")
        if self.max_watchers < 1:
            raise ValueError(f"max_watchers must be >= 1, got {self.max_watchers}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")


class ApiServer:
    """A running API server; see the module docstring."""

    def __init__(self, config: ApiServerConfig, *, store: Store | None = None) -> None:
        self.config = config
        self._given_store = store
        self.store: Store | None = store
        self.admin_token = ""
        self.admin_token_created = False
        self.tls_files: TlsFiles | None = None
        self.port = config.port
        self._runner: web.AppRunner | None = None
        self.cache: WatchCache | None = None
        self.gc: GarbageCollector | None = None
        self.objects: Objects | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.tls_files.ca if self.tls_files else None

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        authn = self._authenticator()
        if cfg.tls:
            self.tls_files = (TlsFiles(cfg.tls_cert, cfg.tls_key, None) if cfg.tls_cert
                              and cfg.tls_key else ensure_certificates(cfg.data_dir))
        if self.store is None:
            url = cfg.store_url or f"sqlite:///{(cfg.data_dir / 'store.db').resolve()}"
            self.store = await open_store(url)
        try:
            self.objects = Objects(ObjectStorage(self.store))
            await self._ensure_default_namespace()
            self.cache = WatchCache(self.store, ring_size=cfg.watch_ring)
            await self.cache.start()
            await self.objects.follow_namespaces(self.cache)
            self.gc = GarbageCollector(self.objects, self.cache)
            await self.gc.start()
            app = build_app_for(self, authn)
            # handler_cancellation: a watch whose client went away ends at once instead
            # of holding a watcher slot until its next write or its timeout.
            self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                         shutdown_timeout=1.0, handler_cancellation=True)
            await self._runner.setup()
            ssl_ctx = self.tls_files.server_context() if self.tls_files else None
            site = web.TCPSite(self._runner, cfg.host, cfg.port, ssl_context=ssl_ctx,
                               backlog=1024)
            await site.start()
            server = site._server
            if server is not None and getattr(server, "sockets", None):
                self.port = server.sockets[0].getsockname()[1]
        except BaseException:
            await self.stop()
            raise

    def _authenticator(self) -> Authenticator:
        cfg = self.config
        users = load_tokens_file(cfg.tokens_file) if cfg.tokens_file else {}
        authn = Authenticator(users)
        self.admin_token, self.admin_token_created = ensure_admin_token(cfg.data_dir)
        authn.add(self.admin_token, User("admin", frozenset({"admin"})))
        for token, user in cfg.tokens.items():
            authn.add(token, user)
        return authn

    async def _ensure_default_namespace(self) -> None:
        assert self.objects is not None
        try:
            await self.objects.create(NAMESPACES, None, {"metadata": {"name": "default"}})
        except ApiError as e:
            if e.code != 409:
                raise

    async def stop(self) -> None:
        if self._runner is not None:
            if self.cache is not None:  # end watch streams so the runner can finish
                self.cache.end_all("the server is shutting down")
            server = self._runner.server
            transports = [h.transport for h in server.connections] if server else []
            await self._runner.cleanup()
            self._runner = None
            # A TLS connection closes with a close_notify exchange that can outlive the
            # event loop when the peer is gone; cut what is left of them.
            for transport in transports:
                if transport is not None:
                    transport.abort()
        if self.gc is not None:
            await self.gc.stop()
            self.gc = None
        if self.cache is not None:
            await self.cache.stop()
            self.cache = None
        if self.store is not None and self._given_store is None:
            await self.store.close()
            self.store = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def build_app_for(server: ApiServer, authn: Authenticator) -> web.Application:
    from control.api.server import build_app

    cfg = server.config
    assert server.objects is not None
    assert server.cache is not None
    return build_app(server.objects, server.cache, authn, body_limit=cfg.body_limit,
                     watch_limits=WatchLimits(max_watchers=cfg.max_watchers,
                                              bookmark_interval=cfg.bookmark_interval),
                     server_address=f"{cfg.host}:{cfg.port}",
                     ready=lambda: server.cache is not None and server.cache.healthy)


@asynccontextmanager
async def serve(config: ApiServerConfig, *, store: Store | None = None
                ) -> AsyncIterator[ApiServer]:
    """Run an API server for the duration of the ``async with`` block."""
    server = ApiServer(config, store=store)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def run_apiserver(config: ApiServerConfig, *, stop: asyncio.Event | None = None
                        ) -> None:
    """Serve until ``stop`` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    with on_stop_signals(stop.set):
        await _serve_until(config, stop)


async def _serve_until(config: ApiServerConfig, stop: asyncio.Event) -> None:
    async with serve(config) as server:
        print(f"API server listening on {server.url}", flush=True)
        if server.ca_file:
            print(f"CA certificate: {server.ca_file}", flush=True)
        token_file = config.data_dir / "admin.token"
        if server.admin_token_created:
            print(f"admin token (shown once, saved in {token_file}): {server.admin_token}",
                  flush=True)
        else:
            print(f"admin token: in {token_file}", flush=True)
        await stop.wait()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The API server's options (shared by ``meshctl apiserver`` and :func:`main`)."""
    p.add_argument("--data-dir", type=Path, default=Path("mesh-data"),
                   help="state directory: store, certificates, admin token "
                        "(default: ./mesh-data)")
    p.add_argument("--store", dest="store_url", default=None,
                   help="store URL (default: sqlite:///DATA_DIR/store.db; or consul://...)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 6443)")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP instead of HTTPS (loopback testing only)")
    p.add_argument("--tls-cert", type=Path, help="serving certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="serving key (PEM)")
    p.add_argument("--token-file", type=Path,
                   help="CSV file of 'token,user,roles' lines (roles: admin;node;proxy;viewer)")
    p.add_argument("--max-body-bytes", type=int, default=3 * 1024 * 1024,
                   help="request body limit in bytes (default 3 MiB)")
    p.add_argument("--max-watchers", type=int, default=1000,
                   help="open watch streams allowed at once (default 1000)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def build_parser(prog: str = "meshctl apiserver") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run the Kubernetes-style API "
                                "server over the store (SQLite by default).")
    add_arguments(p)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """Start the server from parsed :func:`add_arguments` options; the exit status."""
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ApiServerConfig(
            data_dir=args.data_dir, store_url=args.store_url, host=args.host, port=args.port,
            tls=not args.insecure_http, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tokens_file=args.token_file, body_limit=args.max_body_bytes,
            max_watchers=args.max_watchers)
    except ValueError as e:
        print(f"meshctl apiserver: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(run_apiserver(config))
    except (ValueError, OSError) as e:
        print(f"meshctl apiserver: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))
