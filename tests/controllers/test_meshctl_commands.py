"""``meshctl rollout`` and ``meshctl controller-manager`` as a user runs them: the real
command in a subprocess, against the real API server in this test's loop (the
subprocess is awaited, never waited for in a way that blocks the server). The test
plays the nodes (``auto_ready``)."""

from __future__ import annotations

import asyncio
import sys

from controller_kit import Cluster, auto_ready, deployment, fast_config, running, wait_for

from control.client import errors
from control.controllers import rollout_ops as deploy_ops
from control.controllers.podutil import is_ready


async def meshctl(cluster: Cluster | None, *args: str) -> tuple[int, str, str]:
    conn: list[str] = []
    if cluster is not None:
        cfg = cluster.client_config()
        conn = ["--server", cfg.server, "--token", str(cfg.token),
                "--certificate-authority", str(cfg.ca_file)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control.cli.main", *args, *conn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _rolled_out(cluster: Cluster) -> bool:
    d = await cluster.client.get("deployments", "web", namespace="default")
    return deploy_ops.rollout_status(d)[0] == "done"


async def test_rollout_status_history_undo_pause_resume(cluster: Cluster) -> None:
    """status waits and prints kubectl's success line; history lists the revisions with
    their ReplicaSets; undo rolls back and says so; undo to a missing revision exits 1
    naming it; pause and resume flip spec.paused."""
    await cluster.add_node("n0")
    async with running(cluster, fast_config(controllers=("scheduler", "replicaset",
                                                         "deployment"))), \
            auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 2))
        rc, out, err = await meshctl(cluster, "rollout", "status", "deployment/web",
                                     "--timeout", "60")
        assert rc == 0, err
        assert out.strip().endswith('deployment "web" successfully rolled out')
        for _ in range(20):
            d = await cluster.client.get("deployments", "web", namespace="default")
            d["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:2"
            try:
                await cluster.client.replace("deployments", d)
                break
            except errors.Conflict:
                continue
        await wait_for(lambda: _rolled_out(cluster), what="v2 rolled out")
        rc, out, err = await meshctl(cluster, "rollout", "history", "deployment", "web")
        assert rc == 0, err
        lines = out.splitlines()
        assert lines[:2] == ["deployment.apps/web", "REVISION  REPLICASET"]
        assert [line.split()[0] for line in lines[2:]] == ["1", "2"]

        rc, out, _ = await meshctl(cluster, "rollout", "undo", "deployment/web")
        assert (rc, out.strip()) == (0, "deployment.apps/web rolled back")

        async def back_on_v1() -> bool:
            pods = await cluster.pods("app=web")
            return len(pods) == 2 and all(
                p["spec"]["containers"][0]["image"] == "busybox:1" and is_ready(p)
                for p in pods)
        await wait_for(back_on_v1, what="v1 pods after undo")

        rc, _, err = await meshctl(cluster, "rollout", "undo", "deployment/web",
                                   "--to-revision", "7")
        assert rc == 1
        assert "unable to find specified revision 7 in history" in err

        rc, out, _ = await meshctl(cluster, "rollout", "pause", "deployment/web")
        assert (rc, out.strip()) == (0, "deployment.apps/web paused")
        d = await cluster.client.get("deployments", "web", namespace="default")
        assert d["spec"]["paused"] is True
        rc, out, _ = await meshctl(cluster, "rollout", "resume", "deployment/web")
        assert (rc, out.strip()) == (0, "deployment.apps/web resumed")
        d = await cluster.client.get("deployments", "web", namespace="default")
        assert not d["spec"].get("paused")


async def test_rollout_refuses_a_kind_that_is_not_a_deployment(cluster: Cluster) -> None:
    rc, _, err = await meshctl(cluster, "rollout", "undo", "pods/web")
    assert rc == 1, err
    assert "rollout takes one deployment" in err


async def test_controller_manager_refuses_bad_settings_before_connecting() -> None:
    """Unknown controller names and inconsistent lease timings exit 2 with a message
    naming the problem; nothing is contacted (no server is given)."""
    rc, _, err = await meshctl(None, "controller-manager", "--server",
                               "https://127.0.0.1:1", "--controllers", "scheduler,bogus")
    assert rc == 2
    assert "unknown controllers ['bogus']" in err
    rc, _, err = await meshctl(None, "controller-manager", "--server",
                               "https://127.0.0.1:1", "--lease-duration", "5",
                               "--renew-deadline", "10")
    assert rc == 2
    assert "lease_duration (5.0s) must be greater than renew_deadline (10.0s)" in err
