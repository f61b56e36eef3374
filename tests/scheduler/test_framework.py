"""Scheduling decisions on a seeded cache: filters, scores, explanations, assumed binds."""

from __future__ import annotations

from collections import Counter
from typing import Any

from control.scheduler.cache import SchedulerCache
from control.scheduler.framework import Framework, Scheduled, Unschedulable
from control.scheduler.podinfo import pod_info


def node(name: str, *, cpu: str = "4", memory: str = "8Gi", ready: bool = True,
         labels: dict[str, str] | None = None, taints: list[dict[str, Any]] | None = None,
         unschedulable: bool = False, pods: int = 110) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": str(pods)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, *, cpu: str | None = "500m", memory: str | None = "256Mi",
        owner: str | None = None, node_name: str | None = None, **spec: Any) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "controller": True, "kind": "ReplicaSet",
                                    "name": owner}]
    return {"metadata": meta,
            "spec": {"containers": [{"name": "app", "resources": {"requests": requests}}],
                     **({"nodeName": node_name} if node_name else {}), **spec},
            "status": {"phase": "Pending"}}


def framework(*nodes: dict[str, Any]) -> Framework:
    cache = SchedulerCache()
    for n in nodes:
        cache.set_node(n)
    return Framework(cache)


def test_pod_that_fits_nowhere_gets_kube_style_reasons() -> None:
    fw = framework(node("a", memory="1Gi"), node("b", memory="1Gi"), node("c", ready=False))
    result = fw.schedule(pod_info(pod("big", memory="2Gi")))
    assert isinstance(result, Unschedulable)
    assert result.message == ("0/3 nodes are available: 2 Insufficient memory, "
                              "1 node(s) were not ready.")


def test_assumed_bindings_fill_a_node_before_confirmation() -> None:
    # Each node holds exactly two 1-CPU pods: five pods must spread 2/2 and leave one out.
    fw = framework(node("a", cpu="2"), node("b", cpu="2"))
    placed: Counter[str] = Counter()
    results = []
    for i in range(5):
        p = pod_info(pod(f"p{i}", cpu="1"))
        r = fw.schedule(p)
        results.append(r)
        if isinstance(r, Scheduled):
            fw.cache.assume(p, r.node)
            placed[r.node] += 1
    assert placed == {"a": 2, "b": 2}
    assert isinstance(results[-1], Unschedulable)
    assert "2 Insufficient cpu" in results[-1].message


def test_forgetting_a_failed_bind_frees_the_room() -> None:
    fw = framework(node("a", cpu="1"))
    p = pod_info(pod("p", cpu="1"))
    fw.cache.assume(p, "a")
    assert isinstance(fw.schedule(pod_info(pod("q", cpu="1"))), Unschedulable)
    fw.cache.forget(p.uid)
    assert fw.schedule(pod_info(pod("q", cpu="1"))) == Scheduled("a", fw.schedule(
        pod_info(pod("q", cpu="1"))).score)


def test_node_selector_taints_and_unschedulable_filter() -> None:
    fw = framework(
        node("gpu", labels={"accel": "gpu"}, taints=[{"key": "gpu", "value": "yes",
                                                      "effect": "NoSchedule"}]),
        node("plain"), node("cordoned", unschedulable=True))
    # Without a toleration the selector excludes 'plain' and the taint excludes 'gpu'.
    r = fw.schedule(pod_info(pod("p", nodeSelector={"accel": "gpu"})))
    assert isinstance(r, Unschedulable)
    assert r.reasons == {"node(s) didn't match Pod's node affinity/selector": 1,
                         "node(s) had untolerated taint {gpu: yes}": 1,
                         "node(s) were unschedulable": 1}
    tolerant = pod("p", nodeSelector={"accel": "gpu"},
                   tolerations=[{"key": "gpu", "operator": "Equal", "value": "yes",
                                 "effect": "NoSchedule"}])
    assert fw.schedule(pod_info(tolerant)).node == "gpu"


def test_required_node_affinity_expressions() -> None:
    fw = framework(node("a", labels={"tier": "1"}), node("b", labels={"tier": "3"}))
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "tier", "operator": "Gt", "values": ["2"]}]}]}}}
    assert fw.schedule(pod_info(pod("p", affinity=affinity))).node == "b"


def test_host_port_conflict_filters_node() -> None:
    fw = framework(node("a"), node("b"))
    with_port = {"containers": [{"name": "app", "ports": [{"containerPort": 80,
                                                           "hostPort": 8080}]}]}
    first = pod("p1") | {"spec": with_port}
    first["spec"]["nodeName"] = "a"
    fw.cache.set_pod(first)
    second = pod("p2") | {"spec": with_port}
    assert fw.schedule(pod_info(second)).node == "b"


def test_replicas_of_one_owner_spread_across_nodes_and_zones() -> None:
    nodes = [node(f"n{i}", labels={"topology.kubernetes.io/zone": f"z{i % 3}"})
             for i in range(6)]
    fw = framework(*nodes)
    zones: Counter[str] = Counter()
    per_node: Counter[str] = Counter()
    for i in range(12):
        p = pod_info(pod(f"r{i}", owner="rs-1"))
        r = fw.schedule(p)
        assert isinstance(r, Scheduled)
        fw.cache.assume(p, r.node)
        per_node[r.node] += 1
        zones[f"z{int(r.node[1:]) % 3}"] += 1
    assert set(per_node.values()) == {2}
    assert set(zones.values()) == {4}


def test_least_allocated_prefers_the_emptier_node() -> None:
    fw = framework(node("busy"), node("idle"))
    fw.cache.set_pod(pod("hog", cpu="3", memory="6Gi", node_name="busy"))
    assert fw.schedule(pod_info(pod("p"))).node == "idle"


def test_finished_and_deleted_pods_release_their_node() -> None:
    fw = framework(node("a", cpu="1"))
    done = pod("job", cpu="1", node_name="a")
    fw.cache.set_pod(done)
    assert isinstance(fw.schedule(pod_info(pod("p", cpu="1"))), Unschedulable)
    done["status"]["phase"] = "Succeeded"
    fw.cache.set_pod(done)
    assert isinstance(fw.schedule(pod_info(pod("p", cpu="1"))), Scheduled)
    fw.cache.set_pod(pod("other", cpu="1", node_name="a"))
    fw.cache.remove_pod("uid-other")
    assert isinstance(fw.schedule(pod_info(pod("p", cpu="1"))), Scheduled)


def test_pod_bound_before_its_node_is_known_is_counted_when_it_appears() -> None:
    cache = SchedulerCache()
    cache.set_pod(pod("early", cpu="1", node_name="late"))
    cache.set_node(node("late", cpu="1"))
    assert cache.nodes["late"].requested_cpu == 1000
