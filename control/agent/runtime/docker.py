"""The ``docker`` runtime: the Docker Engine HTTP API over its unix socket.

Speaks the documented Engine API (``/v1.41``) with aiohttp's ``UnixConnector``, so the
same code drives Docker (``/var/run/docker.sock``) and Podman's compatible service
(``podman system service unix:///run/podman/podman.sock``). Only endpoints both serve
are used: ``/_ping``, ``/version``, ``/images/{name}/json``, ``/images/create``,
``/containers/create|json|{id}/json|start|stop|logs|stats|exec``, ``/exec/{id}/start|json``.

Mapping from the Pod: ``command`` → ``Entrypoint`` and ``args`` → ``Cmd`` (Kubernetes'
rule), env, labels (see ``base.LABELS``), ports published as ``HostIp:HostPort`` from
the worker's :class:`~control.agent.ports.HostPorts`, ``Memory`` and ``NanoCpus`` from
the limits, volumes as bind mounts (an emptyDir is a directory the worker made). The
engine's own restart policy is ``no``: restarts are the pod worker's decision, so
back-off and restart counts work the same on every runtime.

Engine errors become the ``base`` error tree here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from control.agent.runtime.base import (
    LABEL_NODE,
    LABEL_POD_UID,
    ContainerConfig,
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntimeError,
    CreateContainerError,
    ExecResult,
    ImageNeverPullError,
    ImagePullError,
    RunContainerError,
    RuntimeUnavailable,
    Stats,
)
from control.agent.spec import PullPolicy

API = "/v1.41"
DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")


class DockerRuntime:
    """A container runtime backed by a Docker-API engine listening on ``socket_path``."""

    name = "docker"

    def __init__(self, socket_path: str, *, node: str, request_timeout: float = 30.0,
                 pull_timeout: float = 300.0) -> None:
        self.socket_path = socket_path
        self.node = node
        self.request_timeout = request_timeout
        self.pull_timeout = pull_timeout
        self._session: aiohttp.ClientSession | None = None

    # -- engine ------------------------------------------------------------------

    async def version(self) -> str:
        status, body = await self._call("GET", "/version")
        if status != 200:
            raise RuntimeUnavailable(f"engine at {self.socket_path}: /version said {status}")
        d = json.loads(body)
        components = [c.get("Name", "") for c in d.get("Components") or []]
        engine = "podman" if any("Podman" in c for c in components) else "docker"
        return f"{engine} {d.get('Version', '?')} (API {d.get('ApiVersion', '?')})"

    async def ping(self) -> bool:
        """True when the engine answers ``/_ping``."""
        try:
            status, _ = await self._call("GET", "/_ping", timeout=5)
        except RuntimeUnavailable:
            return False
        return status == 200

    # -- images ------------------------------------------------------------------

    async def ensure_image(self, image: str, *, policy: PullPolicy) -> None:
        status, _ = await self._call("GET", f"/images/{quote(image, safe='')}/json")
        present = status == 200
        if policy == "Never":
            if not present:
                raise ImageNeverPullError(
                    f'image "{image}" is not present with pull policy of Never')
            return
        if present and policy == "IfNotPresent":
            return
        status, body = await self._call("POST", "/images/create",
                                        params={"fromImage": image},
                                        timeout=self.pull_timeout)
        if status != 200:
            raise ImagePullError(f'failed to pull image "{image}": {_message(body)}')
        # A 200 streams progress; a failure may still arrive as an {"error": ...} line.
        for line in body.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("error"):
                raise ImagePullError(f'failed to pull image "{image}": {event["error"]}')

    # -- containers --------------------------------------------------------------

    async def create(self, config: ContainerConfig) -> str:
        c = config.container
        env = config.env(ports_as="container")
        command, args = config.argv(env)
        exposed: dict[str, dict] = {}
        bindings: dict[str, list[dict[str, str]]] = {}
        for b in config.ports:
            key = f"{b.container_port}/{b.protocol.lower()}"
            exposed[key] = {}
            bindings.setdefault(key, []).append({"HostIp": b.host_ip,
                                                 "HostPort": str(b.host_port)})
        binds = []
        for m in c.mounts:
            host = config.volume_dirs.get(m.volume)
            if host is None:
                raise CreateContainerError(f"volume {m.volume!r} has no host directory")
            binds.append(f"{host}:{m.mount_path}:{'ro' if m.read_only else 'rw'}")
        host_config: dict[str, Any] = {"PortBindings": bindings, "Binds": binds,
                                       "RestartPolicy": {"Name": "no"}}
        if c.memory_limit_bytes is not None:
            host_config["Memory"] = c.memory_limit_bytes
        if c.cpu_limit_millis is not None:
            host_config["NanoCpus"] = c.cpu_limit_millis * 1_000_000
        body: dict[str, Any] = {
            "Image": c.image, "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": config.labels(), "ExposedPorts": exposed, "HostConfig": host_config,
            "Hostname": config.pod.name[:63],
        }
        if command:
            body["Entrypoint"] = list(command)
            body["Cmd"] = list(args)
        elif args:
            body["Cmd"] = list(args)
        if c.working_dir:
            body["WorkingDir"] = c.working_dir
        status, raw = await self._call("POST", "/containers/create",
                                       params={"name": config.name()}, json_body=body)
        if status != 201:
            raise CreateContainerError(f"create container {c.name}: {_message(raw)}")
        return str(json.loads(raw)["Id"])

    async def start(self, container_id: str) -> None:
        status, raw = await self._call("POST", f"/containers/{container_id}/start")
        if status == 404:
            raise ContainerNotFound(f"no container {container_id[:12]}")
        if status not in (204, 304):
            raise RunContainerError(_message(raw))

    async def stop(self, container_id: str, *, grace: float) -> None:
        # The engine sends the stop signal (SIGTERM), waits ``t`` seconds, then SIGKILLs.
        t = max(0, math.ceil(grace))
        status, raw = await self._call("POST", f"/containers/{container_id}/stop",
                                       params={"t": str(t)}, timeout=t + self.request_timeout)
        if status not in (204, 304, 404):
            raise ContainerRuntimeError(f"stop {container_id[:12]}: {_message(raw)}")

    async def remove(self, container_id: str) -> None:
        status, raw = await self._call("DELETE", f"/containers/{container_id}",
                                       params={"force": "true", "v": "true"})
        if status not in (200, 204, 404):
            raise ContainerRuntimeError(f"remove {container_id[:12]}: {_message(raw)}")

    async def list(self, *, pod_uid: str | None = None) -> list[ContainerInfo]:
        labels = [f"{LABEL_NODE}={self.node}"]
        if pod_uid is not None:
            labels.append(f"{LABEL_POD_UID}={pod_uid}")
        status, raw = await self._call("GET", "/containers/json", params={
            "all": "true", "filters": json.dumps({"label": labels})})
        if status != 200:
            raise ContainerRuntimeError(f"list containers: {_message(raw)}")
        out = []
        for summary in json.loads(raw):
            try:
                out.append(await self.inspect(summary["Id"]))
            except ContainerNotFound:
                continue  # removed between list and inspect
        return out

    async def inspect(self, container_id: str) -> ContainerInfo:
        status, raw = await self._call("GET", f"/containers/{container_id}/json")
        if status == 404 or _gone(raw):
            raise ContainerNotFound(f"no container {container_id[:12]}")
        if status != 200:
            raise ContainerRuntimeError(f"inspect {container_id[:12]}: {_message(raw)}")
        d = json.loads(raw)
        st = d.get("State") or {}
        engine_state = str(st.get("Status", "")).lower()
        if engine_state in ("running", "paused", "restarting"):
            state = "running"
        elif engine_state in ("exited", "dead", "stopped", "stopping"):
            state = "exited"
        else:  # created, configured, initialized
            state = "created"
        memory = (d.get("HostConfig") or {}).get("Memory") or None
        nano_cpus = (d.get("HostConfig") or {}).get("NanoCpus") or None
        return ContainerInfo(
            id=d["Id"], labels=dict((d.get("Config") or {}).get("Labels") or {}), state=state,
            image=str((d.get("Config") or {}).get("Image", "")),
            exit_code=int(st.get("ExitCode", 0)) if state == "exited" else None,
            started_at=_time(st.get("StartedAt")), finished_at=_time(st.get("FinishedAt")),
            error=str(st.get("Error") or ""), oom_killed=bool(st.get("OOMKilled")),
            memory_limit=int(memory) if memory else None,
            cpu_limit_millis=int(nano_cpus) // 1_000_000 if nano_cpus else None,
        )

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        status, raw = await self._call("GET", f"/containers/{container_id}/logs", params={
            "stdout": "1", "stderr": "1", "tail": "all" if tail is None else str(tail)})
        if status == 404:
            raise ContainerNotFound(f"no container {container_id[:12]}")
        if status != 200:
            raise ContainerRuntimeError(f"logs {container_id[:12]}: {_message(raw)}")
        return _demux(raw)

    async def exec(self, container_id: str, argv: list[str], *, timeout: float) -> ExecResult:
        status, raw = await self._call("POST", f"/containers/{container_id}/exec", json_body={
            "Cmd": list(argv), "AttachStdout": True, "AttachStderr": True})
        if status == 404:
            raise ContainerNotFound(f"no container {container_id[:12]}")
        if status != 201:
            raise RunContainerError(f"exec in {container_id[:12]}: {_message(raw)}")
        exec_id = json.loads(raw)["Id"]
        status, raw = await self._call("POST", f"/exec/{exec_id}/start",
                                       json_body={"Detach": False, "Tty": False},
                                       timeout=timeout)
        if status != 200:
            # Engines refuse to start a command that does not exist: report it as the
            # shell would, so callers (exec probes) see an ordinary failing exit code.
            return ExecResult(127, _message(raw).encode() + b"\n")
        output = _demux(raw)
        status, info = await self._call("GET", f"/exec/{exec_id}/json")
        code = json.loads(info).get("ExitCode") if status == 200 else None
        return ExecResult(int(code) if code is not None else 126, output)

    async def stats(self, container_id: str) -> Stats:
        status, raw = await self._call("GET", f"/containers/{container_id}/stats",
                                       params={"stream": "false"})
        if status == 404:
            raise ContainerNotFound(f"no container {container_id[:12]}")
        if status != 200:
            raise ContainerRuntimeError(f"stats {container_id[:12]}: {_message(raw)}")
        d = json.loads(raw)
        cpu_ns = ((d.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage", 0)
        memory = (d.get("memory_stats") or {}).get("usage", 0)
        return Stats(cpu_seconds=int(cpu_ns) / 1e9, memory_bytes=int(memory))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport ---------------------------------------------------------------

    async def _call(self, method: str, path: str, *, params: dict[str, str] | None = None,
                    json_body: Any = None, timeout: float | None = None) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                base_url="http://docker")
        t = aiohttp.ClientTimeout(total=timeout or self.request_timeout)
        try:
            async with self._session.request(method, API + path, params=params,
                                             json=json_body, timeout=t) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionRefusedError) as e:
            raise RuntimeUnavailable(f"engine at {self.socket_path}: {e}") from e
        except TimeoutError as e:
            raise RuntimeUnavailable(
                f"engine at {self.socket_path}: {method} {path} timed out") from e


def _gone(raw: bytes) -> bool:
    """Podman answers 500 (not 404) for a container removed while it was being looked
    up ("does not exist in database: no such container")."""
    return b"no such container" in raw.lower()


def _message(raw: bytes) -> str:
    """The engine's error message (``{"message": ...}``), or the raw text."""
    try:
        d = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or "(no message)"
    if isinstance(d, dict):
        return str(d.get("message") or d.get("cause") or d)
    return str(d)


