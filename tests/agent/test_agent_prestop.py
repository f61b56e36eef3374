"""Stopping a Pod in Kubernetes' order (``lifecycle.py``) on a real runtime: preStop
hooks run before SIGTERM and inside the grace period, a failing hook is reported and
does not stop the termination, and the mesh sidecar gets SIGTERM only after the app has
exited. The hooks' ``sleep`` runs on the test's ManualClock; processes are real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agent_kit import RUNTIMES, container, pod, wait_until

from control.agent.lifecycle import StopTarget, stop_in_order

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.parametrize("runtime", RUNTIMES[:1], indirect=True)]

# Writes {mark} on SIGTERM; says (file {mark}.armed) when the handler is installed.
ON_TERM = ("trap '{action}; exit 0' TERM; touch {mark}.armed; "
           "while true; do busybox sleep 0.1; done")


async def _armed(mark: Path) -> None:
    await wait_until(lambda: Path(f"{mark}.armed").exists(), timeout=30,
                     what="the SIGTERM handler installed")


async def test_prestop_sleep_holds_sigterm_until_it_is_over(make_worker, runtime, clock,
                                                            tmp_path):
    """preStop sleep 10 s: while the agent's clock has not moved 10 s the app is still
    running and has had no SIGTERM; once it has, the app gets SIGTERM and exits cleanly
    (its handler ran: exit 0, not a SIGKILL)."""
    mark = tmp_path / "term"
    app = container("app", ON_TERM.format(action=f"echo term > {mark}", mark=mark),
                    lifecycle={"preStop": {"sleep": {"seconds": 10}}})
    w = make_worker(pod("web", app, grace=30))
    await w.sync()
    await _armed(mark)
    stopping = asyncio.create_task(w.terminate())
    await wait_until(lambda: clock.sleepers > 0, what="the preStop sleep")
    clock.advance(9)
    await asyncio.sleep(0.3)  # real time for a wrong early SIGTERM to show
    assert not mark.exists()
    assert not stopping.done()
    clock.advance(1)
    await asyncio.wait_for(stopping, 30)
    assert mark.read_text().strip() == "term"
    cs = w.status()["containerStatuses"][0]
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert await runtime.list() == []


async def test_prestop_exec_runs_in_the_container_before_sigterm(make_worker, runtime,
                                                                 tmp_path):
    """An exec hook runs inside the container (its working directory and environment);
    the SIGTERM handler then finds what the hook left."""
    mark = tmp_path / "term"
    seen = tmp_path / "hook-seen"
    hook = {"exec": {"command": ["busybox", "sh", "-c", f"echo $HOOK_NAME > {seen}.tmp && "
                                 f"busybox mv {seen}.tmp {seen}"]}}
    action = f"if [ -f {seen} ]; then echo after-hook > {mark}; else echo before > {mark}; fi"
    app = container("app", ON_TERM.format(action=action, mark=mark),
                    env=[{"name": "HOOK_NAME", "value": "drain"}],
                    lifecycle={"preStop": hook})
    w = make_worker(pod("web", app, grace=30))
    await w.sync()
    await _armed(mark)
    await asyncio.wait_for(w.terminate(), 30)
    assert seen.read_text().strip() == "drain"
    assert mark.read_text().strip() == "after-hook"


async def test_failing_prestop_hook_is_reported_and_the_pod_still_stops(
        make_worker, runtime, tmp_path):
    """An exec hook that exits 3: a FailedPreStopHook Warning names the container and
    the exit code, and the container is stopped and removed all the same."""
    mark = tmp_path / "term"
    events: list[tuple[str, str, str]] = []
    app = container("app", ON_TERM.format(action=f"echo term > {mark}", mark=mark),
                    lifecycle={"preStop": {"exec": {"command": ["busybox", "sh", "-c",
                                                                "exit 3"]}}})
    w = make_worker(pod("web", app, grace=30), events=lambda *e: events.append(e))
    await w.sync()
    await _armed(mark)
    await asyncio.wait_for(w.terminate(), 30)
    [failed] = [e for e in events if e[1] == "FailedPreStopHook"]
    assert failed[0] == "Warning"
    assert "container app" in failed[2]
    assert "exited with 3" in failed[2]
    assert mark.read_text().strip() == "term"
    assert await runtime.list() == []


async def test_force_stop_runs_no_hook(make_worker, runtime, clock, tmp_path):
    """Grace 0 (a force delete): the preStop sleep is skipped and the container is
    killed at once, with no clock movement needed."""
    mark = tmp_path / "term"
    app = container("app", ON_TERM.format(action=f"echo term > {mark}", mark=mark),
                    lifecycle={"preStop": {"sleep": {"seconds": 600}}})
    w = make_worker(pod("web", app, grace=30))
    await w.sync()
    await _armed(mark)
    await asyncio.wait_for(w.terminate(grace=0), 30)
    assert clock.sleepers == 0
    assert await runtime.list() == []


async def test_sidecar_gets_sigterm_only_after_the_app_has_exited(make_worker, runtime,
                                                                  clock, tmp_path):
    """The app takes half a second to drain after SIGTERM; the container marked as the
    sidecar is signalled only once the app has gone, so the log shows the app's end
    before the sidecar's SIGTERM."""
    log = tmp_path / "order"
    app = container("app", ON_TERM.format(action=f"busybox sleep 0.5; echo app-exit >> {log}",
                                          mark=tmp_path / "app"))
    proxy = container("proxy", ON_TERM.format(action=f"echo proxy-term >> {log}",
                                              mark=tmp_path / "proxy"))
    w = make_worker(pod("web", app, proxy, grace=30))
    await w.sync()
    await _armed(tmp_path / "app")
    await _armed(tmp_path / "proxy")
    infos = await runtime.list(pod_uid=w.pod.uid)
    targets = [StopTarget(i, w.pod.container(i.container_name),
                          sidecar=i.container_name == "proxy") for i in infos]
    await asyncio.wait_for(stop_in_order(targets, grace=30, runtime=runtime, clock=clock,
                                         host="127.0.0.1",
                                         on_hook_failure=lambda *_: None), 30)
    assert log.read_text().split() == ["app-exit", "proxy-term"]
    await w.terminate(grace=0)


async def test_shortened_grace_cuts_the_hook_and_stops_at_once(make_worker, runtime, clock,
                                                               tmp_path):
    """A termination with a 600 s grace held by a 600 s preStop sleep: shortening the
    grace to 0.5 s (a later ``delete --now``) cuts the hook off (reported), and the app
    gets its SIGTERM and stops without the agent's clock moving at all."""
    from control.agent.lifecycle import Grace

    mark = tmp_path / "term"
    events: list[tuple[str, str, str]] = []
    app = container("app", ON_TERM.format(action=f"echo term > {mark}", mark=mark),
                    lifecycle={"preStop": {"sleep": {"seconds": 600}}})
    w = make_worker(pod("web", app, grace=600), events=lambda *e: events.append(e))
    await w.sync()
    await _armed(mark)
    grace = Grace(600, clock=clock)
    stopping = asyncio.create_task(w.terminate(grace))
    await wait_until(lambda: clock.sleepers > 0, what="the preStop sleep")
    await asyncio.sleep(0.3)
    assert not stopping.done()
    assert not grace.shorten(900)  # never lengthened
    assert grace.shorten(0.5)
    await asyncio.wait_for(stopping, 30)
    assert mark.read_text().strip() == "term"
    [cut] = [e for e in events if e[1] == "FailedPreStopHook"]
    assert "shortened to 0.5s" in cut[2]
    assert await runtime.list() == []
