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
