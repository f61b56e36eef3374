"""A Pod's life on a real runtime: start, serve, probe, restart, back off, stop, adopt.

Every test runs twice, on the ``process`` runtime and on the ``docker`` runtime
against Podman's Docker-compatible API (see conftest.py). Containers and processes are
real; only time is controlled: probes and back-off run on the test's ManualClock, and
real time is spent only waiting for real processes to start or exit.
"""

from __future__ import annotations

import asyncio

import pytest
from agent_kit import DOCKER_MARK, HTTPD, container, http_get, pod, wait_until

pytestmark = pytest.mark.timeout(60)


def _status(worker, name: str = "app") -> dict:
    return next(c for c in worker.status()["containerStatuses"] if c["name"] == name)


async def _serving(worker) -> str:
    """Sync until the pod's first published port answers; return its base URL."""
    await worker.sync()
    binding = worker.status()["portMappings"][0]
    url = f"http://127.0.0.1:{binding['hostPort']}"
    await wait_until(lambda: asyncio.to_thread(http_get, url + "/index.html"),
                     what=f"{url} to answer")
    return url


async def test_pod_serves_on_published_host_port_and_becomes_ready(make_worker, runtime):
    """The container starts, answers through the host port allocated for it, and the Pod
    reports Running with Ready=True and the port in status.portMappings."""
    w = make_worker(pod("web", container("app", HTTPD, ports=[{"containerPort": 8080,
                                                               "name": "http"}])))
    url = await _serving(w)
    status, body = await asyncio.to_thread(http_get, url + "/index.html")
    assert (status, body) == (200, b"hello\n")
    st = await w.sync()
    assert st["phase"] == "Running"
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    [hp] = st["portMappings"]
    assert hp["containerPort"] == 8080
    assert hp["container"] == "app"
    assert w.ports.range[0] <= hp["hostPort"] <= w.ports.range[1]
    cs = _status(w)
    assert "running" in cs["state"]
    assert cs["ready"]
    assert cs["restartCount"] == 0
    assert cs["containerID"] == f"{runtime.name}://{w.container_id('app')}"


async def test_liveness_failure_restarts_container_and_counts_it(make_worker, clock, runtime):
    """A liveness probe failing failureThreshold times kills the container; it is started
    again (the first restart has no back-off) and restartCount becomes 1."""
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 5,
             "periodSeconds": 10, "failureThreshold": 2}
    w = make_worker(pod("live", container("app", HTTPD, livenessProbe=probe,
                                          ports=[{"containerPort": 8080, "name": "http"}])))
    await _serving(w)
    first = w.container_id("app")
    clock.advance(5)
    await w.sync()  # probe passes
    assert _status(w)["restartCount"] == 0
    assert w.container_id("app") == first
    res = await runtime.exec(first, ["busybox", "rm", "www/healthz"], timeout=10)
    assert res.exit_code == 0, res.output
    clock.advance(10)
    await w.sync()  # first failure: below the threshold, still the same container
    assert w.container_id("app") == first
    clock.advance(10)
    await w.sync()  # second failure: killed and started again
    assert w.container_id("app") != first
    cs = _status(w)
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["containerID"] == first
    await _serving(w)  # the new container serves (and has its health file back)
    assert [i.id for i in await runtime.list()] == [w.container_id("app")]


async def test_crashing_container_backs_off_exponentially(make_worker, clock):
    """A container that keeps exiting is restarted at once, then after 10 s, then 20 s;
    in between its state is waiting/CrashLoopBackOff and the Pod stays Running."""
    w = make_worker(pod("crash", container("app", "echo boom; exit 3")))
    await w.sync()
    await wait_until(lambda: _exited_once(w), what="first exit")
    await w.sync()  # first restart: immediate
    assert _status(w)["restartCount"] == 1
    await wait_until(lambda: _exited_once(w), what="second exit")
    await w.sync()
    cs = _status(w)
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "back-off 10s" in cs["state"]["waiting"]["message"]
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert w.status()["phase"] == "Running"
    clock.advance(9)
    await w.sync()
    assert _status(w)["restartCount"] == 1  # still backing off
    clock.advance(1)
    await w.sync()
    assert _status(w)["restartCount"] == 2
    await wait_until(lambda: _exited_once(w), what="third exit")
    await w.sync()
    assert "back-off 20s" in _status(w)["state"]["waiting"]["message"]


async def _exited_once(w) -> bool:
    info = w._slots["app"].current
    if info is None:
        return False
    return (await w.runtime.inspect(info.id)).state == "exited"


