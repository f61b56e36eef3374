"""The ``process`` runtime: each container is a local process group, no engine needed.

The default when no container engine answers, so the all-in-one runs on any laptop.
What a container becomes here:

- a directory ``<root>/containers/<id>/`` with ``meta.json`` (labels, argv, env,
  working directory: what ``docker inspect`` would say), ``log`` (stdout and stderr),
  ``pid`` (the shim's pid and its kernel start time, so a recycled pid is never
  mistaken for ours) and ``exit`` (written by the shim when the command ends);
- a shim process (``shim.py``, like conmon) leading a new session; the command runs in
  the shim's process group. SIGTERM goes to the command (an engine signals PID 1),
  SIGKILL after the grace period to the whole group;
- limits in a cgroup (``cgroups.py``) when the machine lets us manage cgroups; when it
  does not, the container runs unlimited and the runtime logs a warning saying why.

Everything the runtime knows is in those files, so a new ``ProcessRuntime`` over the
same root (an agent restart) lists and adopts the running containers, and learns the
exit code of one that ended while no agent was watching.

Differences from an engine, by necessity: there is no image (``image`` is recorded,
never pulled), no network namespace (the command listens on its host port itself;
``$(PORT)``/``PORT_<NAME>`` tell it which, see ``base.ContainerConfig.env``), and no
mount namespace (a Pod with ``volumeMounts`` is refused with CreateContainerError).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from control.agent.runtime import cgroups as cg
from control.agent.runtime.base import (
    LABEL_NODE,
    LABEL_POD_UID,
    ContainerConfig,
    ContainerInfo,
    ContainerNotFound,
    CreateContainerError,
    ExecResult,
    RunContainerError,
    Stats,
)
from control.agent.spec import PullPolicy

log = logging.getLogger(__name__)

SHIM = Path(__file__).with_name("shim.py")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_POLL = 0.05  # seconds between checks while waiting for a process to exit

# Shims this OS process started, by pid: children belong to the process, not to one
# runtime object, so a runtime reopened in the same process (tests, a reloaded agent)
# still reaps them through their Popen handle.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ProcessRuntime:
    """Runs containers as shim-supervised process groups under ``root``."""

    name = "process"

    def __init__(self, root: str | os.PathLike[str], *, node: str,
                 cgroups: cg.Cgroups | bool | None = True,
                 path_prefix: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self.node = node
        # Commands resolve on a fixed PATH (not the agent's own environment, so a Pod
        # runs the same whoever started the agent); a node may put directories first,
        # e.g. the virtual environment whose ``python`` the demo's Pods run.
        self.path = os.pathsep.join([*(str(d) for d in path_prefix), BASE_PATH])
        (self.root / "containers").mkdir(parents=True, exist_ok=True)
        if cgroups is True:
            found, why = cg.detect(node)
            if found is None:
                log.warning("process runtime: CPU/memory limits will NOT be enforced: %s", why)
            self.cgroups = found
            self.cgroups_note = why
        else:
            self.cgroups = cgroups or None
            self.cgroups_note = "disabled by the caller" if not cgroups else "given"

    async def version(self) -> str:
        limits = f"cgroup v{self.cgroups.version}" if self.cgroups else "no limits"
        return f"process runtime (python {sys.version.split()[0]}, {limits})"

    async def ensure_image(self, image: str, *, policy: PullPolicy) -> None:
        # No images here: the command runs from the host's filesystem.
        return None

    async def create(self, config: ContainerConfig) -> str:
        c = config.container
        if c.mounts:
            raise CreateContainerError(
                f"container {c.name}: volumeMounts need a container engine; the process "
                "runtime has no mount namespace")
        env = config.env(ports_as="host")
        command, args = config.argv(env)
        argv = list(command) + list(args)
        if not argv:
            raise CreateContainerError(
                f"container {c.name}: no command or args (the process runtime has no image "
                "entrypoint to fall back on)")
        cid = uuid.uuid4().hex
        d = self._dir(cid)
        d.mkdir()
        workdir = Path(c.working_dir) if c.working_dir else d / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        full_env = {"PATH": self.path, "HOME": str(workdir), "HOSTNAME": config.pod.name}
        full_env.update(env)
        meta = {
            "id": cid, "name": config.name(), "image": c.image, "labels": config.labels(),
            "argv": argv, "env": full_env, "cwd": str(workdir),
            "memory_limit": c.memory_limit_bytes, "cpu_limit_millis": c.cpu_limit_millis,
            "created": _iso(datetime.now(UTC)),
        }
        _write_json(d / "meta.json", meta)
        return cid

    async def start(self, container_id: str) -> None:
        d = self._dir(container_id)
        meta = self._meta(container_id)
        if (d / "pid").exists():
            raise RunContainerError(f"container {container_id[:12]} was already started")
        argv, env, cwd = meta["argv"], meta["env"], meta["cwd"]
        if not await asyncio.to_thread(_executable, argv[0], cwd=cwd, path=env["PATH"]):
            raise RunContainerError(f'exec: "{argv[0]}": executable file not found in $PATH')
        cg_args: list[str] = []
        limited = meta["memory_limit"] is not None or meta["cpu_limit_millis"] is not None
        if self.cgroups is not None and limited:
            try:
                for f in self.cgroups.create(container_id, memory_bytes=meta["memory_limit"],
                                             cpu_millis=meta["cpu_limit_millis"]):
                    cg_args += ["--cgroup", f]
            except OSError as e:
                raise RunContainerError(f"cannot apply resource limits: {e}") from e
        elif limited:
            log.warning("container %s: limits not enforced: %s", meta["name"],
                        self.cgroups_note)
        argv = [sys.executable, "-I", "-S", str(SHIM), str(d / "exit"), *cg_args, "--", *argv]
        # Spawn and record the pid in one step on a thread: even if this coroutine is
        # cancelled meanwhile, the process never runs without its pid file.
        proc = await asyncio.to_thread(_spawn, argv, d, cwd=cwd, env=env)
        _CHILDREN[proc.pid] = proc

    async def stop(self, container_id: str, *, grace: float) -> None:
        d = self._dir(container_id)
        pid = self._live_pid(container_id)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the shim forwards it to the command
        deadline = time.monotonic() + grace
        # Poll: an adopted shim is not our child, so there is no waitpid to await.
        while time.monotonic() < deadline and self._live_pid(container_id) is not None:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        killed = self._live_pid(container_id) is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # also sweeps grandchildren left in the group
        while self._live_pid(container_id) is not None:  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        if killed or not (d / "exit").exists():
            _write_exit(d / "exit", 137, f"killed (SIGKILL) after a {grace:g}s grace period")

    async def remove(self, container_id: str) -> None:
        d = self._dir(container_id)
        if not d.exists():
            return
        if self._live_pid(container_id) is not None:
            await self.stop(container_id, grace=0)
        # A shim killed from outside leaves its command running, orphaned, in the
        # container's process group (and cgroup): sweep the survivors, or they would
        # keep the port and the memory of a container that no longer exists.
        pidinfo = _read_json(d / "pid")
        if pidinfo is not None:
            hostname = (self._meta(container_id).get("env") or {}).get("HOSTNAME", "")
            for pid in _group_members(pidinfo["pid"], hostname):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove, container_id)
        shutil.rmtree(d, ignore_errors=True)

    async def list(self, *, pod_uid: str | None = None) -> list[ContainerInfo]:
        out = []
        for d in sorted((self.root / "containers").iterdir()):
            try:
                info = await self.inspect(d.name)
            except ContainerNotFound:
                continue  # removed while we looked
            if info.labels.get(LABEL_NODE) != self.node:
                continue
            if pod_uid is None or info.labels.get(LABEL_POD_UID) == pod_uid:
                out.append(info)
        return out

    async def inspect(self, container_id: str) -> ContainerInfo:
        d = self._dir(container_id)
        meta = self._meta(container_id)
        pidinfo = _read_json(d / "pid")
        cgroups = self.cgroups if pidinfo is not None else None
        limit = (cgroups.memory_limit(container_id)
                 if cgroups is not None and meta["memory_limit"] is not None else None)
        cpu = (cgroups.cpu_limit_millis(container_id)
               if cgroups is not None and meta["cpu_limit_millis"] is not None else None)
        common = {"id": container_id, "labels": meta["labels"], "image": meta["image"],
                  "memory_limit": limit, "cpu_limit_millis": cpu}
        if pidinfo is None:
            return ContainerInfo(state="created", **common)
        started = datetime.fromisoformat(pidinfo["started"])
        if self._live_pid(container_id) is not None:
            return ContainerInfo(state="running", started_at=started, **common)
        code, message, finished = _read_exit(d / "exit")
        if code is None:
            # Gone without a word: killed from outside with SIGKILL (as an engine
            # reports a container whose init was killed: 137).
            code, message = 137, "process group ended without recording an exit status"
        oom = cgroups is not None and cgroups.oom_kills(container_id) > 0
        return ContainerInfo(state="exited", started_at=started, exit_code=code,
                             finished_at=finished, error=message, oom_killed=oom, **common)

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        self._meta(container_id)
        try:
            data = (self._dir(container_id) / "log").read_bytes()
        except FileNotFoundError:
            return b""
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        return data

    async def exec(self, container_id: str, argv: list[str], *, timeout: float) -> ExecResult:
        meta = self._meta(container_id)
        if self._live_pid(container_id) is None:
            raise RunContainerError(f"container {container_id[:12]} is not running")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=meta["cwd"], env=meta["env"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            return ExecResult(127, f'exec: "{argv[0]}": executable file not found\n'.encode())
        except PermissionError:
            return ExecResult(126, f'exec: "{argv[0]}": permission denied\n'.encode())
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        return ExecResult(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode,
                          out)

    async def stats(self, container_id: str) -> Stats:
        self._meta(container_id)
        pid = self._live_pid(container_id)
        if pid is None:
            raise RunContainerError(f"container {container_id[:12]} is not running")
        if self.cgroups is not None:
            usage = self.cgroups.usage(container_id)
            if usage is not None:
                return Stats(cpu_seconds=usage[0], memory_bytes=usage[1])
        return _group_usage(pid)

    async def close(self) -> None:
        # Nothing to release: containers keep running (a new runtime adopts them) and
        # their Popen handles stay in the process-wide table for reaping.
        return None

    # -- internals ---------------------------------------------------------------

    def _dir(self, container_id: str) -> Path:
        if not container_id or "/" in container_id or container_id.startswith("."):
            raise ContainerNotFound(f"invalid container id {container_id!r}")
        return self.root / "containers" / container_id

    def _meta(self, container_id: str) -> dict:
        meta = _read_json(self._dir(container_id) / "meta.json")
        if meta is None:
            raise ContainerNotFound(f"no container {container_id!r}")
        return meta

    def _live_pid(self, container_id: str) -> int | None:
        """The shim's pid while it is alive (and really ours), else None."""
        info = _read_json(self._dir(container_id) / "pid")
        if info is None:
            return None
        pid = info["pid"]
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            del _CHILDREN[pid]
            return None
        stat = _stat(pid)
        if stat is None or stat[1] != info["starttime"]:
            return None
        if stat[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our zombie (an adopted child): reap it
            return None
        return pid


def _executable(exe: str, *, cwd: str, path: str) -> bool:
    found = os.path.join(cwd, exe) if "/" in exe else shutil.which(exe, path=path)
    return bool(found) and os.path.isfile(found) and os.access(found, os.X_OK)


def _spawn(argv: list[str], d: Path, *, cwd: str, env: dict[str, str]
           ) -> subprocess.Popen[bytes]:
    """Start the shim as the leader of a new session, its output appended to ``d/log``,
    and write ``d/pid`` (pid, kernel start time, wall-clock start)."""
    with open(d / "log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                start_new_session=True)
    _write_json(d / "pid", {"pid": proc.pid, "starttime": _starttime(proc.pid),
                            "started": _iso(datetime.now(UTC))})
    return proc


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid`` from /proc, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = raw[raw.rfind(b")") + 2:].split()
    return rest[0].decode(), int(rest[19])


def _starttime(pid: int) -> int:
    st = _stat(pid)
    return st[1] if st else -1


def _group_members(pgid: int, hostname: str) -> list[int]:
    """Processes still in process group ``pgid`` that carry this container's
    ``HOSTNAME``. While any member lives, no new process can get ``pgid`` as its pid,
    so members found are the container's; the environment check guards the moment the
    group has emptied and the number is reused."""
    marker = f"HOSTNAME={hostname}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes()
            rest = raw[raw.rfind(b")") + 2:].split()
            if int(rest[2]) != pgid or rest[0] == b"Z":
                continue
            if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _group_usage(pgid: int) -> Stats:
    """CPU and RSS summed over the process group (when there is no cgroup to ask)."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    cpu = 0.0
    rss = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        rest = raw[raw.rfind(b")") + 2:].split()
        if int(rest[2]) != pgid:
            continue
        cpu += (int(rest[11]) + int(rest[12])) / ticks
        rss += int(rest[21]) * page
    return Stats(cpu_seconds=cpu, memory_bytes=rss)


def _read_exit(path: Path) -> tuple[int | None, str, datetime | None]:
    try:
        text = path.read_text()
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None, "", None
    first, _, rest = text.partition("\n")
    try:
        return int(first), rest.strip(), mtime
    except ValueError:
        return None, "", None


def _write_exit(path: Path, code: int, message: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{code}\n{message}\n")
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _iso(t: datetime) -> str:
    return t.isoformat()
