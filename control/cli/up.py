"""``meshctl up``: start the all-in-one system and say how to reach everything.

The machinery is in ``control/up.py``; this module parses flags, prints the summary a
newcomer needs (API address, token and CA files, the demo's URL, the metrics
endpoints), waits for the demo's Pods to become Ready, and stops everything cleanly on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from control.client.rest import ApiClient
from control.controllers.podutil import is_ready

DEFAULT_DATA_DIR = Path(".mesh")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up", help="run the whole system on this machine: API server on SQLite, scheduler, "
                   "controllers, one node agent; --demo also applies config/demo/",
        description="Run the API server (embedded SQLite), the scheduler and controllers and "
                    "one node agent on this machine. State stays in --data-dir, so the next "
                    "'meshctl up' finds the cluster again. Ctrl-C stops everything.")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="where the store, certificates, tokens and agent state live "
                        "(default: ./.mesh)")
    p.add_argument("--demo", action="store_true",
                   help="also apply config/demo/ (a small shop of meshed services) and "
                        "serve it on --edge-port")
    p.add_argument("--runtime", choices=("auto", "docker", "process"), default="auto",
                   help="how the agent runs Pods (auto: Docker/Podman when one answers)")
    p.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    p.add_argument("--node-name", default=None, help="name of this machine's Node "
                   "(default: the host name)")
    p.add_argument("--api-port", type=int, default=6443)
    p.add_argument("--agent-port", type=int, default=10250)
    p.add_argument("--edge-port", type=int, default=8080,
                   help="port of the edge proxy in front of the demo's frontend")
    p.add_argument("--edge-admin-port", type=int, default=9901,
                   help="admin port of the edge proxy (/metrics, /clusters, /events)")
    p.add_argument("--no-client-config", dest="write_client_config", action="store_false",
                   help="do not write the 'local' context into meshctl's client config")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from control.up import UpConfig

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = args.runtime
    if args.demo and runtime == "auto":
        # The demo's services are Python programs of this installation: they need the
        # process runtime (the local test image holds only busybox).
        runtime = "process"
    cfg = UpConfig(data_dir=args.data_dir.resolve(), host=args.host, api_port=args.api_port,
                   agent_port=args.agent_port, edge_port=args.edge_port,
                   edge_admin_port=args.edge_admin_port, runtime=runtime,
                   demo=args.demo, write_client_config=args.write_client_config,
                   **({"node_name": args.node_name} if args.node_name else {}))
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return runner(_main(cfg))
    except KeyboardInterrupt:
        return 130


async def _main(cfg) -> int:
    from control.up import AllInOne

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    up = AllInOne(cfg)
    try:
        await up.start()
    except Exception as e:
        print(f"meshctl up: could not start: {e}", file=sys.stderr)
        await up.stop()
        return 1
    try:
        _print_summary(up)
        if cfg.demo:
            waiter = asyncio.create_task(_wait_demo(up, stop))
            await stop.wait()
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        else:
            await stop.wait()
        print("\nmeshctl up: stopping (pods, agent, controllers, API server)...", flush=True)
    finally:
        await up.stop()
    print("meshctl up: stopped; 'meshctl up' again resumes from "
          f"{cfg.data_dir}", flush=True)
    return 0


def _print_summary(up) -> None:
    cfg = up.config
    api = up.api
    lines = [
        f"mesh is up (state in {cfg.data_dir})",
        f"  API server    {api.url}   (CA {api.ca_file})",
        f"  admin token   {api.config.data_dir / 'admin.token'}",
        "  meshctl       context 'local' -> try: meshctl get nodes; meshctl get pods -A"
        if cfg.write_client_config else
        f"  meshctl       --server {api.url} --token-file ... --certificate-authority ...",
        f"  metrics       {api.url}/metrics (API server), "
        f"http://{cfg.host}:{cfg.agent_port}/stats/summary (agent)",
        f"  agent log     {up.agent.log_path}",
    ]
    if cfg.demo:
        lines.append(f"  demo          http://{cfg.host}:{cfg.edge_port}/   "
                     "(the shop's frontend, once its Pods are Ready)")
        lines.append(f"  edge proxy    http://{cfg.host}:{cfg.edge_admin_port}/metrics, "
                     "/clusters, /events   (log: "
                     f"{up.edge.log_path if up.edge else '-'})")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


async def _wait_demo(up, stop: asyncio.Event) -> None:
    """Report once every demo Pod is Ready (or what is still missing after the timeout)."""
    start = time.monotonic()
    async with ApiClient(up.client_config, user_agent="meshctl-up") as api:
        while not stop.is_set():
            pods = (await api.list("pods", namespace="default")).get("items", [])
            ready = [p for p in pods if is_ready(p)]
            if (pods and len(ready) == len(pods)
                    and await asyncio.to_thread(up.edge_ready)):
                print(f"demo ready: {len(ready)} pods Ready in "
                      f"{time.monotonic() - start:.0f}s -> "
                      f"curl http://{up.config.host}:{up.config.edge_port}/", flush=True)
                return
            if time.monotonic() - start > up.config.ready_timeout:
                waiting = sorted(p["metadata"]["name"] for p in pods if not is_ready(p))
                print(f"demo: still waiting for {len(waiting)} pod(s): "
                      f"{', '.join(waiting[:8])} (meshctl describe pod NAME says why)",
                      flush=True)
                return
            await asyncio.sleep(1.0)
