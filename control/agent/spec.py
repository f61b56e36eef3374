"""The part of a Kubernetes Pod the node agent runs, as typed, frozen objects.

The API server stores Pods as plain dicts in Kubernetes' shape; the agent parses the
fields it supports into these objects once (:func:`parse_pod`), so the runtimes, the
probes and the pod worker never dig through dicts, and a Pod the agent cannot run is
refused with one :class:`PodSpecError` naming the field path (``spec.containers[0].
ports[1].containerPort``) instead of failing half-way through a start.

Supported: containers (name, image, imagePullPolicy, command, args, env with literal
values, workingDir, ports, resources.limits/requests cpu and memory, liveness/
readiness/startup probes with httpGet, tcpSocket and exec, ``lifecycle.postStart`` and
``lifecycle.preStop`` with sleep, exec and httpGet), restartPolicy,
terminationGracePeriodSeconds, volumes (emptyDir, hostPath) with volumeMounts.
Fields outside that list are ignored, as a kubelet ignores fields of newer versions.

Neighbours: ``runtime/`` runs these objects, ``probes.py`` runs the probes,
``pod_worker.py`` ties them together and writes the Pod's status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from control.quantity import bytes_value, cpu_millis

RestartPolicy = Literal["Always", "OnFailure", "Never"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
ProbeKind = Literal["liveness", "readiness", "startup"]

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class PodSpecError(ValueError):
    """A Pod the agent cannot run; ``path`` names the offending field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Port:
    container_port: int
    name: str = ""
    protocol: Literal["TCP", "UDP"] = "TCP"
    host_port: int = 0  # 0: allocate one from the agent's range (see ports.py)


@dataclass(frozen=True)
class Probe:
    """One probe; exactly one of ``http_get``, ``tcp_port``, ``exec_command`` is set."""

    http_get: tuple[str, int | str] | None = None  # (path, port number or port name)
    http_scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    tcp_port: int | str | None = None
    exec_command: tuple[str, ...] | None = None
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Hook:
    """A container's ``lifecycle.postStart`` or ``lifecycle.preStop`` hook: exactly one
    of ``sleep_seconds`` (Kubernetes' ``sleep`` action, run by the agent) and ``action``
    (``exec`` or ``httpGet``, run like a probe whose timeout is the hook's budget: what
    is left of the grace period for preStop, ``POST_START_TIMEOUT`` for postStart)."""

    sleep_seconds: float | None = None
    action: Probe | None = None


