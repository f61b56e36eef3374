"""This machine as a Kubernetes Node: capacity, allocatable, conditions, addresses.

What the scheduler places Pods by, read from the machine rather than configured:

- ``capacity``: CPU count (``os.sched_getaffinity``: the CPUs this agent may use, which
  is what a container-limited agent really has), memory from ``/proc/meminfo``'s
  ``MemTotal``, and a pod count (Kubernetes' default 110).
- ``allocatable``: capacity minus what the node keeps for itself (system and agent
  reservations, like the kubelet's ``--system-reserved``); defaults 100m CPU, 256Mi.
- conditions: ``Ready`` (the agent runs and its runtime answers), ``MemoryPressure``
  (``MemAvailable`` under the kubelet's default hard eviction threshold, 100Mi) and
  ``DiskPressure`` (free space of the data directory's filesystem under 10%,
  the kubelet's ``nodefs.available<10%``). Each heartbeat refreshes
  ``lastHeartbeatTime``; ``lastTransitionTime`` moves only when a status flips.

Pure functions over injected readings, so tests feed them numbers; :func:`read_machine`
takes the readings from this machine. ``agent.py`` registers and heartbeats the object.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from control.quantity import format_bytes, format_cpu

MEMORY_PRESSURE_BYTES = 100 * 2**20  # kubelet's default memory.available<100Mi
DISK_PRESSURE_FRACTION = 0.10  # kubelet's default nodefs.available<10%
MAX_PODS = 110  # kubelet's default --max-pods


@dataclass(frozen=True)
class MachineReadings:
    cpus: int
    memory_total: int  # bytes
    memory_available: int  # bytes
    disk_total: int  # bytes, of the data directory's filesystem
    disk_free: int
    kernel: str
    arch: str


def read_machine(data_dir: str = "/") -> MachineReadings:
    """Readings from this machine (``/proc/meminfo``, CPU affinity, the data dir's disk)."""
    mem = _meminfo()
    disk = shutil.disk_usage(data_dir)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return MachineReadings(
        cpus=cpus, memory_total=mem.get("MemTotal", 0),
        memory_available=mem.get("MemAvailable", mem.get("MemFree", 0)),
        disk_total=disk.total, disk_free=disk.free,
        kernel=platform.release(), arch=platform.machine())


def _meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    factor = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
                    out[key] = int(parts[0]) * factor
    except OSError:
        pass
    return out


def capacity(m: MachineReadings) -> dict[str, str]:
    return {"cpu": format_cpu(m.cpus * 1000), "memory": format_bytes(m.memory_total),
            "pods": str(MAX_PODS)}


def allocatable(m: MachineReadings, *, reserved_cpu_millis: int = 100,
                reserved_memory: int = 256 * 2**20) -> dict[str, str]:
    """Capacity minus the node's own reservations (never below zero)."""
    cpu = max(0, m.cpus * 1000 - reserved_cpu_millis)
    memory = max(0, m.memory_total - reserved_memory)
    return {"cpu": format_cpu(cpu), "memory": format_bytes(memory), "pods": str(MAX_PODS)}


class NodeConditions:
    """The Node's conditions, remembering when each last changed."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, str]] = {}  # type -> (status, transition time)

    def render(self, m: MachineReadings, *, runtime_ok: bool, runtime_message: str,
               now: datetime) -> list[dict[str, Any]]:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        mem_pressure = m.memory_available < MEMORY_PRESSURE_BYTES
        disk_pressure = m.disk_total > 0 and m.disk_free / m.disk_total < DISK_PRESSURE_FRACTION
        rows = [
            ("Ready", runtime_ok,
             "AgentReady" if runtime_ok else "RuntimeUnavailable",
             "agent is posting ready status" if runtime_ok else runtime_message),
            ("MemoryPressure", mem_pressure,
             "AgentHasInsufficientMemory" if mem_pressure else "AgentHasSufficientMemory",
             f"{format_bytes(m.memory_available)} memory available"),
            ("DiskPressure", disk_pressure,
             "AgentHasDiskPressure" if disk_pressure else "AgentHasNoDiskPressure",
             f"{m.disk_free * 100 // max(1, m.disk_total)}% of the data disk free"),
        ]
        out = []
        for kind, value, reason, message in rows:
            status = "True" if value else "False"
            prev = self._since.get(kind)
            if prev is None or prev[0] != status:
                self._since[kind] = (status, stamp)
            out.append({"type": kind, "status": status, "reason": reason,
                        "message": message, "lastHeartbeatTime": stamp,
                        "lastTransitionTime": self._since[kind][1]})
        return out


def node_object(name: str, *, address: str, labels: dict[str, str], m: MachineReadings,
                conditions: list[dict[str, Any]], runtime_version: str,
                agent_version: str) -> dict[str, Any]:
    """The Node in Kubernetes' shape, as the agent registers and updates it."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(m.arch), **labels}},
        "spec": {},
        "status": {
            "capacity": capacity(m), "allocatable": allocatable(m),
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": address},
                          {"type": "Hostname", "address": socket.gethostname()}],
            "nodeInfo": {"kernelVersion": m.kernel, "operatingSystem": "linux",
                         "architecture": _arch(m.arch),
                         "containerRuntimeVersion": runtime_version,
                         "kubeletVersion": f"mesh-agent/{agent_version}"},
        },
    }


def _arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
