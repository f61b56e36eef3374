"""``meshctl up``: the whole system on one machine, in one process tree.

In this process: the API server on the embedded SQLite store and the controller manager
(scheduler and controllers, leader-elected so a second manager elsewhere stays idle).
As children: one node agent (``meshctl agent``; the Docker Engine API runtime when
Docker or Podman answers, processes otherwise) and, with ``--demo``, an edge meshproxy
that follows the demo's ``frontend`` Service through discovery, so the shop answers on
one fixed local URL whatever ports its Pods got.

State lives in the data directory (store, certificates, tokens, the agent's files), so
the next ``meshctl up`` finds the cluster again. Ctrl-C (or SIGTERM) stops the edge
proxy, then the agent (which stops the Pods it runs), then the controllers and the API
server. Children get SIGTERM from the kernel if this process dies without cleaning up
(``PR_SET_PDEATHSIG``), so nothing is left running behind a crash.

Neighbours: ``control/api/main.py`` (server), ``control/controllers/manager.py``,
``control/agent/main.py``, ``control/client/manifests.py`` (applying ``config/demo/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from control.api.auth import ADMIN_TOKEN_FILE
from control.api.main import ApiServer, ApiServerConfig
from control.client.config import ClientConfig, ConfigFile, config_path
from control.client.manifests import apply as apply_object
from control.client.manifests import display_name, load_paths
from control.client.rest import ApiClient
from control.controllers.manager import ControllerManager, ManagerConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "config" / "demo"
TOKENS_FILE = "tokens.csv"
PROXY_TOKEN_FILE = "proxy.token"
NODE_TOKEN_FILE = "node.token"
CONTEXT = "local"
EDGE_SERVICES = ("frontend", "recommendations")
Runtime = Literal["auto", "docker", "process"]


@dataclass(frozen=True)
class UpConfig:
    """Settings of ``meshctl up``; defaults suit a laptop."""

    data_dir: Path
    host: str = "127.0.0.1"
    api_port: int = 6443           # 0 picks a free port (tests)
    agent_port: int = 10250        # the agent's own API (logs, exec, stats)
    edge_port: int = 8080          # where the demo answers
    edge_admin_port: int = 9901    # the edge proxy's admin API (metrics, /clusters)
    node_name: str = field(default_factory=socket.gethostname)
    runtime: Runtime = "auto"
    demo: bool = False
    demo_dir: Path = DEMO_DIR
    write_client_config: bool = True
    ready_timeout: float = 120.0   # s to wait for the demo's Pods before saying so


def _ensure_token(path: Path) -> str:
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= 16:
            return token
    token = secrets.token_hex(32)  # hex: never starts with "-", which CLIs would read as a flag
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def ensure_tokens(data_dir: Path, node_name: str) -> Path:
    """The tokens file with this node's agent (role ``node``) and the sidecars' (role
    ``proxy``) tokens; each token also sits in a file of its own for the component."""
    node = _ensure_token(data_dir / NODE_TOKEN_FILE)
    proxy = _ensure_token(data_dir / PROXY_TOKEN_FILE)
    path = data_dir / TOKENS_FILE
    text = ("# token,user,roles -- written by meshctl up\n"
            f"{node},system:node:{node_name},node\n"
            f"{proxy},system:proxy,proxy\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A child process of ``up``, logging to a file in the data directory."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
            preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def stop(self, grace: float) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            for _ in range(int(grace * 20)):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()


class AllInOne:
    """The running system; ``async with AllInOne(cfg) as up:`` in tests."""

    def __init__(self, config: UpConfig) -> None:
        self.config = config
        self.api: ApiServer | None = None
        self.manager_task: asyncio.Task | None = None
        self._manager_stop = asyncio.Event()
        self.agent: Child | None = None
        self.edge: Child | None = None
        self.client_config: ClientConfig | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        tokens = ensure_tokens(cfg.data_dir, cfg.node_name)
        self.api = ApiServer(ApiServerConfig(
            data_dir=cfg.data_dir / "api", host=cfg.host, port=cfg.api_port,
            tokens_file=tokens))
        await self.api.start()
        self.client_config = ClientConfig(server=self.api.url, token=self.api.admin_token,
                                          ca_file=str(self.api.ca_file))
        # The metrics collector reads node stats from the agent with the agent's token.
        manager = ControllerManager(self.client_config, ManagerConfig(
            agent_token_file=cfg.data_dir / "agent" / "agent-token"))
        self.manager_task = asyncio.create_task(manager.run(self._manager_stop),
                                                name="controller-manager")
        self.agent = Child("agent", self.agent_argv(), cfg.data_dir / "logs" / "agent.log")
        if cfg.write_client_config:
            self._write_context()
        if cfg.demo:
            await self.apply_demo()
            self.edge = Child("edge", [str(Path(sys.executable).parent / "meshproxy"),
                                       "--config", str(self.write_edge_config())],
                              cfg.data_dir / "logs" / "edge.log")

    def agent_argv(self) -> list[str]:
        cfg = self.config
        assert self.api is not None
        return [sys.executable, "-m", "control.cli.main", "agent",
                "--server", self.api.url,
                "--api-token-file", str(cfg.data_dir / NODE_TOKEN_FILE),
                # Sidecars discover their upstreams with the proxy role's token.
                "--proxy-token-file", str(cfg.data_dir / PROXY_TOKEN_FILE),
                "--ca-file", str(self.api.ca_file),
                "--node-name", cfg.node_name, "--address", cfg.host,
                "--runtime", cfg.runtime,
                "--data-dir", str(cfg.data_dir / "agent"),
                "--listen", f"{cfg.host}:{cfg.agent_port}",
                # The demo's Pods run this installation's python and meshproxy.
                "--process-path", str(Path(sys.executable).parent),
                "--stop-pods-on-exit"]

    def write_edge_config(self) -> Path:
        """The edge proxy's config: one listener in front of the demo's frontend
        Service, whose endpoints it follows through discovery (with a cache file, so a
        restart while the API server is down still routes)."""
        cfg = self.config
        assert self.api is not None
        discovery = {"server": self.api.url,
                     "token_file": str(cfg.data_dir / PROXY_TOKEN_FILE),
                     "ca_file": str(self.api.ca_file),
                     "clusters": [{"cluster": name, "service": f"default/{name}",
                                   "port": "http"} for name in EDGE_SERVICES],
                     "cache_file": str(cfg.data_dir / "edge-discovery-cache.json")}
        edge = {
            "admin": {"address": cfg.host, "port": cfg.edge_admin_port},
            "listeners": [{"protocol": "http", "name": "edge", "address": cfg.host,
                           "port": cfg.edge_port,
                           "routes": [
                               # The chaos knob of the non-core service, so the
                               # quickstart can break it and watch the page degrade.
                               {"name": "chaos", "match": {"path": "/chaos"},
                                "cluster": "recommendations", "timeout": 5.0},
                               {"name": "shop", "cluster": "frontend", "timeout": 10.0}]}],
            "clusters": [{"name": name} for name in EDGE_SERVICES],
            "discovery": discovery,
            # The recommendations TrafficPolicy's degradation switch would also apply to
            # the edge's /chaos route; the edge is not a caller of recommendations, so
            # its file holds that switch off (the file wins over the control plane).
            "resilience": {"switches": [
                {"name": "default.recommendations", "level": "service",
                 "target": "recommendations", "mode": "off"}]},
        }
        path = cfg.data_dir / "edge.yaml"
        path.write_text("# written by meshctl up: the edge proxy in front of the demo\n"
                        + yaml.safe_dump(edge, sort_keys=False))
        return path

    def edge_ready(self) -> bool:
        """The edge proxy answers its admin /ready (true when there is no edge)."""
        if self.edge is None:
            return True
        if not self.edge.alive():
            return False
        try:
            url = f"http://{self.config.host}:{self.config.edge_admin_port}/ready"
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def _write_context(self) -> None:
        assert self.api is not None
        path = config_path()
        cf = ConfigFile.load(path)
        cf.set_context(CONTEXT, server=self.api.url,
                       **{"token-file": str((self.api.config.data_dir / ADMIN_TOKEN_FILE)
                                            .resolve()),
                          "certificate-authority": str(Path(str(self.api.ca_file)).resolve())})
        cf.use_context(CONTEXT)
        cf.save()

    async def apply_demo(self) -> list[str]:
        """Apply every manifest of the demo directory; return what was done."""
        if not self.config.demo_dir.is_dir():
            raise FileNotFoundError(
                f"demo manifests not found at {self.config.demo_dir} (run from a checkout)")
        assert self.client_config is not None
        objects = load_paths([str(self.config.demo_dir)], recursive=True)
        done = []
        async with ApiClient(self.client_config, user_agent="meshctl-up") as api:
            for m in objects:
                action, _ = await apply_object(api, m)
                done.append(f"{display_name(m.resource, m.name)} {action}")
        return done

    async def stop(self) -> None:
        grace = 15.0
        for child in (self.edge, self.agent):
            if child is not None:
                await child.stop(grace)
        self._manager_stop.set()
        if self.manager_task is not None:
            try:
                await asyncio.wait_for(self.manager_task, 10)
            except (TimeoutError, asyncio.CancelledError):
                self.manager_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.manager_task
            except Exception:  # a failed manager must not keep the API server up
                log.exception("controller manager ended with an error")
        if self.api is not None:
            await self.api.stop()

    async def __aenter__(self) -> AllInOne:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