@dataclass(frozen=True)
class Mount:
    volume: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class Volume:
    name: str
    kind: Literal["emptyDir", "hostPath"]
    host_path: str = ""  # hostPath only


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    pull_policy: PullPolicy = "IfNotPresent"
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str = ""
    ports: tuple[Port, ...] = ()
    cpu_limit_millis: int | None = None
    memory_limit_bytes: int | None = None
    cpu_request_millis: int | None = None
    memory_request_bytes: int | None = None
    liveness: Probe | None = None
    readiness: Probe | None = None
    startup: Probe | None = None
    mounts: tuple[Mount, ...] = ()
    post_start: Hook | None = None
    pre_stop: Hook | None = None

    def probe(self, kind: ProbeKind) -> Probe | None:
        return {"liveness": self.liveness, "readiness": self.readiness,
                "startup": self.startup}[kind]

    def port_number(self, ref: int | str) -> int:
        """Resolve a probe's port (a number or a named container port)."""
        if isinstance(ref, int):
            return ref
        for p in self.ports:
            if p.name == ref:
                return p.container_port
        raise PodSpecError(f"container {self.name}", f"no port named {ref!r}")


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    containers: tuple[Container, ...]
    restart_policy: RestartPolicy = "Always"
    termination_grace_period: float = 30.0
    volumes: tuple[Volume, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def container(self, name: str) -> Container:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(name)


def parse_pod(obj: dict[str, Any]) -> Pod:
    """Validate a Pod dict and return the agent's view of it, or raise PodSpecError."""
    meta = _dict(obj.get("metadata"), "metadata")
    spec = _dict(obj.get("spec"), "spec")
    name = _str(meta.get("name"), "metadata.name")
    uid = _str(meta.get("uid"), "metadata.uid")
    raw_containers = spec.get("containers")
    if not isinstance(raw_containers, list) or not raw_containers:
        raise PodSpecError("spec.containers", "must be a non-empty list")
    volumes = tuple(_volume(v, f"spec.volumes[{i}]")
                    for i, v in enumerate(_list(spec.get("volumes"), "spec.volumes")))
    volume_names = {v.name for v in volumes}
    containers = tuple(_container(c, f"spec.containers[{i}]", volume_names)
                       for i, c in enumerate(raw_containers))
    seen: set[str] = set()
    for i, c in enumerate(containers):
        if c.name in seen:
            raise PodSpecError(f"spec.containers[{i}].name", f"duplicate name {c.name!r}")
        seen.add(c.name)
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        raise PodSpecError("spec.restartPolicy",
                           f"{policy!r} is not one of Always, OnFailure, Never")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
        raise PodSpecError("spec.terminationGracePeriodSeconds",
                           f"must be a non-negative number, got {grace!r}")
    return Pod(
        namespace=str(meta.get("namespace") or "default"), name=name, uid=uid,
        containers=containers, restart_policy=policy, termination_grace_period=float(grace),
        volumes=volumes, labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )


def _container(raw: Any, path: str, volume_names: set[str]) -> Container:
    d = _dict(raw, path)
    name = _str(d.get("name"), f"{path}.name")
    if not _NAME.match(name):
        raise PodSpecError(f"{path}.name", f"{name!r} is not a DNS-1123 label")
    image = _str(d.get("image"), f"{path}.image")
    pull = d.get("imagePullPolicy") or ("Always" if image.endswith(":latest") else "IfNotPresent")
    if pull not in ("Always", "IfNotPresent", "Never"):
        raise PodSpecError(f"{path}.imagePullPolicy",
                           f"{pull!r} is not one of Always, IfNotPresent, Never")
    env: list[tuple[str, str]] = []
    for i, e in enumerate(_list(d.get("env"), f"{path}.env")):
        ep = f"{path}.env[{i}]"
        e = _dict(e, ep)
        ename = _str(e.get("name"), f"{ep}.name")
        if not _ENV_NAME.match(ename):
            raise PodSpecError(f"{ep}.name", f"{ename!r} is not a valid variable name")
        if "valueFrom" in e:
            raise PodSpecError(f"{ep}.valueFrom", "not supported by this agent")
        env.append((ename, str(e.get("value", ""))))
    ports = tuple(_port(p, f"{path}.ports[{i}]")
                  for i, p in enumerate(_list(d.get("ports"), f"{path}.ports")))
    resources = _dict(d.get("resources") or {}, f"{path}.resources")
    limits = _dict(resources.get("limits") or {}, f"{path}.resources.limits")
    requests = _dict(resources.get("requests") or {}, f"{path}.resources.requests")
    lifecycle = _dict(d.get("lifecycle") or {}, f"{path}.lifecycle")
    mounts = []
    for i, m in enumerate(_list(d.get("volumeMounts"), f"{path}.volumeMounts")):
        mp = f"{path}.volumeMounts[{i}]"
        m = _dict(m, mp)
        vname = _str(m.get("name"), f"{mp}.name")
        if vname not in volume_names:
            raise PodSpecError(f"{mp}.name", f"no volume named {vname!r} in spec.volumes")
        mpath = _str(m.get("mountPath"), f"{mp}.mountPath")
        if not mpath.startswith("/"):
            raise PodSpecError(f"{mp}.mountPath", f"{mpath!r} is not an absolute path")
        mounts.append(Mount(vname, mpath, bool(m.get("readOnly", False))))
    container = Container(
        name=name, image=image, pull_policy=pull,
        command=_strings(d.get("command"), f"{path}.command"),
        args=_strings(d.get("args"), f"{path}.args"),
        env=tuple(env), working_dir=str(d.get("workingDir") or ""), ports=ports,
        cpu_limit_millis=_quantity(limits.get("cpu"), f"{path}.resources.limits.cpu", cpu_millis),
        memory_limit_bytes=_quantity(limits.get("memory"), f"{path}.resources.limits.memory",
                                     bytes_value),
        cpu_request_millis=_quantity(requests.get("cpu"), f"{path}.resources.requests.cpu",
                                     cpu_millis),
        memory_request_bytes=_quantity(requests.get("memory"),
                                       f"{path}.resources.requests.memory", bytes_value),
        liveness=_probe(d.get("livenessProbe"), f"{path}.livenessProbe"),
        readiness=_probe(d.get("readinessProbe"), f"{path}.readinessProbe"),
        startup=_probe(d.get("startupProbe"), f"{path}.startupProbe"),
        mounts=tuple(mounts),
        post_start=_hook(lifecycle.get("postStart"), f"{path}.lifecycle.postStart"),
        pre_stop=_hook(lifecycle.get("preStop"), f"{path}.lifecycle.preStop"),
    )
    for kind in ("liveness", "readiness", "startup"):
        probe = container.probe(kind)
        ref = probe and (probe.http_get[1] if probe.http_get else probe.tcp_port)
        if isinstance(ref, str):
            try:
                container.port_number(ref)
            except PodSpecError:
                raise PodSpecError(f"{path}.{kind}Probe",
                                   f"no container port named {ref!r}") from None
    return container


def _port(raw: Any, path: str) -> Port:
    d = _dict(raw, path)
    cport = d.get("containerPort")
    if not _is_port(cport):
        raise PodSpecError(f"{path}.containerPort", f"must be 1-65535, got {cport!r}")
    hport = d.get("hostPort", 0)
    if hport != 0 and not _is_port(hport):
        raise PodSpecError(f"{path}.hostPort", f"must be 0-65535, got {hport!r}")
    proto = d.get("protocol", "TCP")
    if proto not in ("TCP", "UDP"):
        raise PodSpecError(f"{path}.protocol", f"{proto!r} is not TCP or UDP")
    return Port(container_port=cport, name=str(d.get("name") or ""), protocol=proto,
                host_port=hport)


def _probe(raw: Any, path: str) -> Probe | None:
    if raw is None:
        return None
    d = _dict(raw, path)
    actions = [k for k in ("httpGet", "tcpSocket", "exec") if k in d]
    if len(actions) != 1:
        raise PodSpecError(path, "needs exactly one of httpGet, tcpSocket, exec")
    kw: dict[str, Any] = {}
    for key, attr, default, minimum in (
        ("initialDelaySeconds", "initial_delay", 0, 0),
        ("periodSeconds", "period", 10, 1),
        ("timeoutSeconds", "timeout", 1, 1),
        ("successThreshold", "success_threshold", 1, 1),
        ("failureThreshold", "failure_threshold", 3, 1),
    ):
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
            raise PodSpecError(f"{path}.{key}", f"must be a number >= {minimum}, got {v!r}")
        kw[attr] = int(v) if attr.endswith("threshold") else float(v)
    if "httpGet" in d:
        h = _dict(d["httpGet"], f"{path}.httpGet")
        port = _port_ref(h.get("port"), f"{path}.httpGet.port")
        scheme = h.get("scheme", "HTTP")
        if scheme not in ("HTTP", "HTTPS"):
            raise PodSpecError(f"{path}.httpGet.scheme", f"{scheme!r} is not HTTP or HTTPS")
        return Probe(http_get=(str(h.get("path") or "/"), port), http_scheme=scheme, **kw)
    if "tcpSocket" in d:
        t = _dict(d["tcpSocket"], f"{path}.tcpSocket")
        return Probe(tcp_port=_port_ref(t.get("port"), f"{path}.tcpSocket.port"), **kw)
    e = _dict(d["exec"], f"{path}.exec")
    cmd = _strings(e.get("command"), f"{path}.exec.command")
    if not cmd:
        raise PodSpecError(f"{path}.exec.command", "must be a non-empty list of strings")
    return Probe(exec_command=cmd, **kw)


def _hook(raw: Any, path: str) -> Hook | None:
    if raw is None:
        return None
    d = _dict(raw, path)
    actions = [k for k in ("sleep", "exec", "httpGet", "tcpSocket") if k in d]
    if len(actions) != 1:
        raise PodSpecError(path, "needs exactly one of sleep, exec, httpGet")
    if "sleep" in d:
        seconds = _dict(d["sleep"], f"{path}.sleep").get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
            raise PodSpecError(f"{path}.sleep.seconds",
                               f"must be a non-negative integer, got {seconds!r}")
        return Hook(sleep_seconds=float(seconds))
    if "tcpSocket" in d:
        raise PodSpecError(f"{path}.tcpSocket", "not supported as a lifecycle hook (it is "
                                                "deprecated in Kubernetes); use sleep, exec "
                                                "or httpGet")
    probe = _probe({actions[0]: d[actions[0]]}, path)
    return Hook(action=probe)


def _volume(raw: Any, path: str) -> Volume:
    d = _dict(raw, path)
    name = _str(d.get("name"), f"{path}.name")
    if "emptyDir" in d:
        return Volume(name, "emptyDir")
    if "hostPath" in d:
        hp = _dict(d["hostPath"], f"{path}.hostPath")
        p = _str(hp.get("path"), f"{path}.hostPath.path")
        if not p.startswith("/"):
            raise PodSpecError(f"{path}.hostPath.path", f"{p!r} is not an absolute path")
        return Volume(name, "hostPath", host_path=p)
    raise PodSpecError(path, "only emptyDir and hostPath volumes are supported")


def _port_ref(v: Any, path: str) -> int | str:
    if _is_port(v):
        return v
    if isinstance(v, str) and v:
        return int(v) if v.isdigit() else v
    raise PodSpecError(path, f"must be a port number or a port name, got {v!r}")


def _is_port(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def _quantity(v: Any, path: str, conv) -> int | None:
    if v is None:
        return None
    try:
        return conv(v)
    except ValueError as e:
        raise PodSpecError(path, str(e)) from None


def _dict(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise PodSpecError(path, f"must be an object, got {type(v).__name__}")
    return v


def _list(v: Any, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise PodSpecError(path, f"must be a list, got {type(v).__name__}")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise PodSpecError(path, "must be a non-empty string")
    return v


def _strings(v: Any, path: str) -> tuple[str, ...]:
    items = _list(v, path)
    if not all(isinstance(s, str) for s in items):
        raise PodSpecError(path, "must be a list of strings")
    return tuple(items)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args; ``$$`` escapes, unknown stays."""
    return re.sub(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  value)
