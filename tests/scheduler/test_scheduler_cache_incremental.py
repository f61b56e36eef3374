"""The scheduler cache's incremental state equals a recomputation from scratch.

A generated sequence of what the informers and the scheduling loop do to the cache
(Nodes added, changed and deleted; Pods bound through the informer, assumed by the
scheduler, forgotten after a failed bind, finished or deleted; Pods bound to nodes not
known yet or deleted meanwhile) is applied one event at a time. A model keeps only the
final world: which Nodes exist and which Pod counts on which node name. A second cache
is then built from that world in one go, and both must agree on every number a
decision reads (requests, scoring requests, owners per node, host ports in use, zone,
taints, the node order) and on where each Pod is counted; and the same Pod must get the
same decision from both.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_objects import node, node_specs, pod, pod_specs
from sched_reference import totals

from control.scheduler.cache import SchedulerCache
from control.scheduler.framework import Framework
from control.scheduler.podinfo import PodInfo, pod_info

NODE_NAMES = ["n0", "n1", "n2", "n3"]
POD_NAMES = [f"p{i}" for i in range(8)]


@st.composite
def events(draw: st.DrawFn) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["node", "node", "delete-node", "bind", "assume",
                                     "assume", "forget", "finish", "delete-pod"]))
        if kind == "node":
            out.append((kind, draw(node_specs(draw(st.sampled_from(NODE_NAMES))))))
        elif kind == "delete-node":
            out.append((kind, draw(st.sampled_from(NODE_NAMES))))
        elif kind in ("bind", "assume"):
            name = draw(st.sampled_from(POD_NAMES))
            target = draw(st.sampled_from([*NODE_NAMES, "gone"]))
            spec = draw(pod_specs(name, node_name=target if kind == "bind" else None))
            out.append((kind, (spec, target)))
        else:
            out.append((kind, draw(st.sampled_from(POD_NAMES))))
    return out


def replay(evs: list[tuple[str, Any]]) -> tuple[SchedulerCache, dict, dict]:
    """Apply ``evs`` to a cache; return it with the model's nodes and counted Pods."""
    cache = SchedulerCache()
    nodes: dict[str, dict] = {}
    pods: dict[str, tuple[PodInfo, str]] = {}   # uid -> (pod, node name it counts on)
    for kind, arg in evs:
        if kind == "node":
            cache.set_node(arg)
            nodes[arg["metadata"]["name"]] = arg
        elif kind == "delete-node":
            cache.remove_node(arg)
            nodes.pop(arg, None)
        elif kind == "bind":
            obj, target = arg
            cache.set_pod(obj)
            pods[obj["metadata"]["uid"]] = (pod_info(obj), target)
        elif kind == "assume":
            obj, target = arg
            p = pod_info(obj)
            cache.assume(p, target)
            pods[p.uid] = (p, target)
        elif kind == "finish":
            uid = f"uid-{arg}"
            if uid in pods:
                p, target = pods.pop(uid)
                cache.set_pod({"metadata": {"name": arg, "namespace": "default", "uid": uid},
                               "spec": {"nodeName": target, "containers": []},
                               "status": {"phase": "Succeeded"}})
        else:  # forget after a failed bind, or the Pod's deletion: both drop it
            cache.remove_pod(f"uid-{arg}")
            pods.pop(f"uid-{arg}", None)
    return cache, nodes, pods


def from_scratch(nodes: dict, pods: dict) -> SchedulerCache:
    cache = SchedulerCache()
    for obj in nodes.values():
        cache.set_node(obj)
    for p, target in pods.values():
        cache.assume(p, target)
    return cache


def snapshot(cache: SchedulerCache) -> dict[str, Any]:
    return {
        "order": [n.name for n in cache.ordered()],
        "placed": {uid: cache.node_of(uid) for uid in (f"uid-{p}" for p in POD_NAMES)},
        "orphans": cache.orphans(),
        "nodes": {n.name: (n.requested_cpu, n.requested_memory, n.score_cpu,
                           n.score_memory, dict(n.owners),
                           {k: dict(v) for k, v in n.ports.items()}, sorted(n.pods),
                           n.zone, n.hard_taints, n.soft_taints, n.ready, n.unschedulable)
                  for n in cache.nodes.values()},
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), pod_specs("probe"))
def test_incremental_cache_equals_recomputation_after_any_event_sequence(
        evs: list[tuple[str, Any]], probe: dict) -> None:
    cache, nodes, pods = replay(evs)
    fresh = from_scratch(nodes, pods)
    assert snapshot(cache) == snapshot(fresh)
    for n in cache.nodes.values():  # and the sums are the sums of the Pods counted
        t = totals(n)
        assert (n.requested_cpu, n.requested_memory, n.score_cpu, n.score_memory) == \
            (t.cpu, t.memory, t.score_cpu, t.score_memory)
        assert dict(n.owners) == t.owners
        assert {k: dict(v) for k, v in n.ports.items()} == t.ports
    p = pod_info(probe)
    assert Framework(cache).schedule(p) == Framework(fresh).schedule(p)


def test_pods_of_a_deleted_node_count_again_when_it_returns() -> None:
    """A Node deleted and re-registered under the same name (an agent restart) gets
    back the Pods still bound to it, and they can be removed from it afterwards."""
    cache = SchedulerCache()
    cache.set_node(node("a", cpu="2"))
    cache.set_pod(pod("p", cpu="1", node_name="a"))
    cache.remove_node("a")
    assert cache.orphans() == {"uid-p": "a"}
    cache.set_node(node("a", cpu="2"))
    assert cache.nodes["a"].requested_cpu == 1000
    assert cache.node_of("uid-p") == "a"
    cache.remove_pod("uid-p")
    assert cache.nodes["a"].requested_cpu == 0
    assert cache.orphans() == {}
