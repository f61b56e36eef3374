"""Sidecar injection: a meshproxy beside every Pod annotated for the mesh.

A Pod with the annotation ``mesh.io/inject: "true"`` gets one more container,
``meshproxy``, added by :func:`inject` when the agent parses it (what Istio's mutating
webhook does at admission, done here on the node). Its inbound listener fronts the
app's port (``mesh.io/inbound-port``, default the first declared container port), and
the Pod's status maps that container port to the *sidecar's* host port, so the
endpoints, and thus all mesh traffic, go through the proxy; its admin port serves
``/ready`` (the sidecar's readiness probe, so the Pod is Ready only when its proxy
is) and ``/metrics``. The sidecar's lifecycle is the Pod's: it is started, probed,
restarted and terminated with the other containers, but stopped last (``lifecycle.py``).

Drain: when a meshed Pod is deleted, its app containers first sleep for the drain delay
(a preStop ``sleep`` the injection adds to every app container without a preStop hook
of its own; ``mesh.io/drain-seconds``, default ``DEFAULT_DRAIN`` = 5 s capped at half
the grace period; ``0`` turns it off), so callers' sidecars have dropped the Pod from
their endpoints before the app gets SIGTERM; the sidecar serves through it and gets its
own SIGTERM (stop accepting, finish in flight) only after the app has exited.

The sidecar's command is this module (``python -m control.agent.sidecar``): it writes
the meshproxy config for the ports the agent allocated (passed as ``$(PORT_...)`` and
``$(MESH_APP_PORT)``) into its working directory and ``exec``\\ s meshproxy, so the
proxy is PID of the container and receives its SIGTERM (graceful drain).

Outbound: the Pod declares the Services it calls in ``mesh.io/upstreams``, a comma
list of ``[namespace/]service[:port]:localport`` (``port``: the Service port's name or
number, default its only/first port). Each becomes an HTTP listener of the sidecar on
``<outbound address>:<localport>`` whose cluster follows that Service through the
proxy's discovery (list/watch of Services and Endpoints, see ``meshproxy/discovery/``),
so the app calls its upstreams locally and the proxy balances, retries and protects.
The discovery section points at the agent's API server with the ``proxy`` token the
agent was given (``meshctl agent --proxy-token-file``): :class:`MeshSettings`; the
sidecar keeps its last known endpoints in ``discovery.json`` in its directory.

The outbound address is the Pod's own loopback address, ``127.x.y.z`` derived from its
uid (Linux routes all of 127/8 to ``lo``), because process-runtime Pods share the node's
network: two replicas declaring ``catalog:8081`` on one node would otherwise fight over
``127.0.0.1:8081``. ``mesh.io/outbound-address`` sets it explicitly (e.g.
``127.0.0.1`` for a Pod alone on its node). Every app container is told where each
upstream is through ``MESH_UPSTREAM_<SERVICE>=host:port`` (service upper-cased, ``-`` →
``_``) and ``MESH_OUTBOUND_ADDRESS``.

Limits, said plainly: the sidecar runs meshproxy from this installation as a local
process, so injection needs the ``process`` runtime (a ``docker`` node reports the
sidecar as CreateContainerError until a meshproxy image exists). A Pod that declares
upstreams on an agent without a control plane (static Pods, or no
``--proxy-token-file``) is refused with a reason naming the missing flag.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace

import yaml

from control.agent.spec import Container, Hook, Pod, PodSpecError, Port, Probe

INJECT = "mesh.io/inject"
INBOUND_PORT = "mesh.io/inbound-port"
UPSTREAMS = "mesh.io/upstreams"
OUTBOUND_ADDRESS = "mesh.io/outbound-address"
DRAIN = "mesh.io/drain-seconds"
# Seconds a meshed app keeps serving after its Pod is marked for deletion: the Endpoints
# change reaches every caller's sidecar in about a second on a quiet cluster (watch,
# endpoints write, discovery watch, config swap); 5 s leaves room for a loaded one and is
# Istio's default drain duration. A preStop hook of the container's own replaces it.
DEFAULT_DRAIN = 5.0
UPSTREAM_ENV_PREFIX = "MESH_UPSTREAM_"
OUTBOUND_ADDRESS_ENV = "MESH_OUTBOUND_ADDRESS"
NAME = "meshproxy"
INBOUND = "mesh-inbound"
ADMIN = "mesh-admin"
APP_PORT_ENV = "MESH_APP_PORT"
# Container port numbers of the sidecar (Istio's): only names matter on this node.
INBOUND_CONTAINER_PORT = 15006
ADMIN_CONTAINER_PORT = 15000


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LOOPBACK = re.compile(r"^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """How this node's sidecars reach the control plane (from the agent's flags)."""

    server: str
    #: A file holding a token with the ``proxy`` role; sidecars read it themselves, so
    #: the token never appears in a command line or config file.
    token_file: str
    ca_file: str | None = None
    tls_verify: bool = True

    def args(self) -> tuple[str, ...]:
        out = ("--server", self.server, "--token-file", self.token_file)
        if self.ca_file:
            out += ("--ca-file", self.ca_file)
        if not self.tls_verify:
            out += ("--insecure-skip-tls-verify",)
        return out


@dataclass(frozen=True, slots=True)
class Upstream:
    """One declared upstream: a Service port reached on a local port."""

    namespace: str
    service: str
    port: str | int | None
    local_port: int

    @property
    def cluster(self) -> str:
        return f"{self.namespace}.{self.service}"

    @property
    def env(self) -> str:
        return UPSTREAM_ENV_PREFIX + self.service.upper().replace("-", "_")

    def arg(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.namespace}/{self.service}{port}:{self.local_port}"


def parse_upstream(text: str, *, namespace: str, field: str = f"metadata.annotations"
                   f"[{UPSTREAMS}]") -> Upstream:
    """``[namespace/]service[:port]:localport`` → :class:`Upstream`; PodSpecError naming
    what is wrong."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not parts[-1].isdigit() \
            or not 0 < int(parts[-1]) < 65536:
        raise PodSpecError(field, f"{text!r} is not [namespace/]service[:port]:localport "
                                  f"(localport 1-65535)")
    ns, sep, name = parts[0].rpartition("/")
    ns = ns if sep else namespace
    for label, what in ((ns, "namespace"), (name, "service")):
        if not _DNS_LABEL.match(label) or len(label) > 63:
            raise PodSpecError(field, f"{text!r}: {what} {label!r} is not a DNS-1123 label")
    port: str | int | None = None
    if len(parts) == 3:
        if not parts[1]:
            raise PodSpecError(field, f"{text!r}: empty service port")
        port = int(parts[1]) if parts[1].isdigit() else parts[1]
    return Upstream(ns, name, port, int(parts[-1]))


