"""Sidecar injection: a meshproxy beside every Pod annotated for the mesh.

A Pod with the annotation ``mesh.io/inject: "true"`` gets one more container,
``meshproxy``, added by :func:`inject` when the agent parses it (what Istio's mutating
webhook does at admission, done here on the node). Its inbound listener fronts the
app's port (``mesh.io/inbound-port``, default the first declared container port), and
the Pod's status maps that container port to the *sidecar's* host port, so the
endpoints, and thus all mesh traffic, go through the proxy; its admin port serves
``/ready`` (the sidecar's readiness probe, so the Pod is Ready only when its proxy
is) and ``/metrics``. The sidecar's lifecycle is the Pod's: it is started, probed,
restarted and terminated with the other containers.

The sidecar's command is this module (``python -m control.agent.sidecar``): it writes
the meshproxy config for the ports the agent allocated (passed as ``$(PORT_...)`` and
``$(MESH_APP_PORT)``) into its working directory and ``exec``\\ s meshproxy, so the
proxy is PID of the container and receives its SIGTERM (graceful drain).

Limits, said plainly: the sidecar runs meshproxy from this installation as a local
process, so injection needs the ``process`` runtime (a ``docker`` node reports the
sidecar as CreateContainerError until a meshproxy image exists); outbound listeners for
the Pod's upstreams and discovery from the control plane (issue 9) are not wired yet:
the proxy fronts the app inbound only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

import yaml

from control.agent.spec import Container, Pod, PodSpecError, Port, Probe

INJECT = "mesh.io/inject"
INBOUND_PORT = "mesh.io/inbound-port"
NAME = "meshproxy"
INBOUND = "mesh-inbound"
ADMIN = "mesh-admin"
APP_PORT_ENV = "MESH_APP_PORT"
# Container port numbers of the sidecar (Istio's): only names matter on this node.
INBOUND_CONTAINER_PORT = 15006
ADMIN_CONTAINER_PORT = 15000


def wanted(pod: Pod) -> bool:
    return pod.annotations.get(INJECT, "").lower() == "true"


def target_port(pod: Pod) -> tuple[str, int]:
    """(container name, container port) the inbound listener fronts."""
    declared = [(c.name, p.container_port) for c in pod.containers for p in c.ports]
    if not declared:
        raise PodSpecError(f"metadata.annotations[{INJECT}]",
                           "a meshed Pod needs a declared container port to front")
    raw = pod.annotations.get(INBOUND_PORT)
    if raw is None:
        return declared[0]
    for c in pod.containers:
        for p in c.ports:
            if raw == str(p.container_port) or (p.name and raw == p.name):
                return c.name, p.container_port
    raise PodSpecError(f"metadata.annotations[{INBOUND_PORT}]",
                       f"{raw!r} is not a declared container port of this Pod")


def inject(pod: Pod, *, python: str = sys.executable) -> Pod:
    """The Pod with its sidecar added (unchanged when not annotated)."""
    if not wanted(pod):
        return pod
    if any(c.name == NAME for c in pod.containers):
        raise PodSpecError("spec.containers", f"the name {NAME!r} is reserved for the sidecar")
    target_port(pod)  # refuse a Pod with nothing to front now, not at start
    sidecar = Container(
        name=NAME, image="meshproxy (local process)", pull_policy="Never",
        command=(python, "-m", "control.agent.sidecar", "--inbound", f"$(PORT_{_env(INBOUND)})",
                 "--admin", f"$(PORT_{_env(ADMIN)})", "--app", f"$({APP_PORT_ENV})",
                 "--pod", pod.key),
        ports=(Port(INBOUND_CONTAINER_PORT, INBOUND), Port(ADMIN_CONTAINER_PORT, ADMIN)),
        readiness=Probe(http_get=("/ready", ADMIN), period=1.0, timeout=1.0,
                        failure_threshold=3),
    )
    return replace(pod, containers=(*pod.containers, sidecar))


def _env(name: str) -> str:
    return name.upper().replace("-", "_")


def proxy_config(*, inbound: int, admin: int, app: int, host: str = "127.0.0.1") -> dict:
    """The meshproxy config of one sidecar: inbound listener → the app, admin port."""
    return {
        "listeners": [{"protocol": "http", "name": "inbound", "address": host,
                       "port": inbound,
                       "routes": [{"name": "app", "match": {"prefix": "/"},
                                   "cluster": "local-app"}]}],
        "clusters": [{"name": "local-app", "endpoints": [f"{host}:{app}"]}],
        "admin": {"enabled": True, "address": host, "port": admin},
        "reload": {"watch": False},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The sidecar's entry point: write the config, exec meshproxy."""
    p = argparse.ArgumentParser(prog="mesh-sidecar")
    p.add_argument("--inbound", type=int, required=True)
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--app", type=int, required=True)
    p.add_argument("--pod", required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    config = proxy_config(inbound=args.inbound, admin=args.admin, app=args.app,
                          host=args.host)
    with open("meshproxy.yaml", "w") as f:
        f.write(f"# sidecar of pod {args.pod}, written by the mesh agent\n")
        yaml.safe_dump(config, f, sort_keys=False)
    argv_exec = [sys.executable, "-m", "meshproxy.cli", "--config", "meshproxy.yaml"]
    os.execv(sys.executable, argv_exec)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
