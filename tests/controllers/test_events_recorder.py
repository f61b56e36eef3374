"""The Event recorder against the real API server: aggregation of repeats into one
Event with a count, separate Events for different messages, and dropping (counted) when
its queue is full instead of blocking the controller."""

from __future__ import annotations

from controller_kit import Cluster

from control.client.rest import ApiClient
from control.controllers.events import SENDERS, EventRecorder


async def test_repeats_aggregate_into_one_event_with_a_count(cluster: Cluster) -> None:
    """Three identical records make one Event with count 3 (first and last timestamps
    set); a different message is a second Event; involvedObject names the object."""
    pod = await cluster.client.create("pods", {
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "busybox:1"}]}})
    pod.setdefault("kind", "Pod")
    async with ApiClient(cluster.client_config()) as api:
        rec = EventRecorder(api, "test-component", host="h1")
        rec.start()
        for _ in range(3):
            rec.record(pod, "Warning", "FailedScheduling", "0/1 nodes are available.")
            await rec.flush()
        rec.record(pod, "Warning", "FailedScheduling", "0/2 nodes are available.")
        await rec.stop()
        assert rec.written == 4
    events = sorted(await cluster.events("FailedScheduling"), key=lambda e: e["message"])
    assert [(e["message"], e["count"]) for e in events] == [
        ("0/1 nodes are available.", 3), ("0/2 nodes are available.", 1)]
    first = events[0]
    assert first["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert first["involvedObject"]["kind"] == "Pod"
    assert first["source"] == {"component": "test-component", "host": "h1"}
    assert first["firstTimestamp"] <= first["lastTimestamp"]


async def test_full_queue_drops_and_counts_instead_of_blocking(cluster: Cluster) -> None:
    """With the sender not running and a tiny queue, ``record`` returns at once for
    every call; what does not fit is counted in ``dropped`` and never written."""
    async with ApiClient(cluster.client_config()) as api:
        rec = EventRecorder(api, "test", queue_limit=SENDERS)  # one slot per sender
        node = {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n0", "uid": "u"}}
        for i in range(50):
            rec.record(node, "Normal", "Test", f"message {i}")
        assert rec.dropped >= 50 - SENDERS
        assert rec.dropped < 50
        await rec.stop()