def upstreams(pod: Pod) -> tuple[Upstream, ...]:
    """The Pod's declared upstreams (``mesh.io/upstreams``), checked."""
    raw = pod.annotations.get(UPSTREAMS, "").strip()
    if not raw:
        return ()
    field = f"metadata.annotations[{UPSTREAMS}]"
    out: list[Upstream] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        up = parse_upstream(item, namespace=pod.namespace, field=field)
        for other in out:
            if other.local_port == up.local_port:
                raise PodSpecError(field, f"local port {up.local_port} is declared twice")
            if other.env == up.env:
                raise PodSpecError(field, f"{other.arg()} and {up.arg()} would share the "
                                          f"variable {up.env}")
        out.append(up)
    return tuple(out)


def outbound_address(pod: Pod) -> str:
    """The loopback address the Pod's outbound listeners bind (see the module
    docstring): ``mesh.io/outbound-address`` or one derived from the uid."""
    raw = pod.annotations.get(OUTBOUND_ADDRESS)
    if raw is not None:
        m = _LOOPBACK.match(raw)
        if m is None or not all(int(g) < 256 for g in m.groups()):
            raise PodSpecError(f"metadata.annotations[{OUTBOUND_ADDRESS}]",
                               f"{raw!r} is not a loopback address 127.x.y.z")
        return raw
    digest = hashlib.sha256(pod.uid.encode()).digest()
    # 127.1.0.0 - 127.254.255.254: clear of 127.0.0.x, which other software uses.
    return f"127.{1 + digest[0] % 254}.{digest[1]}.{1 + digest[2] % 254}"


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


def inject(pod: Pod, *, python: str = sys.executable, mesh: MeshSettings | None = None
           ) -> Pod:
    """The Pod with its sidecar added (unchanged when not annotated). ``mesh``: how the
    sidecar reaches the control plane; required when the Pod declares upstreams."""
    if not wanted(pod):
        return pod
    if any(c.name == NAME for c in pod.containers):
        raise PodSpecError("spec.containers", f"the name {NAME!r} is reserved for the sidecar")
    target_port(pod)  # refuse a Pod with nothing to front now, not at start
    ups = upstreams(pod)
    command: tuple[str, ...] = (
        python, "-m", "control.agent.sidecar", "--inbound", f"$(PORT_{_env(INBOUND)})",
        "--admin", f"$(PORT_{_env(ADMIN)})", "--app", f"$({APP_PORT_ENV})", "--pod", pod.key)
    containers = pod.containers
    if ups:
        if mesh is None:
            raise PodSpecError(f"metadata.annotations[{UPSTREAMS}]",
                               "outbound upstreams need the control plane, and this node's "
                               "agent has none for sidecars (start it with --server and "
                               "--proxy-token-file)")
        address = outbound_address(pod)
        command += ("--outbound-address", address, *mesh.args())
        for up in ups:
            command += ("--upstream", up.arg())
        env = ((OUTBOUND_ADDRESS_ENV, address),
               *((up.env, f"{address}:{up.local_port}") for up in ups))
        containers = tuple(replace(c, env=(*c.env, *env)) for c in containers)
    hold = drain_seconds(pod)
    if hold > 0:  # the app keeps serving while callers' proxies drop this Pod
        containers = tuple(c if c.pre_stop is not None
                           else replace(c, pre_stop=Hook(sleep_seconds=hold))
                           for c in containers)
    sidecar = Container(
        name=NAME, image="meshproxy (local process)", pull_policy="Never", command=command,
        ports=(Port(INBOUND_CONTAINER_PORT, INBOUND), Port(ADMIN_CONTAINER_PORT, ADMIN)),
        readiness=Probe(http_get=("/ready", ADMIN), period=1.0, timeout=1.0,
                        failure_threshold=3),
    )
    return replace(pod, containers=(*containers, sidecar))


