"""The scheduling loop's informer handlers keep the cache right across node loss.

The Scheduler is built offline: its informers are never started (no API server is
needed to call the handlers the informers would call), so these tests feed it the
events a Node deletion produces, in the order the watch delivers them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sched_objects import node, pod

from control.client.config import ClientConfig
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.controllers.events import EventRecorder
from control.scheduler.scheduler import Scheduler


@pytest.fixture
async def sched() -> AsyncIterator[Scheduler]:
    # Port 9 (discard): nothing here opens a connection; the client is only a carrier.
    api = ApiClient(ClientConfig(server="http://127.0.0.1:9"))
    s = Scheduler(api, InformerFactory(api), EventRecorder(api, "default-scheduler"),
                  percentage_of_nodes_to_score=100)
    yield s
    s.shutdown()
    await api.close()


async def test_pod_deleted_after_its_node_is_not_charged_to_a_node_of_that_name(
        sched: Scheduler) -> None:
    """A Node is deleted, then its Pods are (the orphan collector's order); when a Node
    of the same name registers again it starts empty."""
    sched._node_changed(node("a", cpu="2"))
    bound = pod("p", cpu="1", node_name="a")
    sched._pod_added(bound)
    assert sched.cache.nodes["a"].requested_cpu == 1000
    sched._node_deleted(node("a"))
    sched._pod_deleted(bound)
    sched._node_changed(node("a", cpu="2"))
    assert sched.cache.nodes["a"].requested_cpu == 0
    assert sched.cache.orphans() == {}


async def test_pod_still_bound_to_a_returning_node_is_charged_again(
        sched: Scheduler) -> None:
    """A Node deleted and registered again before its Pods are deleted (an agent that
    re-registers) is charged for the Pods still bound to it."""
    sched._node_changed(node("a", cpu="2"))
    sched._pod_added(pod("p", cpu="1", node_name="a"))
    sched._node_deleted(node("a"))
    sched._node_changed(node("a", cpu="2"))
    assert sched.cache.nodes["a"].requested_cpu == 1000
    assert sched.framework.percentage_of_nodes_to_score == 100
