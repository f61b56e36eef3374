"""The process runtime resolves Pod commands on its fixed PATH, with the node's own
directories first (``--process-path``): how the demo's Pods find this installation's
``python`` without depending on the environment of whoever started the agent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_kit import pod, wait_until

from control.agent.runtime.process import ProcessRuntime

pytestmark = pytest.mark.system(commands=["busybox"])


async def test_command_found_only_in_the_node_path_prefix_runs(make_worker, tmp_path: Path):
    tools = tmp_path / "tools"
    tools.mkdir()
    marker = tmp_path / "ran"
    script = tools / "only-here-cmd"
    script.write_text(f"#!/bin/sh\necho \"$PATH\" > {marker}\nexec sleep 30\n")
    script.chmod(0o755)
    rt = ProcessRuntime(tmp_path / "rt", node="path-test", cgroups=False,
                        path_prefix=[str(tools)])
    try:
        w = make_worker(pod("pathy", {"name": "app", "image": "none",
                                      "command": ["only-here-cmd"]}), rt=rt)
        await w.sync()
        await wait_until(marker.exists)
        assert marker.read_text().split(os.pathsep)[0] == str(tools)
    finally:
        for info in await rt.list():
            await rt.stop(info.id, grace=1)
            await rt.remove(info.id)
        await rt.close()


async def test_without_the_prefix_the_same_command_is_not_found(make_worker, tmp_path: Path):
    rt = ProcessRuntime(tmp_path / "rt", node="path-test-2", cgroups=False)
    try:
        w = make_worker(pod("pathless", {"name": "app", "image": "none",
                                         "command": ["only-here-cmd"]}), rt=rt)
        status = await w.sync()
        waiting = [cs["state"]["waiting"] for cs in status["containerStatuses"]
                   if "waiting" in cs["state"]]
        assert waiting
        assert waiting[0]["reason"] == "RunContainerError"
    finally:
        await rt.close()


async def test_removing_a_container_whose_shim_was_killed_kills_its_command(
        make_worker, tmp_path: Path):
    """SIGKILL to the shim (not the command) leaves the command orphaned in the
    container's process group; removing the container sweeps it, so no process, port
    or cgroup of a removed container survives."""
    import json
    import signal

    marker = tmp_path / "cmd.pid"
    rt = ProcessRuntime(tmp_path / "rt", node="shim-kill")
    try:
        script = f"echo $$$$ > {marker}; exec sleep 300"  # $$ is an escaped $ in a spec
        w = make_worker(pod("orphan", {"name": "app", "image": "none",
                                       "command": ["busybox", "sh", "-c", script]}), rt=rt)
        await w.sync()
        await wait_until(lambda: marker.exists() and marker.read_text().strip())
        command_pid = int(marker.read_text())
        (info,) = await rt.list()
        shim = json.loads((tmp_path / "rt" / "containers" / info.id / "pid").read_text())["pid"]
        assert shim != command_pid
        os.kill(shim, signal.SIGKILL)
        await wait_until(lambda: _gone(shim))
        assert not _gone(command_pid), "the command should outlive its shim until removal"
        assert (await rt.inspect(info.id)).state == "exited"
        await rt.remove(info.id)
        await wait_until(lambda: _gone(command_pid))
    finally:
        for info in await rt.list():
            await rt.remove(info.id)
        await rt.close()
        if rt.cgroups is not None:
            rt.cgroups.remove_node()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