def drain_seconds(pod: Pod) -> float:
    """How long a meshed Pod's app containers keep serving after the Pod is marked for
    deletion before they get SIGTERM: ``mesh.io/drain-seconds``, else ``DEFAULT_DRAIN``
    capped at half the grace period (the other half is the app's own shutdown)."""
    raw = pod.annotations.get(DRAIN)
    if raw is None:
        return min(DEFAULT_DRAIN, pod.termination_grace_period / 2)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise PodSpecError(f"metadata.annotations[{DRAIN}]",
                           f"must be a non-negative number of seconds, got {raw!r}")
    return value


def _env(name: str) -> str:
    return name.upper().replace("-", "_")


def proxy_config(*, inbound: int, admin: int, app: int, host: str = "127.0.0.1",
                 upstreams: Sequence[Upstream] = (), outbound_address: str = "127.0.0.1",
                 mesh: MeshSettings | None = None, cache_file: str | None = None) -> dict:
    """The meshproxy config of one sidecar: inbound listener → the app, one outbound
    listener per upstream → a cluster following that Service, admin port."""
    listeners: list[dict] = [{"protocol": "http", "name": "inbound", "address": host,
                              "port": inbound,
                              "routes": [{"name": "app", "match": {"prefix": "/"},
                                          "cluster": "local-app"}]}]
    clusters: list[dict] = [{"name": "local-app", "endpoints": [f"{host}:{app}"]}]
    config: dict = {"listeners": listeners, "clusters": clusters,
                    "admin": {"enabled": True, "address": host, "port": admin},
                    "reload": {"watch": False}}
    if not upstreams:
        return config
    if mesh is None:
        raise ValueError("upstreams need mesh settings (the control plane)")
    for up in upstreams:
        listeners.append({"protocol": "http", "name": f"out-{up.cluster}",
                          "address": outbound_address, "port": up.local_port,
                          "routes": [{"name": up.service, "match": {"prefix": "/"},
                                      "cluster": up.cluster}]})
        clusters.append({"name": up.cluster})
    discovery: dict = {"server": mesh.server, "token_file": mesh.token_file,
                       "tls_verify": mesh.tls_verify,
                       "clusters": [{"cluster": up.cluster,
                                     "service": f"{up.namespace}/{up.service}",
                                     **({"port": up.port} if up.port is not None else {})}
                                    for up in upstreams]}
    if mesh.ca_file:
        discovery["ca_file"] = mesh.ca_file
    if cache_file:
        discovery["cache_file"] = cache_file
    config["discovery"] = discovery
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """The sidecar's entry point: write the config, exec meshproxy."""
    p = argparse.ArgumentParser(prog="mesh-sidecar")
    p.add_argument("--inbound", type=int, required=True)
    p.add_argument("--admin", type=int, required=True)
    p.add_argument("--app", type=int, required=True)
    p.add_argument("--pod", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--upstream", action="append", default=[],
                   help="namespace/service[:port]:localport (repeatable)")
    p.add_argument("--outbound-address", default="127.0.0.1")
    p.add_argument("--server", help="API server URL for discovery")
    p.add_argument("--token-file", help="file holding a token with the proxy role")
    p.add_argument("--ca-file")
    p.add_argument("--insecure-skip-tls-verify", action="store_true")
    args = p.parse_args(argv)
    ns = args.pod.partition("/")[0] or "default"
    try:
        ups = [parse_upstream(u, namespace=ns, field="--upstream") for u in args.upstream]
    except PodSpecError as e:
        p.error(str(e))
    mesh = None
    if args.server:
        if not args.token_file:
            p.error("--server needs --token-file")
        mesh = MeshSettings(args.server, args.token_file, args.ca_file,
                            not args.insecure_skip_tls_verify)
    elif ups:
        p.error("--upstream needs --server and --token-file")
    config = proxy_config(inbound=args.inbound, admin=args.admin, app=args.app,
                          host=args.host, upstreams=ups,
                          outbound_address=args.outbound_address, mesh=mesh,
                          cache_file=os.path.abspath("discovery.json"))
    with open("meshproxy.yaml", "w") as f:
        f.write(f"# sidecar of pod {args.pod}, written by the mesh agent\n")
        yaml.safe_dump(config, f, sort_keys=False)
    argv_exec = [sys.executable, "-m", "meshproxy.cli", "--config", "meshproxy.yaml"]
    os.execv(sys.executable, argv_exec)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
