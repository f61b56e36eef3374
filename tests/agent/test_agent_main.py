"""``meshctl agent`` as a real process (``control.agent.main``), static Pods, the
process runtime: Pods from manifest files run, survive an agent restart (adopted, not
duplicated), and stop when their file is removed."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from agent_kit import HTTPD, PROCESS_MARK, container, pod, wait_until

from control.agent.main import main
from control.agent.runtime.process import ProcessRuntime
from support.net import free_port as support_free_port
from support.net import wait_for_url

pytestmark = [pytest.mark.timeout(60), PROCESS_MARK]


def _status(data: Path, timeout: float = 20, **want) -> dict:
    path = data / "status" / "default_web.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = json.loads(path.read_text())["status"]
        except (OSError, ValueError, KeyError):
            st = None
        if st and all(st.get(k) == v for k, v in want.items()) and st.get("portMappings"):
            cs = st["containerStatuses"][0]
            if "running" in cs["state"]:
                return st
        time.sleep(0.05)
    raise TimeoutError(f"no status {want} in {path}")


async def test_agent_process_runs_static_pods_and_adopts_them_after_restart(
        spawn, tmp_path, free_port):
    """The agent process runs a Pod from a manifest file and publishes its status; after
    SIGTERM the Pod keeps serving; a second agent adopts the same container; removing
    the file stops and removes the Pod. The agent API serves the Pod's logs with the
    generated token. (Blocking waits are fine here: nothing else
    runs on this test's loop.)"""
    data, manifests = tmp_path / "data", tmp_path / "manifests"
    api_port = support_free_port()
    manifests.mkdir()
    spec = pod("web", container("app", HTTPD, ports=[{"containerPort": 8080}]), grace=1)
    del spec["metadata"]["uid"]  # static pods get a uid derived from their content
    (manifests / "web.yaml").write_text(yaml.safe_dump(spec))
    argv = ["-m", "control.agent.main", "--runtime", "process", "--node-name", "n-main",
            "--data-dir", str(data), "--pod-manifest-path", str(manifests),
            "--port-range", f"{free_port}-{free_port + 50}", "--sync-interval", "0.2",
            "--listen", f"127.0.0.1:{api_port}"]
    try:
        agent = spawn.python(*argv, name="agent-1")
        st = _status(data, phase="Running")
        url = f"http://127.0.0.1:{st['portMappings'][0]['hostPort']}/index.html"
        wait_for_url(url, timeout=20, proc=agent)
        first_id = st["containerStatuses"][0]["containerID"]
        token = (data / "agent-token").read_text().strip()
        assert (data / "agent-token").stat().st_mode & 0o777 == 0o600
        req = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/containerLogs/default/web/app",
            headers={"Authorization": f"Bearer {token}"})
        assert b"serving on" in await asyncio.to_thread(_read, req)

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
        wait_for_url(url, timeout=5)  # the pod outlives the agent

        agent2 = spawn.python(*argv, name="agent-2")
        (data / "status" / "default_web.json").unlink()
        st2 = _status(data, phase="Running")
        assert st2["containerStatuses"][0]["containerID"] == first_id
        rt = ProcessRuntime(data / "process", node="n-main", cgroups=False)
        assert len(await rt.list()) == 1

        (manifests / "web.yaml").unlink()
        await wait_until(lambda: _empty(rt), what="the pod to stop after its file went")
        agent2.send_signal(signal.SIGTERM)
        assert agent2.wait(20) == 0
    finally:
        rt = ProcessRuntime(data / "process", node="n-main")
        for info in await rt.list():
            await rt.stop(info.id, grace=0)
            await rt.remove(info.id)
        if rt.cgroups is not None:
            rt.cgroups.remove_node()


def test_agent_refuses_missing_pod_source_and_bad_port_range(capsys):
    """Without a pod source, with two, or with malformed options, main() exits 2 and
    says why (before touching the data directory or starting anything)."""
    assert main(["--data-dir", "/nonexistent-never-created"]) == 2
    assert "--pod-manifest-path" in capsys.readouterr().err
    assert main(["--port-range", "9-1", "--pod-manifest-path", "/x"]) == 2
    assert "invalid host port range" in capsys.readouterr().err
    assert main(["--server", "https://127.0.0.1:6443", "--pod-manifest-path", "/x"]) == 2
    assert "choose one pod source" in capsys.readouterr().err
    assert main(["--server", "ftp://nowhere", "--data-dir", "/nonexistent-never"]) == 2
    assert "http:// or https://" in capsys.readouterr().err
    assert main(["--node-label", "novalue", "--pod-manifest-path", "/x"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["--listen", "nowhere", "--pod-manifest-path", "/x"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def _read(req: urllib.request.Request) -> bytes:
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


async def _empty(rt: ProcessRuntime) -> bool:
    return await rt.list() == []


async def test_auto_runtime_prefers_an_answering_engine_else_processes(tmp_path):
    """--runtime auto: no engine at the given sockets → the process runtime (and
    --runtime docker refuses plainly); an answering engine → the docker runtime."""
    from control.agent.main import pick_runtime
    dead = [str(tmp_path / "nothing.sock")]
    rt = await pick_runtime("auto", node=f"n-{tmp_path.name}", data_dir=tmp_path,
                            sockets=dead)
    try:
        assert rt.name == "process"
    finally:
        await rt.close()
        if rt.cgroups is not None:
            rt.cgroups.remove_node()
    with pytest.raises(SystemExit, match="no container engine answers"):
        await pick_runtime("docker", node="n", data_dir=tmp_path, sockets=dead)


@pytest.mark.system(commands=["podman", "runc", "busybox"], root=True)
async def test_auto_runtime_finds_the_podman_service(tmp_path, podman_socket):
    from control.agent.main import pick_runtime
    rt = await pick_runtime("auto", node="n", data_dir=tmp_path,
                            sockets=[str(tmp_path / "nothing.sock"), podman_socket])
    try:
        assert rt.name == "docker"
        assert "podman" in await rt.version()
    finally:
        await rt.close()
