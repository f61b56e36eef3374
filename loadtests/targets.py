"""What the proxy benchmark measures: the backend, the proxies in front of it, their configs.

One nginx **backend** (one worker, ``return 200`` with a small body, keep-alive without a
request cap) answers every request. The **targets** are the ways to reach it:

============== ===== ===========================================================
name           layer  path
============== ===== ===========================================================
direct         -      client -> backend (the floor every proxy is compared to)
nginx          L7     nginx reverse proxy, upstream keep-alive pool (L7 reference)
haproxy-http   L7     haproxy ``mode http``
haproxy-tcp    L4     haproxy ``mode tcp`` (L4 reference)
meshproxy-l7   L7     meshproxy HTTP listener -> cluster
meshproxy-l4   L4     meshproxy TCP listener -> cluster
python-floor   L7     the least an HTTP-aware uvloop + httptools relay does
                      (``loadtests.floor``): what the platform allows any Python proxy
============== ===== ===========================================================

Every server runs one worker (``worker_processes 1``, ``nbthread 1``, ``--workers 1``)
so the comparison is per worker, as the issue's targets are. Each gets a config file in
the run's temporary directory and a free loopback port; nothing here binds anything but
127.0.0.1. :func:`plan` returns, per target, either the argv to start or the reason it
cannot run here (a missing command), which the report prints instead of numbers.

Neighbours: ``procs`` starts what this describes; ``bench`` decides the order.
"""

from __future__ import annotations

import resource
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from loadtests.procs import free_port

TargetName = Literal["direct", "nginx", "haproxy-http", "haproxy-tcp",
                     "meshproxy-l7", "meshproxy-l4", "python-floor"]
TARGETS: tuple[TargetName, ...] = ("direct", "nginx", "haproxy-http", "haproxy-tcp",
                                   "meshproxy-l7", "meshproxy-l4", "python-floor")
Layer = Literal["-", "L7", "L4"]
LAYER: dict[TargetName, Layer] = {
    "direct": "-", "nginx": "L7", "haproxy-http": "L7", "haproxy-tcp": "L4",
    "meshproxy-l7": "L7", "meshproxy-l4": "L4", "python-floor": "L7",
}
#: The reference each layer's ratios are taken against (the issue's wording).
REFERENCE: dict[Layer, TargetName] = {"L7": "nginx", "L4": "haproxy-tcp"}

HOST = "127.0.0.1"
#: The backend's body: small, fixed, and long enough that a truncated answer shows.
BODY = "hello from the benchmark backend, a small fixed body: 64 bytes.\n"
_NGINX_COMMON = """\
worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    # No cap on requests per connection: nginx's default (1000) would make the
    # keep-alive runs reconnect every thousand requests.
    keepalive_requests 100000000;
    keepalive_timeout 75s;
{body}
}}
"""


@dataclass(frozen=True)
class Planned:
    """A target that can be started: its argv (None: nothing to start) and its port."""

    name: str
    port: int
    argv: tuple[str, ...] | None


@dataclass(frozen=True)
class Unavailable:
    """A target that cannot run here, and why (printed in place of its numbers)."""

    name: str
    reason: str


def backend(tmp: Path) -> Planned:
    """The nginx backend every target ends at."""
    port = free_port()
    body = f"""\
    server {{
        listen {HOST}:{port} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "{BODY.rstrip()}\\n"; }}
    }}"""
    return Planned("backend", port, _nginx_argv(tmp, "backend", body))