def _demux(raw: bytes) -> bytes:
    """Join the frames of Docker's multiplexed stdout/stderr stream (8-byte headers)."""
    if not raw or raw[0] not in (0, 1, 2) or raw[1:4] != b"\0\0\0":
        return raw  # a TTY stream, not multiplexed
    out = bytearray()
    i = 0
    while i + 8 <= len(raw):
        (size,) = struct.unpack(">I", raw[i + 4:i + 8])
        out += raw[i + 8:i + 8 + size]
        i += 8 + size
    return bytes(out)


def _time(value: Any) -> datetime | None:
    """Parse the engine's RFC 3339 timestamps (nanoseconds, any offset); zero → None."""
    if not value or not isinstance(value, str) or value.startswith("0001-01-01"):
        return None
    s = value.replace("Z", "+00:00")
    head, dot, rest = s.partition(".")
    if dot:
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits):]
        s = f"{head}.{digits[:6]}{tz}"
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


async def detect_socket(candidates: tuple[str, ...] = DEFAULT_SOCKETS) -> str | None:
    """The first engine socket among ``candidates`` that answers ``/_ping``."""
    for path in candidates:
        rt = DockerRuntime(path, node="")
        try:
            if await asyncio.wait_for(rt.ping(), 5):
                return path
        except TimeoutError:
            pass
        finally:
            await rt.close()
    return None
