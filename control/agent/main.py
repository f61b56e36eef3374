"""``meshctl agent``: run the node agent.

``main(argv)`` parses the agent's options, picks the runtime (``--runtime auto``:
the Docker Engine API when an engine answers on one of the sockets, the process
runtime otherwise, and it says which and why), and runs the pod manager
(``agent.py``) until SIGTERM or SIGINT.

Pod sources, one of:

- ``--server URL`` (with ``--api-token-file`` holding a ``node`` token, ``--ca-file``):
  the API server (``apisync.py``): the Node is registered and heartbeated, the Pods
  bound to it are run, their status and Events written back. Unset options come from
  the client configuration (``MESH_SERVER``, ``MESH_TOKEN_FILE``, ``MESH_CA_FILE``,
  the config file), as for every ``meshctl`` verb;
- ``--pod-manifest-path DIR``: static Pods (``static.py``), re-read every
  ``--sync-interval`` seconds, status written to files.

The agent API (``server.py``: logs, exec, stats) listens on ``--listen`` with a bearer
token from ``--token-file`` (generated in the data directory when absent).

Meshed Pods' sidecars discover their upstreams from the same API server with a token of
the ``proxy`` role (read-only Services, Endpoints, TrafficPolicies), never the node's:
``--proxy-token-file FILE`` names a file holding it (one line; the API server's tokens
file needs a matching ``TOKEN,USER,proxy`` line). The sidecars read that file
themselves, with the agent's ``--server`` and ``--ca-file`` (see ``sidecar.py``).
Without it, meshed Pods get their inbound proxy only, and a Pod declaring
``mesh.io/upstreams`` is refused with a reason.

On exit the containers keep running (as a kubelet restart leaves them) and the next
start adopts them; ``--stop-pods-on-exit`` stops them (for the all-in-one's Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from control import __version__
from control.agent.agent import Agent
from control.agent.clock import SystemClock
from control.agent.ports import HostPorts
from control.agent.runtime.base import Runtime
from control.agent.runtime.docker import DEFAULT_SOCKETS, DockerRuntime, detect_socket
from control.agent.runtime.process import ProcessRuntime
from control.agent.server import build_app
from control.agent.sidecar import MeshSettings
from control.agent.static import StaticPods, StatusFiles

log = logging.getLogger("control.agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshctl agent",
        description="Run the node agent: Pods in containers (Docker Engine API: Docker "
                    "or Podman) or as local processes, with probes and restarts.")
    p.add_argument("--node-name", default=socket.gethostname(),
                   help="this node's name (default: the hostname)")
    p.add_argument("--address", default="127.0.0.1",
                   help="the node's address: host ports are published on it")
    p.add_argument("--runtime", choices=("auto", "docker", "process"), default="auto",
                   help="auto: docker when an engine answers, else process")
    p.add_argument("--docker-socket", action="append", default=[], metavar="PATH",
                   help=f"engine socket to try (repeatable; default {', '.join(DEFAULT_SOCKETS)})")
    p.add_argument("--data-dir", type=Path, default=Path("/var/lib/mesh-agent"),
                   help="the agent's state: process runtime, volumes, status files")
    p.add_argument("--process-path", action="append", default=[], metavar="DIR",
                   help="directory searched first for the commands of process-runtime "
                        "Pods (repeatable; before the fixed system PATH)")
    p.add_argument("--port-range", default="30000-32767",
                   help="host ports handed to Pods (LOW-HIGH)")
    p.add_argument("--pod-manifest-path", type=Path,
                   help="run the Pods in this directory's manifests (static Pods)")
    p.add_argument("--server", help="API server URL (run the Pods bound to this node)")
    p.add_argument("--api-token-file", help="file holding this node's API token")
    p.add_argument("--ca-file", help="CA certificate of the API server")
    p.add_argument("--insecure-skip-tls-verify", action="store_true", default=None)
    p.add_argument("--proxy-token-file", type=Path,
                   help="file holding a token with the proxy role, for the sidecars' "
                        "discovery of upstream Services (needs --server)")
    p.add_argument("--heartbeat", type=float, default=10.0,
                   help="seconds between Node status updates")
    p.add_argument("--node-label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label for this Node (repeatable)")
    p.add_argument("--listen", default="127.0.0.1:10250", metavar="HOST:PORT",
                   help="the agent API (logs, exec, stats); port 0 picks a free one")
    p.add_argument("--token-file", type=Path,
                   help="bearer token for the agent API (default: DATA_DIR/agent-token, "
                        "created with a random token when missing)")
    p.add_argument("--sync-interval", type=float, default=2.0,
                   help="seconds between reads of the Pod source")
    p.add_argument("--stop-pods-on-exit", action="store_true",
                   help="stop this node's Pods when the agent exits")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        lo, hi = (int(x) for x in args.port_range.split("-", 1))
        ports = HostPorts(args.address, (lo, hi))
    except ValueError as e:
        print(f"meshctl agent: --port-range {args.port_range!r}: {e}", file=sys.stderr)
        return 2
    labels = {}
    for item in args.node_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"meshctl agent: --node-label {item!r}: expected KEY=VALUE",
                  file=sys.stderr)
            return 2
        labels[key] = value
    args.labels = labels
    api_wanted = args.server or args.api_token_file or os.environ.get("MESH_SERVER")
    if api_wanted and args.pod_manifest_path is not None:
        print("meshctl agent: choose one pod source: --server or --pod-manifest-path",
              file=sys.stderr)
        return 2
    args.client_config = None
    if api_wanted:
        from control.client.config import ConfigError, resolve
        try:
            args.client_config = resolve(server=args.server, token_file=args.api_token_file,
                                         ca_file=args.ca_file,
                                         insecure=args.insecure_skip_tls_verify)
        except ConfigError as e:
            print(f"meshctl agent: {e}", file=sys.stderr)
            return 2
    elif args.pod_manifest_path is None:
        print("meshctl agent: give a pod source: --server URL (with --api-token-file) or "
              "--pod-manifest-path DIR", file=sys.stderr)
        return 2
    args.mesh = None
    if args.proxy_token_file is not None:
        if args.client_config is None:
            print("meshctl agent: --proxy-token-file needs --server (the sidecars discover "
                  "from the API server)", file=sys.stderr)
            return 2
        if not args.proxy_token_file.is_file():
            print(f"meshctl agent: --proxy-token-file {args.proxy_token_file}: no such file",
                  file=sys.stderr)
            return 2
        cc = args.client_config
        args.mesh = MeshSettings(cc.server, str(args.proxy_token_file.resolve()),
                                 str(Path(cc.ca_file).resolve()) if cc.ca_file else None,
                                 not cc.insecure)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        print(f"meshctl agent: --listen {args.listen!r}: expected HOST:PORT", file=sys.stderr)
        return 2
    args.data_dir.mkdir(parents=True, exist_ok=True)
    token = _token(args.token_file or args.data_dir / "agent-token")
    return asyncio.run(_run(args, ports, (host, int(port)), token))


def _token(path: Path) -> str:
    """The agent API token: read from ``path``, or generated there (mode 0600)."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_hex(32)  # hex: never starts with "-", which CLIs would read as a flag
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


