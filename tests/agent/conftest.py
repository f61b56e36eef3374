"""Fixtures for the node agent's tests: a real Podman engine, a local image, runtimes.

- ``podman_socket`` (session): ``podman system service`` serving the Docker-compatible
  API on a private unix socket, started once and stopped at the end of the session.
- ``busybox_image`` (session): ``localhost/mesh-busybox:test-<pid>``, a root filesystem of
  Debian's static busybox with its applet links, imported with ``podman import``
  (no registry is reachable from these machines).
- ``runtime`` (parametrized ``process`` / ``docker``): a runtime for one test, with its
  own node name so tests never see each other's containers; at teardown every
  container it still has is killed and removed.
- ``make_worker``: a :class:`PodWorker` for a Pod dict on that runtime, on a
  :class:`ManualClock` the test advances.
"""

from __future__ import annotations

import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_kit import BUSYBOX, DOCKER_NEEDS, IMAGE, RUNTIMES

from control.agent.clock import ManualClock
from control.agent.pod_worker import PodWorker
from control.agent.ports import HostPorts
from control.agent.restart import BackOff
from control.agent.runtime.docker import DockerRuntime
from control.agent.runtime.process import ProcessRuntime
from control.agent.spec import parse_pod
from support import system
from support.procs import Managed

APPLETS = ("sh", "httpd", "sleep", "cat", "echo", "ls", "rm", "mkdir", "kill", "true",
           "false", "wget", "dd", "head", "test", "touch")



@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The unix socket of a Podman service started for this test session (None where
    the machine lacks podman or root: the docker-runtime tests are skipped there by
    their ``system`` marker before they would use it)."""
    if system.missing(DOCKER_NEEDS, root=True):
        yield None
        return
    d = tmp_path_factory.mktemp("podman")
    sock = d / "podman.sock"
    proc = Managed(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                   log_dir=d, name="podman-service")
    try:
        deadline = time.monotonic() + 30
        while not _pings(sock):
            if proc.poll() is not None:
                raise RuntimeError(f"podman service exited {proc.poll()}:\n{proc.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"podman service did not answer:\n{proc.output()}")
            time.sleep(0.1)
        yield str(sock)
    finally:
        proc.stop(grace=10)


def _pings(sock: Path) -> bool:
    import http.client
    import socket

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(2)
            self.sock.connect(str(sock))

    if not sock.exists():
        return False
    try:
        conn = _Conn("localhost", timeout=2)
        conn.request("GET", "/_ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@pytest.fixture(scope="session")
def busybox_image(podman_socket: str | None, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[str | None]:
    """A tiny local image: static busybox plus applet links, PATH=/bin."""
    if podman_socket is None:
        yield None
        return
    d = tmp_path_factory.mktemp("image")
    tar_path = d / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("bin", "www", "tmp", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755 if name != "tmp" else 0o1777
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    subprocess.run(["podman", "import", "--change", "ENV=PATH=/bin", str(tar_path), IMAGE],
                   check=True, capture_output=True, timeout=120)
    yield IMAGE
    subprocess.run(["podman", "rmi", "--force", IMAGE], capture_output=True, timeout=60)


@pytest.fixture(params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest, tmp_path: Path, podman_socket: str | None,
                  busybox_image: str | None) -> AsyncIterator[DockerRuntime | ProcessRuntime]:
    """A runtime for one test (its own node name), cleaned of all containers afterwards.

    The session fixtures are requested statically (not with getfixturevalue) so the
    Podman service exists before the per-test child-process leak guard looks.
    """
    node = f"test-{uuid.uuid4().hex[:8]}"
    rt: DockerRuntime | ProcessRuntime
    if request.param == "docker":
        assert podman_socket is not None
        assert busybox_image is not None
        rt = DockerRuntime(podman_socket, node=node)
    else:
        rt = ProcessRuntime(tmp_path / "process-runtime", node=node)
    try:
        yield rt
    finally:
        await _sweep(rt)
        await rt.close()
        if isinstance(rt, ProcessRuntime) and rt.cgroups is not None:
            rt.cgroups.remove_node()


async def _sweep(rt: DockerRuntime | ProcessRuntime) -> None:
    for info in await rt.list():
        if info.state == "running":
            await rt.stop(info.id, grace=0)
        await rt.remove(info.id)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def host_ports(free_port: int) -> HostPorts:
    # A small private range near a port the kernel just called free, so parallel test
    # runs and other helpers' servers rarely collide (HostPorts skips busy ones anyway).
    base = max(20000, min(free_port, 60000))
    return HostPorts("127.0.0.1", (base, base + 200))


@pytest.fixture
def make_worker(runtime, clock: ManualClock, host_ports: HostPorts, tmp_path: Path
                ) -> Callable[..., PodWorker]:
    """``make_worker(pod_dict, runtime=None, events=None)`` → a PodWorker on the test's clock."""
    backoff = BackOff(clock)

    def make(pod: dict[str, Any], *, rt=None, events=None) -> PodWorker:
        return PodWorker(parse_pod(pod), runtime=rt or runtime, ports=host_ports,
                         node=(rt or runtime).node, node_ip="127.0.0.1", clock=clock,
                         backoff=backoff, state_dir=tmp_path / "agent", events=events)
    return make