def plan(name: TargetName, tmp: Path, backend_port: int) -> Planned | Unavailable:
    """How to start ``name`` in front of the backend on ``backend_port``."""
    if name == "direct":
        return Planned(name, backend_port, None)
    if name == "nginx":
        if shutil.which("nginx") is None:
            return Unavailable(name, "command 'nginx' not found (Debian package nginx-light)")
        return _nginx_proxy(tmp, backend_port)
    if name in ("haproxy-http", "haproxy-tcp"):
        if shutil.which("haproxy") is None:
            return Unavailable(name, "command 'haproxy' not found (Debian package haproxy)")
        return _haproxy(tmp, backend_port, mode="http" if name == "haproxy-http" else "tcp")
    if name in ("meshproxy-l7", "meshproxy-l4"):
        return _meshproxy(tmp, backend_port, layer="l7" if name == "meshproxy-l7" else "l4")
    if name == "python-floor":
        port = free_port()
        script = Path(__file__).with_name("floor.py")
        return Planned(name, port, (sys.executable, str(script), "--port", str(port),
                                    "--upstream", f"{HOST}:{backend_port}"))
    raise ValueError(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")


def _nginx_argv(tmp: Path, name: str, server_block: str) -> tuple[str, ...]:
    conf = tmp / f"{name}.nginx.conf"
    conf.write_text(_NGINX_COMMON.format(tmp=tmp, name=name, body=server_block))
    # -e: nginx opens its default error log before reading the config; keep it in tmp.
    return ("nginx", "-p", str(tmp), "-e", str(tmp / f"{name}.error.log"), "-c", str(conf))


def _nginx_proxy(tmp: Path, backend_port: int) -> Planned:
    port = free_port()
    body = f"""\
    upstream backend {{
        server {HOST}:{backend_port};
        keepalive 128;
        keepalive_requests 100000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}"""
    return Planned("nginx", port, _nginx_argv(tmp, "nginx", body))


def _haproxy(tmp: Path, backend_port: int, *, mode: Literal["http", "tcp"]) -> Planned:
    port = free_port()
    name = f"haproxy-{mode}"
    conf = tmp / f"{name}.cfg"
    extra = "    http-reuse always\n" if mode == "http" else ""
    conf.write_text(f"""\
global
    nbthread 1
    maxconn {_haproxy_maxconn()}
    pidfile {tmp}/{name}.pid

defaults
    mode {mode}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind {HOST}:{port}
    default_backend be

backend be
{extra}    server s1 {HOST}:{backend_port}
""")
    # -db: stay in the foreground (no daemon), so the process group holds it.
    return Planned(name, port, ("haproxy", "-db", "-f", str(conf)))


def _haproxy_maxconn() -> int:
    """haproxy refuses to start when it cannot raise the fd limit to about 2 x maxconn."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, (hard - 64) // 2))


def meshproxy_config(*, layer: Literal["l7", "l4"], port: int, backend_port: int,
                     admin_port: int) -> dict:
    """The meshproxy config for one listener in front of the backend (see
    ``config/meshproxy.example.yaml`` for the schema)."""
    listener: dict = {"name": f"bench-{layer}", "address": HOST, "port": port}
    if layer == "l7":
        listener |= {"protocol": "http",
                     "routes": [{"name": "all", "match": {"prefix": "/"}, "cluster": "backend"}]}
    else:
        listener |= {"protocol": "tcp", "cluster": "backend"}
    return {
        "listeners": [listener],
        "clusters": [{"name": "backend",
                      "endpoints": [{"address": f"{HOST}:{backend_port}"}]}],
        "admin": {"address": HOST, "port": admin_port},
        "process": {"workers": 1},
    }


def _meshproxy(tmp: Path, backend_port: int, *, layer: Literal["l7", "l4"]) -> Planned:
    port = free_port()
    conf = tmp / f"meshproxy-{layer}.yaml"
    doc = meshproxy_config(layer=layer, port=port, backend_port=backend_port,
                           admin_port=free_port())
    conf.write_text(yaml.safe_dump(doc, sort_keys=False))
    exe = Path(sys.executable).with_name("meshproxy")
    argv0 = str(exe) if exe.exists() else shutil.which("meshproxy")
    argv = (sys.executable, "-m", "meshproxy.cli") if argv0 is None else (argv0,)
    return Planned(f"meshproxy-{layer}", port, (*argv, "--config", str(conf), "--workers", "1"))
