"""Leader election between two real controller-manager processes (``python -m
control.controllers.main``) against one API server: only the leader schedules, and when
it dies the standby takes over within the lease and carries on, with no Pod bound twice.
The test plays the nodes (Node objects only; no agents)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from controller_kit import Cluster, wait_for

from control.client import errors
from control.controllers.leader import LEADER_ANNOTATION

LEASE = ["--lease-duration", "2", "--renew-deadline", "1.5", "--retry-period", "0.25"]


def _manager_argv(cluster: Cluster, identity: str) -> list[str]:
    cfg = cluster.client_config()
    return ["-m", "control.controllers.main", "--server", cfg.server, "--token",
            str(cfg.token), "--certificate-authority", str(cfg.ca_file),
            "--controllers", "scheduler", "--identity", identity, *LEASE,
            "--log-level", "INFO"]


async def _holder(cluster: Cluster) -> dict:
    try:
        ep = await cluster.client.get("endpoints", "mesh-controller-manager",
                                      namespace="kube-system")
    except errors.NotFound:
        return {}
    return json.loads(ep["metadata"]["annotations"][LEADER_ANNOTATION])


async def _exited(proc: object) -> tuple[str, int] | None:
    rc = proc.poll()  # type: ignore[attr-defined]
    return None if rc is None else ("exited", rc)


def _pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox:1"}]}}


async def _all_bound(cluster: Cluster, names: list[str]) -> bool:
    pods = {p["metadata"]["name"]: p for p in await cluster.pods()}
    return all(pods.get(n, {}).get("spec", {}).get("nodeName") for n in names)


async def _scheduled_by(cluster: Cluster) -> dict[str, list[str]]:
    """pod name -> the schedulers (event source hosts) that bound it, one per Event
    occurrence (count)."""
    out: dict[str, list[str]] = {}
    for e in await cluster.events("Scheduled"):
        out.setdefault(e["involvedObject"]["name"], []).extend(
            [e["source"]["host"]] * int(e.get("count", 1)))
    return out


async def test_standby_takes_over_when_leader_dies_without_double_scheduling(
        cluster: Cluster, spawn: Callable) -> None:
    """cm-a leads and binds the first batch while cm-b waits; cm-a is killed (SIGKILL,
    no release); cm-b acquires the lease (leaderTransitions goes up) and binds the second
    batch. Every Pod has exactly one Scheduled Event, from the leader of its time."""
    for n in ("n0", "n1"):
        await cluster.add_node(n)
    a = spawn.python(*_manager_argv(cluster, "cm-a"), name="cm-a")

    async def a_leads() -> bool:
        return (await _holder(cluster)).get("holderIdentity") == "cm-a"
    await wait_for(a_leads, what="cm-a leading")
    b = spawn.python(*_manager_argv(cluster, "cm-b"), name="cm-b")
    first = [f"first-{i}" for i in range(5)]
    for name in first:
        await cluster.client.create("pods", _pod(name))
    await wait_for(lambda: _all_bound(cluster, first), what="first batch bound")

    async def first_events() -> bool:  # Events are written after the binding, async
        return len(await _scheduled_by(cluster)) == 5
    await wait_for(first_events, what="the first batch's Scheduled events")
    assert b.poll() is None

    a.send_signal(signal.SIGKILL)
    a.wait(10)
    second = [f"second-{i}" for i in range(5)]
    for name in second:
        await cluster.client.create("pods", _pod(name))

    async def b_leads() -> dict:
        record = await _holder(cluster)
        return record if record.get("holderIdentity") == "cm-b" else {}
    record = await wait_for(b_leads, what="cm-b taking over")
    assert record["leaderTransitions"] >= 1
    await wait_for(lambda: _all_bound(cluster, second), what="second batch bound")

    async def all_events() -> dict[str, list[str]]:
        by = await _scheduled_by(cluster)
        return by if len(by) == 10 else {}
    by = await wait_for(all_events, what="10 Scheduled events")
    assert {n: by[n] for n in first} == {n: ["cm-a"] for n in first}
    assert {n: by[n] for n in second} == {n: ["cm-b"] for n in second}


async def test_leader_that_stops_cleanly_hands_over_at_once(cluster: Cluster,
                                                            spawn: Callable) -> None:
    """SIGTERM: the leader releases the lease (empty holder) and exits 0, so the standby
    acquires it without waiting out the lease."""
    a = spawn.python(*_manager_argv(cluster, "cm-a"), name="cm-a")

    async def holder_is(who: str) -> bool:
        return (await _holder(cluster)).get("holderIdentity") == who
    await wait_for(lambda: holder_is("cm-a"), what="cm-a leading")
    a.send_signal(signal.SIGTERM)
    # Wait without blocking the loop: the API server answering its release runs here.
    assert await wait_for(lambda: _exited(a), what="cm-a exiting") == ("exited", 0)
    assert (await _holder(cluster)).get("holderIdentity") == ""
    spawn.python(*_manager_argv(cluster, "cm-b"), name="cm-b")
    await wait_for(lambda: holder_is("cm-b"), what="cm-b leading")
