"""Node loss end to end: the test plays the agents' heartbeats (status writes) and the
node lifecycle controller, scheduler and workload controllers run against the real API
server. Grace period and eviction timeout are a second each so the tests are short;
nothing asserts how long anything took."""

from __future__ import annotations

import asyncio

from controller_kit import (
    Cluster,
    auto_ready,
    deployment,
    fast_config,
    heartbeats,
    running,
    wait_for,
)

from control.controllers.nodehealth import NodeHealthConfig
from control.controllers.podutil import condition, is_ready

FAST = NodeHealthConfig(grace_period=1.0, eviction_timeout=1.0, eviction_rate=100.0)


async def _ready_condition(cluster: Cluster, node: str) -> str:
    n = await cluster.client.get("nodes", node)
    return (condition(n, "Ready") or {}).get("status", "")


async def test_lost_node_is_marked_not_ready_and_its_pods_are_rescheduled(
        cluster: Cluster) -> None:
    """n0 stops heartbeating: it becomes Ready=Unknown, its Pod's Ready turns False, the
    Pod is evicted (an Event says so) and its replacement runs on a live node."""
    names = ["n0", "n1", "n2"]
    for n in names:
        await cluster.add_node(n)
    alive = set(names)
    config = fast_config(node_health=FAST)
    async with heartbeats(cluster, alive), running(cluster, config), auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 3))

        async def three_ready() -> list[dict]:
            pods = await cluster.pods("app=web")
            return pods if len(pods) == 3 and all(is_ready(p) for p in pods) else []
        pods = await wait_for(three_ready, what="3 ready pods")
        victim = next(p for p in pods if p["spec"]["nodeName"] == "n0")
        alive.discard("n0")

        async def unknown() -> bool:
            return await _ready_condition(cluster, "n0") == "Unknown"
        await wait_for(unknown, what="n0 Ready=Unknown")

        async def replaced() -> list[dict]:
            pods = await cluster.pods("app=web")
            names_now = {p["metadata"]["name"] for p in pods}
            ok = (victim["metadata"]["name"] not in names_now and len(pods) == 3
                  and all(p["spec"].get("nodeName") in ("n1", "n2") for p in pods))
            return pods if ok else []
        await wait_for(replaced, what="the lost pod replaced on a live node")
        evictions = await cluster.events("NodeControllerEviction")
        assert [e["involvedObject"]["name"] for e in evictions] == [victim["metadata"]["name"]]
        assert await cluster.events("NodeNotReady")


async def test_eviction_stops_when_most_nodes_are_lost_at_once(cluster: Cluster) -> None:
    """Three of four nodes stop heartbeating together (a partition, most likely): they are
    marked NotReady and their Pods not ready, but no Pod is deleted even well past the
    eviction timeout; when heartbeats return the nodes are Ready again with every Pod
    still there."""
    names = ["n0", "n1", "n2", "n3"]
    for n in names:
        await cluster.add_node(n)
    alive = set(names)
    # A longer grace here: when heartbeats resume, the returning nodes must all be heard
    # from within it even on a loaded machine (see the clock test for the exact rule).
    config = fast_config(node_health=NodeHealthConfig(grace_period=2.0, eviction_timeout=1.0,
                                                      eviction_rate=100.0))
    async with heartbeats(cluster, alive), running(cluster, config) as manager, \
            auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 4))

        async def four_ready() -> list[dict]:
            pods = await cluster.pods("app=web")
            return pods if len(pods) == 4 and all(is_ready(p) for p in pods) else []
        before = {p["metadata"]["name"] for p in await wait_for(four_ready, what="4 ready")}
        alive.difference_update({"n0", "n1", "n2"})

        async def three_unknown() -> bool:
            states = [await _ready_condition(cluster, n) for n in ("n0", "n1", "n2")]
            return states == ["Unknown"] * 3
        await wait_for(three_unknown, what="3 nodes NotReady")
        await asyncio.sleep(3 * FAST.eviction_timeout)
        lifecycle = next(c for c in manager.controllers if c.name == "nodelifecycle")
        assert lifecycle.last is not None  # type: ignore[attr-defined]
        assert lifecycle.last.state == "PartialDisruption"  # type: ignore[attr-defined]
        pods = await cluster.pods("app=web")
        assert {p["metadata"]["name"] for p in pods} == before
        lost = [p for p in pods if p["spec"]["nodeName"] != "n3"]
        assert lost
        assert not any(is_ready(p) for p in lost)
        assert await cluster.events("NodeControllerEviction") == []

        alive.update(names)

        async def all_ready() -> bool:
            return [await _ready_condition(cluster, n) for n in names] == ["True"] * 4
        await wait_for(all_ready, what="nodes back")
        assert {p["metadata"]["name"] for p in await cluster.pods("app=web")} == before