@pytest.mark.parametrize(("policy", "script", "phase", "reason"), [
    ("Never", "exit 4", "Failed", "Error"),
    ("OnFailure", "exit 0", "Succeeded", "Completed"),
])
async def test_restart_policy_decides_whether_exited_container_runs_again(
        make_worker, policy, script, phase, reason):
    """restartPolicy Never / OnFailure-with-success leave the container terminated and
    the Pod in its final phase instead of restarting it."""
    w = make_worker(pod("once", container("app", script), restart_policy=policy))
    await w.sync()
    await wait_until(lambda: _exited_once(w), what="exit")
    for _ in range(2):
        st = await w.sync()
    cs = _status(w)
    assert st["phase"] == phase
    assert cs["state"]["terminated"]["reason"] == reason
    assert cs["restartCount"] == 0


async def test_readiness_probe_drives_ready_condition_without_restarts(make_worker, clock,
                                                                     runtime):
    """Readiness starts False, turns True after a passing probe, and back to False when
    the probe fails failureThreshold times; the container is never restarted for it."""
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "initialDelaySeconds": 2,
             "periodSeconds": 5, "failureThreshold": 1}
    w = make_worker(pod("ready", container("app", HTTPD, readinessProbe=probe,
                                           ports=[{"containerPort": 8080}])))
    await _serving(w)

    def ready() -> str:
        return {c["type"]: c["status"] for c in w.status()["conditions"]}["Ready"]

    assert ready() == "False"
    clock.advance(2)
    await w.sync()
    assert ready() == "True"
    await runtime.exec(w.container_id("app"), ["busybox", "rm", "www/healthz"], timeout=10)
    clock.advance(5)
    await w.sync()
    assert ready() == "False"
    assert _status(w)["restartCount"] == 0
    assert "running" in _status(w)["state"]


async def test_delete_sends_sigterm_then_sigkill_after_grace_period(make_worker, runtime):
    """Termination: a container that handles SIGTERM exits on it (exit 0); one that
    ignores it is SIGKILLed when the grace period ends (137). Both are removed and the
    Pod's host ports are released."""
    graceful = container("graceful", "trap 'echo got TERM; exit 0' TERM; "
                         "echo up; while true; do busybox sleep 0.1; done")
    stubborn = container("stubborn", "trap '' TERM; echo up; "
                         "while true; do busybox sleep 0.1; done",
                         ports=[{"containerPort": 9000}])
    w = make_worker(pod("del", graceful, stubborn, grace=1))
    await w.sync()

    async def both_up() -> bool:
        logs = [await runtime.logs(w.container_id(n)) for n in ("graceful", "stubborn")]
        return all(b"up" in log for log in logs)

    await wait_until(both_up, what="both containers to run their traps")
    uid = w.pod.uid
    assert w.ports.held(uid)
    await w.terminate()
    st = w.status()
    codes = {c["name"]: c["state"]["terminated"]["exitCode"]
             for c in st["containerStatuses"]}
    assert codes == {"graceful": 0, "stubborn": 137}
    assert await runtime.list() == []
    assert w.ports.held(uid) == []
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"


async def test_restarted_agent_adopts_running_containers(make_worker, runtime, tmp_path):
    """A new runtime object and pod worker (an agent restart) find the running container
    by its labels and keep it: same id, no second container, ports and restart count
    kept; deleting afterwards leaves nothing behind."""
    w1 = make_worker(pod("adopt", container("app", HTTPD, ports=[{"containerPort": 8080}]),
                         uid="uid-adopt-1"))
    url = await _serving(w1)
    cid = w1.container_id("app")
    port = w1.status()["portMappings"][0]["hostPort"]

    rt2 = _reopen(runtime, tmp_path)
    try:
        w1.ports.release(w1.pod.uid)  # the new agent process starts with no allocations
        w2 = make_worker(pod("adopt", container("app", HTTPD,
                                                ports=[{"containerPort": 8080}]),
                             uid="uid-adopt-1"), rt=rt2)
        st = await w2.sync()
        assert w2.container_id("app") == cid
        assert [i.id for i in await rt2.list()] == [cid]
        assert st["portMappings"][0]["hostPort"] == port
        assert w2.ports.held(w2.pod.uid) == [port]
        assert _status(w2)["restartCount"] == 0
        assert (await asyncio.to_thread(http_get, url + "/index.html"))[0] == 200
        await w2.terminate(grace=0)
        assert await rt2.list() == []
    finally:
        await rt2.close()


def _reopen(runtime, tmp_path):
    from control.agent.runtime.docker import DockerRuntime
    from control.agent.runtime.process import ProcessRuntime
    if isinstance(runtime, DockerRuntime):
        return DockerRuntime(runtime.socket_path, node=runtime.node)
    return ProcessRuntime(runtime.root, node=runtime.node)


async def test_memory_and_cpu_limits_are_applied_by_the_runtime(make_worker, runtime):
    """resources.limits (memory, cpu) reach the engine (read back from its inspect) or,
    on the process runtime, the container's cgroup."""
    from control.agent.runtime.process import ProcessRuntime
    if isinstance(runtime, ProcessRuntime) and runtime.cgroups is None:
        pytest.skip(f"process runtime cannot manage cgroups here: {runtime.cgroups_note}")
    w = make_worker(pod("mem", container("app", "while true; do busybox sleep 0.2; done",
                                         resources={"limits": {"memory": "48Mi",
                                                               "cpu": "250m"}})))
    await w.sync()
    info = await runtime.inspect(w.container_id("app"))
    assert info.state == "running"
    assert info.memory_limit == 48 * 2**20
    assert info.cpu_limit_millis == 250


