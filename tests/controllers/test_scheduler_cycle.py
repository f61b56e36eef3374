"""The scheduler's cycle in the sample-controller style: nodes and Pods seeded through
the real API server, informers filled once and frozen, ``schedule_one(key)`` awaited,
and the exact writes asserted (Events apart: they are written asynchronously)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from controller_kit import Cluster, RecordingClient

from control.client.factory import InformerFactory
from control.controllers.events import EventRecorder
from control.scheduler.scheduler import Scheduler

PODS = "/api/v1/namespaces/default/pods"


def _pod(name: str, memory: str = "64Mi") -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox:1",
                                     "resources": {"requests": {"memory": memory}}}]}}


@asynccontextmanager
async def scheduler(cluster: Cluster) -> AsyncIterator[tuple[Scheduler, RecordingClient,
                                                             EventRecorder]]:
    client = RecordingClient(cluster.client_config())
    factory = InformerFactory(client)
    recorder = EventRecorder(client, "default-scheduler")
    sched = Scheduler(client, factory, recorder)
    factory.start()
    await factory.wait_synced(timeout=30)
    await factory.stop()
    recorder.start()
    try:
        yield sched, client, recorder
    finally:
        sched.shutdown()
        await recorder.stop()
        await client.close()


async def test_pod_that_fits_is_bound_once_and_assumed(cluster: Cluster) -> None:
    """One POST to the binding subresource naming the node; the Pod is assumed on that
    node, so a second cycle on the same (stale) cache writes nothing; a Scheduled Event
    follows."""
    await cluster.add_node("n0")
    pod = await cluster.client.create("pods", _pod("web"))
    async with scheduler(cluster) as (sched, client, recorder):
        assert await sched.queue.get() == "default/web"  # queued by the informer
        await sched.schedule_one("default/web")
        assert client.writes() == [("POST", f"{PODS}/web/binding")]
        (binding,) = client.bodies("POST", "/web/binding")
        assert binding["target"] == {"apiVersion": "v1", "kind": "Node", "name": "n0"}
        assert sched.cache.node_of(pod["metadata"]["uid"]) == "n0"
        client.actions.clear()
        await sched.schedule_one("default/web")
        assert client.writes() == []
        await recorder.flush()
    bound = await cluster.client.get("pods", "web", namespace="default")
    assert bound["spec"]["nodeName"] == "n0"
    (event,) = await cluster.events("Scheduled")
    assert event["message"] == "Successfully assigned default/web to n0"


async def test_unschedulable_pod_gets_condition_and_waits_for_a_node_change(
        cluster: Cluster) -> None:
    """No node fits: one status PATCH with PodScheduled=False/Unschedulable and kube's
    message, a FailedScheduling Event; the Pod is not re-queued by itself, but a node
    whose allocatable changes puts it back in the queue (a heartbeat alone does not)."""
    await cluster.add_node("n0", memory="1Gi")
    await cluster.client.create("pods", _pod("big", memory="4Gi"))
    async with scheduler(cluster) as (sched, client, recorder):
        assert await sched.queue.get() == "default/big"  # queued by the informer
        await sched.schedule_one("default/big")
        assert client.writes() == [("PATCH", f"{PODS}/big/status")]
        (patch,) = client.bodies("PATCH", "/big/status")
        (cond,) = patch["status"]["conditions"]
        assert (cond["type"], cond["status"], cond["reason"]) == \
            ("PodScheduled", "False", "Unschedulable")
        assert cond["message"] == "0/1 nodes are available: 1 Insufficient memory."
        assert len(sched.queue) == 0
        await cluster.heartbeat("n0")
        sched.nodes.store.replace([await cluster.client.get("nodes", "n0")])
        sched._node_changed(await cluster.client.get("nodes", "n0"))
        assert len(sched.queue) == 0  # a heartbeat changes nothing that matters
        node = await cluster.client.get("nodes", "n0")
        node["status"]["allocatable"]["memory"] = "8Gi"
        sched._node_changed(node)
        assert len(sched.queue) == 1
        await recorder.flush()
    (event,) = await cluster.events("FailedScheduling")
    assert event["type"] == "Warning"
    assert event["message"] == "0/1 nodes are available: 1 Insufficient memory."


async def test_bind_conflict_forgets_the_assumption_and_retries_later(
        cluster: Cluster) -> None:
    """The Pod was bound by someone else after the cache was filled: the binding POST
    gets 409, the assumption is dropped (the node is not charged twice) and the key is
    re-queued with back-off."""
    await cluster.add_node("n0")
    pod = await cluster.client.create("pods", _pod("web"))
    async with scheduler(cluster) as (sched, client, _):
        await cluster.client.bind("web", "n0", namespace="default")  # another scheduler
        await sched.schedule_one("default/web")
        assert client.writes() == [("POST", f"{PODS}/web/binding")]
        assert sched.cache.node_of(pod["metadata"]["uid"]) is None
        assert sched.stats.bind_errors == 1
        assert sched.queue.waiting() == 1
