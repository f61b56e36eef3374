"""Pods that cannot run end in a clear waiting reason and an Event, never a hang, and
the runtime keeps serving other Pods (on both runtimes unless stated)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from agent_kit import DOCKER_MARK, HTTPD, IMAGE, container, http_get, pod, wait_until

pytestmark = pytest.mark.timeout(60)


def _waiting(worker, name: str = "app") -> tuple[str, str]:
    cs = next(c for c in worker.status()["containerStatuses"] if c["name"] == name)
    w = cs["state"]["waiting"]
    return w["reason"], w["message"]


async def _good_pod_still_runs(make_worker) -> None:
    w = make_worker(pod("fine", container("app", HTTPD, ports=[{"containerPort": 8080}])))
    await w.sync()
    url = f"http://127.0.0.1:{w.status()['portMappings'][0]['hostPort']}/index.html"
    await wait_until(lambda: asyncio.to_thread(http_get, url), what="the good pod")


@pytest.mark.parametrize("runtime", [pytest.param("docker", marks=DOCKER_MARK)],
                         indirect=True)
async def test_missing_image_reports_err_image_pull_then_back_off(make_worker, clock,
                                                                  runtime):
    """An image no registry has: ErrImagePull with the engine's message and a Warning
    event, then ImagePullBackOff while backing off, a new pull after the back-off; the
    Pod stays Pending with no container created."""
    events: list[tuple[str, str, str]] = []
    w = make_worker(pod("noimg", {"name": "app", "image": "localhost/mesh-missing:none",
                                  "command": ["sh"]}),
                    events=lambda *e: events.append(e))
    st = await w.sync()
    reason, message = _waiting(w)
    assert reason == "ErrImagePull"
    assert "localhost/mesh-missing:none" in message
    assert st["phase"] == "Pending"
    assert any(e[0] == "Warning" and "ErrImagePull" in e[2] for e in events)
    await w.sync()
    assert _waiting(w)[0] == "ImagePullBackOff"
    clock.advance(10)
    await w.sync()
    assert _waiting(w)[0] == "ErrImagePull"  # tried again after the back-off
    assert await runtime.list() == []
    await _good_pod_still_runs(make_worker)


@pytest.mark.parametrize("runtime", [pytest.param("docker", marks=DOCKER_MARK)],
                         indirect=True)
async def test_pull_policy_never_with_absent_image_is_err_image_never_pull(make_worker):
    """imagePullPolicy Never and no local image: ErrImageNeverPull, nothing pulled."""
    w = make_worker(pod("never", {"name": "app", "image": "localhost/mesh-missing:never",
                                  "imagePullPolicy": "Never", "command": ["sh"]}))
    await w.sync()
    reason, message = _waiting(w)
    assert reason == "ErrImageNeverPull"
    assert "pull policy of Never" in message


async def test_command_not_found_is_run_container_error(make_worker, runtime):
    """A command that does not exist: RunContainerError naming it; no container is left
    behind; other Pods still run."""
    events: list[tuple[str, str, str]] = []
    w = make_worker(pod("nocmd", {"name": "app", "image": IMAGE,
                                  "command": ["no-such-binary-here", "--flag"]}),
                    events=lambda *e: events.append(e))
    st = await w.sync()
    reason, message = _waiting(w)
    assert reason == "RunContainerError"
    assert "no-such-binary-here" in message
    assert "executable file not found" in message
    assert st["phase"] == "Pending"
    assert any(e[:2] == ("Warning", "Failed") for e in events)
    assert await runtime.list() == []
    await _good_pod_still_runs(make_worker)


async def test_host_port_already_taken_is_run_container_error_until_freed(make_worker,
                                                                          clock, runtime):
    """A hostPort some other process listens on: RunContainerError saying so; once the
    port is free, the next attempt after the back-off starts the container."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        w = make_worker(pod("clash", container(
            "app", HTTPD, ports=[{"containerPort": 8080, "hostPort": taken}])))
        await w.sync()
        reason, message = _waiting(w)
        assert reason == "RunContainerError"
        assert f"{taken}" in message
        assert "already in use" in message
        assert w.ports.held(w.pod.uid) == []
    finally:
        blocker.close()
    await w.sync()
    assert _waiting(w)[0] == "RunContainerError"  # still backing off: no tight retry loop
    clock.advance(10)
    await w.sync()
    url = f"http://127.0.0.1:{taken}/index.html"
    await wait_until(lambda: asyncio.to_thread(http_get, url), what="the pod on its port")


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_process_runtime_refuses_volume_mounts_with_create_container_error(
        make_worker):
    """The process runtime has no mount namespace: a volumeMount is refused plainly
    (CreateContainerError) instead of being silently ignored."""
    w = make_worker(pod("vol", container("app", "true",
                                         volumeMounts=[{"name": "data", "mountPath": "/d"}]),
                        volumes=[{"name": "data", "emptyDir": {}}]))
    await w.sync()
    reason, message = _waiting(w)
    assert reason == "CreateContainerError"
    assert "volumeMounts" in message


@pytest.mark.parametrize("runtime", ["process"], indirect=True)  # the worker's own is dead
async def test_engine_that_does_not_answer_is_a_waiting_reason_not_a_crash(
        make_worker, tmp_path):
    """With the engine's socket gone, sync reports RuntimeUnavailable in the container's
    state (naming the socket) and returns normally, pass after pass."""
    from control.agent.runtime.docker import DockerRuntime
    dead = DockerRuntime(str(tmp_path / "no-engine.sock"), node="n-dead")
    try:
        w = make_worker(pod("dead", container("app", "true")), rt=dead)
        for _ in range(2):
            st = await w.sync()
            reason, message = _waiting(w)
            assert reason == "RuntimeUnavailable"
            assert "no-engine.sock" in message
        assert st["phase"] == "Pending"
    finally:
        await dead.close()