async def test_logs_exec_and_stats_reach_the_running_container(make_worker, runtime):
    """logs return what the command printed, exec runs in the container's working
    directory with its environment, stats report memory in use."""
    w = make_worker(pod("tools", container(
        "app", "echo started-$(GREETING); while true; do busybox sleep 0.2; done",
        env=[{"name": "GREETING", "value": "hi"}])))
    await w.sync()
    cid = w.container_id("app")
    await wait_until(lambda: _has_log(runtime, cid, b"started-hi"), what="log line")
    res = await runtime.exec(cid, ["busybox", "sh", "-c", "echo $GREETING"], timeout=10)
    assert (res.exit_code, res.output) == (0, b"hi\n")
    missing = await runtime.exec(cid, ["no-such-tool"], timeout=10)
    assert missing.exit_code in (126, 127)
    stats = await runtime.stats(cid)
    assert stats.memory_bytes > 0
    assert stats.cpu_seconds >= 0
    assert await runtime.logs(cid, tail=1) == b"started-hi\n"


async def _has_log(runtime, cid: str, needle: bytes) -> bool:
    return needle in await runtime.logs(cid)


async def test_startup_exec_probe_gates_started_and_ready(make_worker, clock, runtime):
    """Until the startup probe (exec in the container) passes, the container is not
    started and not ready; once it passes, both turn true (no readiness probe)."""
    probe = {"exec": {"command": ["busybox", "test", "-f", "booted"]}, "periodSeconds": 1,
             "failureThreshold": 30}
    w = make_worker(pod("boot", container("app", "while true; do busybox sleep 0.2; done",
                                          startupProbe=probe)))
    await w.sync()
    clock.advance(1)
    await w.sync()
    cs = _status(w)
    assert (cs["started"], cs["ready"]) == (False, False)
    res = await runtime.exec(w.container_id("app"), ["busybox", "touch", "booted"],
                             timeout=10)
    assert res.exit_code == 0, res.output
    clock.advance(1)
    await w.sync()
    cs = _status(w)
    assert (cs["started"], cs["ready"]) == (True, True)
    assert cs["restartCount"] == 0


@pytest.mark.parametrize("runtime", [pytest.param("docker", marks=DOCKER_MARK)],
                         indirect=True)
async def test_empty_dir_volume_is_shared_by_the_pods_containers(make_worker, runtime):
    """An emptyDir is one host directory bind-mounted into every container that mounts
    it: what one container writes, the other reads."""
    mount = [{"name": "shared", "mountPath": "/data"}]
    w = make_worker(pod("vols",
                        container("writer", "echo from-writer > /data/note; "
                                  "while true; do busybox sleep 0.2; done",
                                  volumeMounts=mount),
                        container("reader", "while true; do busybox sleep 0.2; done",
                                  volumeMounts=[dict(mount[0], readOnly=True)]),
                        volumes=[{"name": "shared", "emptyDir": {}}]))
    await w.sync()
    reader = w.container_id("reader")

    async def note() -> bytes:
        res = await runtime.exec(reader, ["busybox", "cat", "/data/note"], timeout=10)
        return res.output if res.exit_code == 0 else b""

    assert await wait_until(note, what="the writer's note") == b"from-writer\n"
    denied = await runtime.exec(reader, ["busybox", "touch", "/data/x"], timeout=10)
    assert denied.exit_code != 0  # mounted read-only
    await w.terminate(grace=0)
    assert not w.volume_root.exists()


@pytest.mark.parametrize("runtime", ["process"], indirect=True)
async def test_container_over_its_memory_limit_is_oom_killed_and_says_so(make_worker,
                                                                        runtime):
    """A command that allocates past resources.limits.memory is killed by the kernel and
    its terminated state says OOMKilled (exit 137). (Podman 4.3 on cgroup v1 does not
    report OOMKilled through the Docker API here, so only the process runtime is
    checked; the docker runtime passes the engine's flag through.)"""
    if runtime.cgroups is None:
        pytest.skip(f"process runtime cannot manage cgroups here: {runtime.cgroups_note}")
    w = make_worker(pod("oom", container(
        "app", "exec busybox dd if=/dev/zero of=/dev/null bs=64M count=1",
        resources={"limits": {"memory": "32Mi"}}), restart_policy="Never"))
    await w.sync()
    await wait_until(lambda: _exited_once(w), what="the OOM kill")
    await w.sync()
    term = _status(w)["state"]["terminated"]
    assert term["reason"] == "OOMKilled"
    assert term["exitCode"] == 137