async def pick_runtime(kind: str, *, node: str, data_dir: Path,
                       sockets: Sequence[str] = (),
                       process_path: Sequence[str] = ()) -> Runtime:
    """The runtime to use; ``auto`` prefers an answering Docker-API engine."""
    candidates = tuple(sockets) or DEFAULT_SOCKETS
    if kind in ("auto", "docker"):
        found = await detect_socket(candidates)
        if found is not None:
            rt = DockerRuntime(found, node=node)
            log.info("runtime: docker API at %s (%s)", found, await rt.version())
            return rt
        if kind == "docker":
            raise SystemExit(f"meshctl agent: no container engine answers at "
                             f"{', '.join(candidates)}")
        log.info("runtime: process (no container engine answered at %s)",
                 ", ".join(candidates))
    rt = ProcessRuntime(data_dir / "process", node=node, path_prefix=process_path)
    log.info("runtime: %s", await rt.version())
    return rt


async def _run(args: argparse.Namespace, ports: HostPorts, listen: tuple[str, int],
               token: str) -> int:
    data_dir: Path = args.data_dir
    runtime = await pick_runtime(args.runtime, node=args.node_name, data_dir=data_dir,
                                 sockets=args.docker_socket,
                                 process_path=args.process_path)
    api = sync = source = None
    if args.client_config is not None:
        from control.agent.apisync import ApiSync
        from control.client.rest import ApiClient
        api = ApiClient(args.client_config, user_agent=f"mesh-agent/{__version__}")
        sync = ApiSync(api, node=args.node_name, address=args.address, runtime=runtime,
                       data_dir=data_dir, labels=args.labels, heartbeat=args.heartbeat,
                       agent_port=None)
        sinks = {"status_sink": sync.write_status, "event_sink": sync.record_event,
                 "finalize_sink": sync.finalize_pod}
    else:
        source = StaticPods(args.pod_manifest_path, node=args.node_name)
        sinks = {"status_sink": StatusFiles(data_dir / "status")}
    agent = Agent(node=args.node_name, node_ip=args.address, runtime=runtime, ports=ports,
                  clock=SystemClock(), state_dir=data_dir, mesh=args.mesh, **sinks)
    runner = web.AppRunner(build_app(agent, token=token))
    await runner.setup()
    site = web.TCPSite(runner, *listen)
    await site.start()
    api_host, api_port = runner.addresses[0][:2]
    if sync is not None:
        sync.agent_port = api_port  # the Node advertises it (daemonEndpoints)
    log.info("agent API on http://%s:%s (bearer token in %s)", api_host, api_port,
             args.token_file or args.data_dir / "agent-token")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("mesh agent %s on node %s: pods from %s", __version__, args.node_name,
             args.client_config.server if sync else args.pod_manifest_path)
    try:
        if sync is not None:
            await sync.run(agent, stop)
        else:
            assert source is not None
            while not stop.is_set():
                await agent.set_pods(source.load())
                try:
                    await asyncio.wait_for(stop.wait(), args.sync_interval)
                except TimeoutError:
                    pass
    finally:
        log.info("stopping%s", " and stopping pods" if args.stop_pods_on_exit else
                 " (pods keep running)")
        await runner.cleanup()
        await agent.close(stop_pods=args.stop_pods_on_exit)
        await runtime.close()
        if api is not None:
            await api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
