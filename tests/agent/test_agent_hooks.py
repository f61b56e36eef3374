"""Container hooks outside a Pod deletion, as the kubelet runs them, on a real runtime:
``postStart`` runs in the container right after it started and before it is ready or
probed; a failing one is reported and the container killed; a container killed for a
failed liveness probe gets its ``preStop`` hook first. Processes are real; time for
probes runs on the test's ManualClock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agent_kit import RUNTIMES, container, pod, wait_until

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)]

# Runs until killed; says (file {mark}.up) when it runs.
LOOP = "touch {mark}.up; while true; do busybox sleep 0.1; done"


def _events(w_events: list[tuple[str, str, str]], reason: str) -> list[tuple[str, str, str]]:
    return [e for e in w_events if e[1] == reason]


async def test_post_start_runs_in_the_container_before_it_is_ready(make_worker, runtime,
                                                                    tmp_path: Path):
    """An exec postStart hook runs inside the started container (its environment) and
    has finished when the first sync returns; only then is the container ready."""
    mark, seen = tmp_path / "app", tmp_path / "hook-seen"
    hook = {"exec": {"command": ["busybox", "sh", "-c", f"echo $GREETING > {seen}"]}}
    app = container("app", LOOP.format(mark=mark), lifecycle={"postStart": hook},
                    env=[{"name": "GREETING", "value": "hello"}])
    events: list[tuple[str, str, str]] = []
    w = make_worker(pod("web", app), events=lambda *e: events.append(e))
    await w.sync()
    assert seen.read_text().strip() == "hello"
    cs = w.status()["containerStatuses"][0]
    assert "running" in cs["state"]
    assert cs["ready"]
    assert not _events(events, "FailedPostStartHook")
    await asyncio.wait_for(w.terminate(), 30)


async def test_failing_post_start_is_reported_and_kills_the_container(make_worker, runtime,
                                                                      tmp_path: Path):
    """A postStart hook that exits 4: a FailedPostStartHook Warning names the container
    and the exit code, the container is killed (not ready, no longer running), and the
    next sync starts it again under restartPolicy Always."""
    mark = tmp_path / "app"
    hook = {"exec": {"command": ["busybox", "sh", "-c", "exit 4"]}}
    app = container("app", LOOP.format(mark=mark), lifecycle={"postStart": hook})
    events: list[tuple[str, str, str]] = []
    w = make_worker(pod("web", app, grace=5), events=lambda *e: events.append(e))
    await w.sync()
    [failed] = _events(events, "FailedPostStartHook")
    assert failed[0] == "Warning"
    assert "container app" in failed[2]
    assert "exited with 4" in failed[2]
    first = w.container_id("app")
    info = await runtime.inspect(first)
    assert info.state == "exited"
    assert not w.status()["containerStatuses"][0]["ready"]
    await w.sync()  # restarted (the first restart has no back-off), and killed again
    assert w.container_id("app") != first
    assert len(_events(events, "FailedPostStartHook")) == 2
    await asyncio.wait_for(w.terminate(), 30)


async def test_liveness_kill_runs_the_pre_stop_hook_first(make_worker, runtime, clock,
                                                          tmp_path: Path):
    """A container killed for failing its liveness probe first runs its preStop hook
    (here it leaves a file the test finds), then is restarted."""
    mark, hooked = tmp_path / "app", tmp_path / "prestop-ran"
    probe = {"exec": {"command": ["busybox", "sh", "-c", "exit 1"]}, "periodSeconds": 10,
             "failureThreshold": 1}
    hook = {"exec": {"command": ["busybox", "sh", "-c", f"touch {hooked}"]}}
    app = container("app", LOOP.format(mark=mark), livenessProbe=probe,
                    lifecycle={"preStop": hook})
    events: list[tuple[str, str, str]] = []
    w = make_worker(pod("web", app, grace=5), events=lambda *e: events.append(e))
    await w.sync()
    await wait_until(lambda: Path(f"{mark}.up").exists(), what="the app running")
    first = w.container_id("app")
    assert not hooked.exists()
    clock.advance(10)
    await w.sync()  # the probe fails: preStop, then the kill
    assert hooked.exists()
    assert _events(events, "Killing")
    await w.sync()
    assert w.container_id("app") != first
    await asyncio.wait_for(w.terminate(), 30)
