"""The seam between the pod worker and whatever runs containers: the ``Runtime`` protocol.

Two implementations: ``docker.py`` (Docker Engine HTTP API over a unix socket; Docker
or Podman's compatible service) and ``process.py`` (local process groups). Both are
*container*-level, like Kubernetes' CRI: the pod worker decides what should run, the
runtime only does what it is told and reports what is there. Every container carries
labels (:data:`LABELS`) naming the node, the Pod (uid, namespace, name), the container
and its attempt number, so after an agent restart :meth:`Runtime.list` finds exactly
the containers this node's agent made and the pod worker adopts them instead of
starting duplicates.

Errors are translated once, here, into a small tree whose ``reason`` is the Kubernetes
waiting reason a user sees (``ErrImagePull``, ``ErrImageNeverPull``,
``CreateContainerError``, ``RunContainerError``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from control.agent.spec import Container, Pod, PullPolicy, expand

# Labels every managed container carries (kubelet uses io.kubernetes.*).
LABEL_NODE = "mesh.node"
LABEL_POD_UID = "mesh.pod.uid"
LABEL_POD_NAMESPACE = "mesh.pod.namespace"
LABEL_POD_NAME = "mesh.pod.name"
LABEL_CONTAINER = "mesh.container.name"
LABEL_ATTEMPT = "mesh.container.attempt"
LABEL_PORTS = "mesh.container.ports"  # JSON list of the published PortBindings
LABELS = (LABEL_NODE, LABEL_POD_UID, LABEL_POD_NAMESPACE, LABEL_POD_NAME, LABEL_CONTAINER,
          LABEL_ATTEMPT, LABEL_PORTS)

ContainerState = Literal["created", "running", "exited"]


class ContainerRuntimeError(Exception):
    """A runtime operation failed; ``reason`` is the waiting reason to show for it."""

    reason = "RuntimeError"


class ImagePullError(ContainerRuntimeError):
    reason = "ErrImagePull"


class ImageNeverPullError(ContainerRuntimeError):
    reason = "ErrImageNeverPull"


class CreateContainerError(ContainerRuntimeError):
    reason = "CreateContainerError"


class RunContainerError(ContainerRuntimeError):
    reason = "RunContainerError"


class ContainerNotFound(ContainerRuntimeError):
    reason = "ContainerNotFound"


class RuntimeUnavailable(ContainerRuntimeError):
    """The engine does not answer (socket missing, daemon down)."""

    reason = "RuntimeUnavailable"


@dataclass(frozen=True)
class PortBinding:
    """A container port published on the node."""

    container_port: int
    host_port: int
    host_ip: str
    protocol: str = "TCP"
    name: str = ""

    def to_json(self) -> dict[str, object]:
        return {"containerPort": self.container_port, "hostPort": self.host_port,
                "hostIP": self.host_ip, "protocol": self.protocol, "name": self.name}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> PortBinding:
        return cls(container_port=int(d["containerPort"]), host_port=int(d["hostPort"]),
                   host_ip=str(d["hostIP"]), protocol=str(d.get("protocol", "TCP")),
                   name=str(d.get("name", "")))


@dataclass(frozen=True)
class ContainerConfig:
    """Everything a runtime needs to create one container of a Pod, resolved."""

    node: str
    pod: Pod
    container: Container
    attempt: int
    ports: tuple[PortBinding, ...] = ()
    volume_dirs: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    """Host directory of each volume (emptyDir made by the worker, hostPath as given)."""
    extra_env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    """Variables the worker adds (the sidecar's ``MESH_APP_PORT``), before the spec's."""

    def labels(self) -> dict[str, str]:
        return {
            LABEL_NODE: self.node, LABEL_POD_UID: self.pod.uid,
            LABEL_POD_NAMESPACE: self.pod.namespace, LABEL_POD_NAME: self.pod.name,
            LABEL_CONTAINER: self.container.name, LABEL_ATTEMPT: str(self.attempt),
            LABEL_PORTS: json.dumps([p.to_json() for p in self.ports]),
        }

    def name(self) -> str:
        """A readable, unique name, like the kubelet's ``k8s_<container>_<pod>_...``."""
        return (f"mesh_{self.container.name}_{self.pod.name}_{self.pod.namespace}_"
                f"{self.pod.uid[:8]}_{self.attempt}")

    def env(self, *, ports_as: Literal["container", "host"]) -> dict[str, str]:
        """The container's environment: the spec's ``env`` after the port variables.

        ``PORT`` is the first declared port and ``PORT_<NAME>`` each named one, as the
        process inside sees them: the container port where the engine maps ports
        (``docker``), the host port where the process listens on the node itself
        (``process``). A pod written against ``$(PORT)`` runs unchanged on both.
        """
        env: dict[str, str] = dict(self.extra_env)
        for i, b in enumerate(self.ports):
            value = str(b.container_port if ports_as == "container" else b.host_port)
            if i == 0:
                env["PORT"] = value
            if b.name:
                env["PORT_" + re.sub(r"[^A-Za-z0-9]", "_", b.name).upper()] = value
        for k, v in self.container.env:
            env[k] = expand(v, env)
        return env

    def argv(self, env: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(command, args)`` after Kubernetes' ``$(VAR)`` expansion."""
        c = self.container
        return (tuple(expand(s, env) for s in c.command), tuple(expand(s, env) for s in c.args))


@dataclass(frozen=True)
class ContainerInfo:
    """What a runtime reports about one of its containers."""

    id: str
    labels: dict[str, str]
    state: ContainerState
    image: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str = ""  # the engine's message for a failed start, if any
    oom_killed: bool = False
    memory_limit: int | None = None  # bytes, as the engine applied it
    cpu_limit_millis: int | None = None  # millicores, as the engine applied it

    @property
    def pod_uid(self) -> str:
        return self.labels.get(LABEL_POD_UID, "")

    @property
    def container_name(self) -> str:
        return self.labels.get(LABEL_CONTAINER, "")

    @property
    def attempt(self) -> int:
        try:
            return int(self.labels.get(LABEL_ATTEMPT, "0"))
        except ValueError:
            return 0

    @property
    def ports(self) -> tuple[PortBinding, ...]:
        try:
            return tuple(PortBinding.from_json(d)
                         for d in json.loads(self.labels.get(LABEL_PORTS, "[]")))
        except (ValueError, KeyError, TypeError):
            return ()


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes  # stdout and stderr interleaved


@dataclass(frozen=True)
class Stats:
    """A container's resource use: cumulative CPU time and current memory."""

    cpu_seconds: float
    memory_bytes: int


class Runtime(Protocol):
    """Runs containers for the pod worker. Implementations: ``docker``, ``process``."""

    name: str  # "docker" or "process": shown in the Node's status

    async def version(self) -> str:
        """The engine's identity and version; raises RuntimeUnavailable when it is down."""

    async def ensure_image(self, image: str, *, policy: PullPolicy) -> None:
        """Make ``image`` present per ``policy``; ImagePullError / ImageNeverPullError."""

    async def create(self, config: ContainerConfig) -> str:
        """Create (not start) a container; return its id. CreateContainerError."""

    async def start(self, container_id: str) -> None:
        """Start a created container. RunContainerError (bad command, port taken...)."""

    async def stop(self, container_id: str, *, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns once it has exited."""

    async def remove(self, container_id: str) -> None:
        """Remove a stopped container and what the runtime kept for it (idempotent)."""

    async def list(self, *, pod_uid: str | None = None) -> list[ContainerInfo]:
        """This node's managed containers (all states), optionally of one Pod."""

    async def inspect(self, container_id: str) -> ContainerInfo:
        """One container's current state; ContainerNotFound."""

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        """stdout and stderr so far (the last ``tail`` lines when given)."""

    async def exec(self, container_id: str, argv: list[str], *, timeout: float) -> ExecResult:
        """Run ``argv`` inside a running container and wait for it (at most ``timeout``)."""

    async def stats(self, container_id: str) -> Stats:
        """CPU and memory use of a running container."""

    async def close(self) -> None:
        """Release connections; containers keep running (they are adopted on restart)."""
