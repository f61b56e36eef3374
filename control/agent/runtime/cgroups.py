"""CPU and memory limits for process-runtime containers, through Linux cgroups.

One cgroup per container under ``<hierarchy>/mesh-agent/<node>/<container id>``. Both
layouts are handled because both exist on the machines this runs on:

- **v2** (unified): one directory; ``memory.max``, ``cpu.max``; usage from
  ``memory.current`` and ``cpu.stat``'s ``usage_usec``. Controllers must be enabled in
  the parents' ``cgroup.subtree_control``.
- **v1** (per-controller mounts, e.g. a hybrid host whose memory controller is not
  in the unified tree): ``memory/.../memory.limit_in_bytes``, ``cpu/.../
  cpu.cfs_quota_us``; usage from ``memory.usage_in_bytes`` and ``cpuacct.usage``.

:func:`detect` returns ``None`` with the reason when neither is writable (not root, a
read-only ``/sys/fs/cgroup``): the process runtime then runs without limits and logs
that reason once, as a warning, rather than pretending the limits hold.

The shim moves the command into the cgroup (its pid into each ``cgroup.procs``) between
fork and exec, so the command and all its children are inside from the start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

CFS_PERIOD_US = 100_000  # the kernel's default CFS period


class Cgroups:
    """Creates, reads and removes the per-container cgroups of one node agent."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self._dirs = dirs  # controller ("memory", "cpu", "cpuacct" or "unified") -> parent

    def create(self, name: str, *, memory_bytes: int | None, cpu_millis: int | None
               ) -> list[str]:
        """Make the container's cgroup(s) with these limits; return the procs files."""
        procs = []
        for ctl, parent in self._dirs.items():
            d = parent / name
            d.mkdir(exist_ok=True)
            procs.append(str(d / "cgroup.procs"))
            if self.version == 2:
                if memory_bytes is not None:
                    (d / "memory.max").write_text(str(memory_bytes))
                if cpu_millis is not None:
                    (d / "cpu.max").write_text(f"{cpu_millis * CFS_PERIOD_US // 1000} "
                                               f"{CFS_PERIOD_US}")
            elif ctl == "memory" and memory_bytes is not None:
                (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
            elif ctl == "cpu" and cpu_millis is not None:
                (d / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (d / "cpu.cfs_quota_us").write_text(str(cpu_millis * CFS_PERIOD_US // 1000))
        return sorted(set(procs))

    def memory_limit(self, name: str) -> int | None:
        """The memory limit in force (bytes), None when unlimited or unknown."""
        f = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        raw = _read(self._dir("memory", name) / f)
        if raw is None or raw == "max":
            return None
        value = int(raw)
        return None if value >= 2**62 else value  # v1 "unlimited" is a huge number

    def oom_kills(self, name: str) -> int:
        """How many processes the kernel OOM-killed in the cgroup (0 when unknown)."""
        f = "memory.events" if self.version == 2 else "memory.oom_control"
        raw = _read(self._dir("memory", name) / f) or ""
        for line in raw.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def cpu_limit_millis(self, name: str) -> int | None:
        """The CPU quota in force, in millicores; None when unlimited or unknown."""
        if self.version == 2:
            raw = _read(self._dir("cpu", name) / "cpu.max")
            if raw is None or raw.startswith("max"):
                return None
            quota, _, period = raw.partition(" ")
        else:
            d = self._dir("cpu", name)
            quota, period = _read(d / "cpu.cfs_quota_us") or "-1", \
                _read(d / "cpu.cfs_period_us") or "0"
        if int(quota) <= 0 or int(period) <= 0:
            return None
        return int(quota) * 1000 // int(period)

    def usage(self, name: str) -> tuple[float, int] | None:
        """(CPU seconds, memory bytes) used by the cgroup, None when it is gone."""
        if self.version == 2:
            d = self._dir("memory", name)
            mem, stat = _read(d / "memory.current"), _read(d / "cpu.stat")
            if mem is None or stat is None:
                return None
            usec = next((int(line.split()[1]) for line in stat.splitlines()
                         if line.startswith("usage_usec ")), 0)
            return usec / 1e6, int(mem)
        mem = _read(self._dir("memory", name) / "memory.usage_in_bytes")
        cpu = _read(self._dir("cpuacct", name) / "cpuacct.usage")
        if mem is None:
            return None
        return (int(cpu) / 1e9 if cpu else 0.0), int(mem)

    def pids(self, name: str) -> set[int]:
        """The processes in the container's cgroups (all of them are the container's)."""
        out: set[int] = set()
        for parent in self._dirs.values():
            raw = _read(parent / name / "cgroup.procs") or ""
            out.update(int(x) for x in raw.split() if x.isdigit())
        return out

    def remove(self, name: str) -> None:
        """Remove the container's cgroups, first killing whatever still runs in them (a
        command whose shim was killed from outside outlives it)."""
        for _ in range(50):
            left = self.pids(name)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)  # the kernel takes a moment to empty the cgroup
        for parent in self._dirs.values():
            with contextlib.suppress(FileNotFoundError):
                (parent / name).rmdir()

    def remove_node(self) -> None:
        """Remove the node's parent cgroups once no container cgroup is left in them
        (a node taken out of service; tests). ``mesh-agent/`` goes too when empty."""
        for parent in self._dirs.values():
            for d in (parent, parent.parent):
                try:
                    d.rmdir()
                except OSError:  # not empty (containers of this or another node) or gone
                    break

    def _dir(self, ctl: str, name: str) -> Path:
        parent = self._dirs.get(ctl) or self._dirs.get("unified") or next(iter(self._dirs.values()))
        return parent / name


def detect(node: str, *, root: str = "/sys/fs/cgroup") -> tuple[Cgroups | None, str]:
    """The cgroups this machine lets us manage, or ``(None, why not)``."""
    base = Path(root)
    rel = Path("mesh-agent") / _safe(node)
    controllers = _read(base / "cgroup.controllers")
    try:
        if controllers is not None and "memory" in controllers.split():
            parent = base / rel
            parent.mkdir(parents=True, exist_ok=True)
            # Enable memory and cpu for children along the path (the root may refuse
            # when processes live in it; then the limits are not enforceable here).
            for d in (base, base / "mesh-agent", parent):
                (d / "cgroup.subtree_control").write_text("+memory +cpu")
            return Cgroups(2, {"unified": parent}), "cgroup v2"
        dirs: dict[str, Path] = {}
        for ctl, mounts in (("memory", ("memory",)), ("cpu", ("cpu", "cpu,cpuacct")),
                            ("cpuacct", ("cpuacct", "cpu,cpuacct"))):
            for m in mounts:
                if (base / m / "cgroup.procs").exists():
                    dirs[ctl] = base / m / rel
                    break
        if "memory" not in dirs:
            return None, f"no memory controller under {root} (neither cgroup v2 nor v1)"
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        return Cgroups(1, dirs), "cgroup v1"
    except OSError as e:
        return None, f"cannot manage cgroups under {root}: {e}"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "node"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, ProcessLookupError, OSError):
        return None
