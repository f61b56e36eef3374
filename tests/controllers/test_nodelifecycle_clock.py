"""The node lifecycle controller on a hand-moved clock (``ManualClock``), in the
sample-controller style: nodes and Pods seeded through the real API server, informers
filled once, then ``tick()`` at chosen instants; assertions on the exact writes.
Heartbeats are fed as the informer would deliver them (``observe_node`` with a new
``lastHeartbeatTime``); between ticks ``refresh`` re-reads the server into the caches,
standing in for the watch so that nothing depends on real time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from controller_kit import Cluster, RecordingClient, now_stamp, pod_template

from control.client import errors
from control.client.clock import ManualClock
from control.client.factory import InformerFactory
from control.controllers.events import EventRecorder
from control.controllers.nodehealth import NodeHealthConfig
from control.controllers.nodelifecycle import NodeLifecycleController

CONFIG = NodeHealthConfig(grace_period=40.0, eviction_timeout=300.0, eviction_rate=1.0)
PODS = "/api/v1/namespaces/default/pods"


@asynccontextmanager
async def controller(cluster: Cluster, clock: ManualClock, **kw: object
                     ) -> AsyncIterator[tuple[NodeLifecycleController, RecordingClient]]:
    client = RecordingClient(cluster.client_config())
    factory = InformerFactory(client)
    recorder = EventRecorder(client, "test")
    ctl = NodeLifecycleController(client, factory, recorder, config=CONFIG, clock=clock,
                                  **kw)  # type: ignore[arg-type]
    factory.start()
    await factory.wait_synced(timeout=30)
    await factory.stop()
    try:
        yield ctl, client
    finally:
        await recorder.stop(drain_timeout=0)
        await client.close()


async def refresh(cluster: Cluster, ctl: NodeLifecycleController) -> None:
    nodes, _ = await cluster.client.list_all("nodes")
    pods, _ = await cluster.client.list_all("pods")
    ctl.nodes.store.replace(nodes)
    ctl.pods.store.replace(pods)


async def beat(cluster: Cluster, ctl: NodeLifecycleController, *names: str) -> None:
    """The listed nodes post a heartbeat and the controller observes it."""
    for name in names:
        await cluster.heartbeat(name)
        ctl.observe_node(await cluster.client.get("nodes", name))


async def _seed(cluster: Cluster, nodes: list[str]) -> None:
    for n in nodes:
        await cluster.add_node(n)
        await cluster.client.create("pods", {
            "metadata": {"name": f"pod-{n}", "labels": {"app": "web"}},
            "spec": {"nodeName": n, **pod_template({"app": "web"})["spec"]}})
        await cluster.set_pod_ready(f"pod-{n}")


async def test_silent_node_goes_not_ready_then_its_pods_are_evicted(
        cluster: Cluster) -> None:
    """n0 is silent: at grace+1 s the controller writes n0's Ready=Unknown and pod-n0's
    Ready=False and nothing else; at NotReady+eviction timeout it deletes pod-n0 and
    nothing else."""
    await _seed(cluster, ["n0", "n1", "n2"])
    clock = ManualClock()
    async with controller(cluster, clock) as (ctl, client):
        assert (await ctl.tick()).mark_not_ready == []
        clock.advance(CONFIG.grace_period + 1)
        await beat(cluster, ctl, "n1", "n2")
        client.actions.clear()
        d = await ctl.tick()
        assert d.mark_not_ready == ["n0"]
        assert client.writes() == [("PATCH", "/api/v1/nodes/n0/status"),
                                   ("PATCH", f"{PODS}/pod-n0/status")]
        (node_patch,) = client.bodies("PATCH", "/nodes/n0/status")
        ready = next(c for c in node_patch["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusUnknown")
        (pod_patch,) = client.bodies("PATCH", "/pod-n0/status")
        pod_ready = next(c for c in pod_patch["status"]["conditions"] if c["type"] == "Ready")
        assert pod_ready["status"] == "False"

        await refresh(cluster, ctl)
        clock.advance(CONFIG.eviction_timeout)
        await beat(cluster, ctl, "n1", "n2")
        client.actions.clear()
        d = await ctl.tick()
        assert d.evict == ["n0"]
        assert client.writes() == [("DELETE", f"{PODS}/pod-n0")]
        # forced: no agent on n0 will finalize a graceful delete
        (options,) = client.bodies("DELETE", "/pod-n0")
        assert options["gracePeriodSeconds"] == 0
        assert await _exists(cluster, "pod-n0") is False


async def test_no_eviction_while_most_nodes_are_silent(cluster: Cluster) -> None:
    """Three of four nodes silent: all three are marked NotReady, but long after the
    eviction timeout not one Pod is deleted (partial disruption in a small cluster)."""
    await _seed(cluster, ["n0", "n1", "n2", "n3"])
    clock = ManualClock()
    async with controller(cluster, clock) as (ctl, client):
        clock.advance(CONFIG.grace_period + 1)
        await beat(cluster, ctl, "n3")
        d = await ctl.tick()
        assert d.mark_not_ready == ["n0", "n1", "n2"]
        await refresh(cluster, ctl)
        for _ in range(5):
            clock.advance(CONFIG.eviction_timeout)
            await beat(cluster, ctl, "n3")
            client.actions.clear()
            d = await ctl.tick()
            assert d.state == "PartialDisruption"
            assert d.waiting_for_eviction == ["n0", "n1", "n2"]
            assert [w for w in client.writes() if w[0] == "DELETE"] == []


async def test_pods_of_a_deleted_node_are_deleted_after_the_orphan_grace(
        cluster: Cluster) -> None:
    """A Pod bound to a node that does not exist is left alone for ``orphan_grace``
    seconds, then deleted."""
    await cluster.client.create("pods", {
        "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"nodeName": "ghost", **pod_template({"app": "web"})["spec"]}})
    clock = ManualClock()
    async with controller(cluster, clock, orphan_grace=10.0) as (ctl, client):
        await ctl.tick()
        clock.advance(9)
        await ctl.tick()
        assert client.writes() == []
        clock.advance(1)
        await ctl.tick()
        assert client.writes() == [("DELETE", f"{PODS}/stray")]
        (options,) = client.bodies("DELETE", "/stray")
        assert options["gracePeriodSeconds"] == 0
        assert await _exists(cluster, "stray") is False


async def test_orphan_grace_runs_from_the_node_delete_event(cluster: Cluster) -> None:
    """When the controller sees the Node deleted, its Pods' orphan grace starts at that
    event, not at the next pass that notices the Pods (up to a tick later), and the
    loop knows when the first of them falls due."""
    await _seed(cluster, ["n0"])
    clock = ManualClock()
    async with controller(cluster, clock, orphan_grace=10.0) as (ctl, client):
        node = await cluster.client.get("nodes", "n0")
        await cluster.client.delete("nodes", "n0")
        deleted_at = clock.now()
        ctl._node_deleted(node)              # the informer's delete event
        clock.advance(0.9)                   # the next pass comes a tick later
        await refresh(cluster, ctl)
        await ctl.tick()
        assert client.writes() == []
        assert ctl._next_orphan_due == deleted_at + 10.0
        clock.advance(9.1)                   # 10 s after the delete, 9.1 s after the pass
        await ctl.tick()
        assert client.writes() == [("DELETE", f"{PODS}/pod-n0")]
        assert ctl._next_orphan_due is None


async def test_terminating_pods_of_an_evicted_node_are_forced_out(cluster: Cluster) -> None:
    """A Pod already Terminating on a node that went silent (its graceful delete waits
    for an agent that will never answer) is force-deleted with the node's other Pods
    at eviction, instead of hanging Terminating forever."""
    await _seed(cluster, ["n0", "n1", "n2"])
    await cluster.client.delete("pods", "pod-n0")
    assert (await cluster.client.get("pods", "pod-n0"))["metadata"]["deletionTimestamp"]
    clock = ManualClock()
    async with controller(cluster, clock) as (ctl, client):
        clock.advance(CONFIG.grace_period + 1)
        await beat(cluster, ctl, "n1", "n2")
        await ctl.tick()
        await refresh(cluster, ctl)
        clock.advance(CONFIG.eviction_timeout)
        await beat(cluster, ctl, "n1", "n2")
        client.actions.clear()
        assert (await ctl.tick()).evict == ["n0"]
        assert client.writes() == [("DELETE", f"{PODS}/pod-n0")]
        assert await _exists(cluster, "pod-n0") is False


async def test_terminating_pods_of_a_deleted_node_are_forced_out(cluster: Cluster) -> None:
    """A deleted node's Pod that was already Terminating is force-deleted after the
    orphan grace like the others."""
    await cluster.client.create("pods", {
        "metadata": {"name": "stuck", "labels": {"app": "web"}},
        "spec": {"nodeName": "ghost", **pod_template({"app": "web"})["spec"]}})
    await cluster.client.delete("pods", "stuck")
    clock = ManualClock()
    async with controller(cluster, clock, orphan_grace=10.0) as (ctl, client):
        await ctl.tick()
        clock.advance(10)
        await ctl.tick()
        assert client.writes() == [("DELETE", f"{PODS}/stuck")]
        assert await _exists(cluster, "stuck") is False


async def _exists(cluster: Cluster, name: str) -> bool:
    try:
        await cluster.client.get("pods", name)
    except errors.NotFound:
        return False
    return True


async def test_own_status_writes_are_not_heartbeats(cluster: Cluster) -> None:
    """The controller's Ready=Unknown write keeps lastHeartbeatTime, so observing the
    node it wrote does not revive it; a real heartbeat (new stamp) does."""
    await _seed(cluster, ["n0"])
    clock = ManualClock()
    async with controller(cluster, clock) as (ctl, _):
        clock.advance(CONFIG.grace_period + 1)
        assert (await ctl.tick()).mark_not_ready == ["n0"]
        ctl.observe_node(await cluster.client.get("nodes", "n0"))  # our own write
        clock.advance(1)
        assert (await ctl.tick()).mark_ready == []
        node = await cluster.client.get("nodes", "n0")
        node["status"]["conditions"][0]["lastHeartbeatTime"] = now_stamp()
        ctl.observe_node(node)
        assert (await ctl.tick()).mark_ready == ["n0"]


async def test_end_of_a_mass_outage_gives_still_silent_nodes_a_new_grace_period(
        cluster: Cluster) -> None:
    """Three of four nodes silent well past the eviction timeout; then one comes back,
    which makes the state normal again. The two still silent are not evicted in that
    pass: they start a new grace period (and are evicted only after grace + timeout)."""
    await _seed(cluster, ["n0", "n1", "n2", "n3"])
    clock = ManualClock()
    async with controller(cluster, clock) as (ctl, client):
        clock.advance(CONFIG.grace_period + 1)
        await beat(cluster, ctl, "n3")
        await ctl.tick()
        clock.advance(2 * CONFIG.eviction_timeout)
        await beat(cluster, ctl, "n3")
        assert (await ctl.tick()).state == "PartialDisruption"
        await refresh(cluster, ctl)
        clock.advance(1)
        await beat(cluster, ctl, "n0", "n3")
        client.actions.clear()
        d = await ctl.tick()
        assert d.state == "Normal"
        assert d.evict == []
        assert [w for w in client.writes() if w[0] == "DELETE"] == []
        for _ in range(3):  # grace, then the eviction timeout, then eviction
            clock.advance(CONFIG.grace_period + CONFIG.eviction_timeout)
            await beat(cluster, ctl, "n0", "n3")
            await refresh(cluster, ctl)
            d = await ctl.tick()
        deleted = sorted(u for m, u in client.writes() if m == "DELETE")
        assert deleted == ["/api/v1/namespaces/default/pods/pod-n1",
                           "/api/v1/namespaces/default/pods/pod-n2"]
