"""The scheduler end to end: informers, decisions, bindings, conditions and Events
through the real API server on SQLite. The test plays the nodes (Node objects only)."""

from __future__ import annotations

import asyncio

import pytest
from controller_kit import Cluster, deployment, fast_config, running, wait_for


async def _bound(cluster: Cluster, n: int, selector: str | None = None) -> list[dict]:
    async def check() -> list[dict]:
        pods = await cluster.pods(selector)
        return pods if len(pods) == n and all(p["spec"].get("nodeName") for p in pods) else []
    return await wait_for(check, what=f"{n} bound pods")


async def test_deployment_pods_are_bound_and_spread_over_nodes(cluster: Cluster) -> None:
    """Six replicas on three equal nodes: all bound, two per node (owner spread), and
    each gets one Scheduled Event."""
    for i in range(3):
        await cluster.add_node(f"n{i}")
    async with running(cluster, fast_config()):
        await cluster.client.create("deployments", deployment("web", 6))
        pods = await _bound(cluster, 6)
        per_node: dict[str, int] = {}
        for p in pods:
            per_node[p["spec"]["nodeName"]] = per_node.get(p["spec"]["nodeName"], 0) + 1
        assert per_node == {"n0": 2, "n1": 2, "n2": 2}
        events = await wait_for(lambda: _events(cluster, "Scheduled", 6), what="6 events")
        assert sorted(e["involvedObject"]["name"] for e in events) == \
            sorted(p["metadata"]["name"] for p in pods)


async def _events(cluster: Cluster, reason: str, n: int) -> list[dict]:
    evs = await cluster.events(reason)
    return evs if len(evs) >= n else []


def _pod(name: str, *, cpu: str = "100m", memory: str = "64Mi", **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "busybox:1",
                                     "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
                     **spec}}


async def _node_of(cluster: Cluster, name: str) -> str:
    async def check() -> str:
        pod = await cluster.client.get("pods", name, namespace="default")
        return pod["spec"].get("nodeName") or ""
    return await wait_for(check, what=f"pod {name} bound")


async def test_filters_place_each_pod_on_the_only_node_that_fits(cluster: Cluster) -> None:
    """Each pod has exactly one feasible node: a nodeSelector, a toleration of a taint,
    a memory request only the big node has, and a host port already taken elsewhere;
    a not-ready node never gets anything."""
    await cluster.add_node("small", cpu="2", memory="1Gi", labels={"disk": "hdd"})
    await cluster.add_node("big", cpu="2", memory="16Gi", labels={"disk": "hdd"})
    await cluster.add_node("ssd", cpu="2", memory="1Gi", labels={"disk": "ssd"})
    await cluster.add_node("gpu", cpu="2", memory="1Gi",
                           taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])
    await cluster.add_node("down", cpu="64", memory="64Gi", ready=False)
    async with running(cluster, fast_config(controllers=("scheduler",))):
        api = cluster.client
        await api.create("pods", _pod("wants-ssd", nodeSelector={"disk": "ssd"}))
        await api.create("pods", _pod("tolerates-gpu", nodeSelector={"kubernetes.io/hostname":
                                                                      "gpu"},
                                      tolerations=[{"key": "gpu", "operator": "Equal",
                                                    "value": "yes", "effect": "NoSchedule"}]))
        await api.create("pods", _pod("needs-memory", memory="8Gi"))
        assert await _node_of(cluster, "wants-ssd") == "ssd"
        assert await _node_of(cluster, "tolerates-gpu") == "gpu"
        assert await _node_of(cluster, "needs-memory") == "big"
        # Host ports: the first takes 9000 on some node; a second asking for 9000 and
        # pinned to hdd nodes must go to the other hdd node.
        port_spec = {"containers": [{"name": "app", "image": "busybox:1",
                                     "ports": [{"containerPort": 80, "hostPort": 9000}]}],
                     "nodeSelector": {"disk": "hdd"}}
        await api.create("pods", {"metadata": {"name": "port-a"}, "spec": port_spec})
        first = await _node_of(cluster, "port-a")
        await api.create("pods", {"metadata": {"name": "port-b"}, "spec": port_spec})
        second = await _node_of(cluster, "port-b")
        assert {first, second} == {"small", "big"}
        for p in await cluster.pods():
            assert p["spec"]["nodeName"] != "down"


async def test_pod_that_fits_nowhere_stays_pending_with_reason_then_binds_when_a_node_fits(
        cluster: Cluster) -> None:
    """Three nodes that cannot take 6Gi (two too small, one not ready): the pod stays
    unbound with PodScheduled=False/Unschedulable and kube's message, a FailedScheduling
    Warning says the same; adding a node that fits gets it bound without any retry
    prompt from the test, and PodScheduled turns True."""
    await cluster.add_node("a", memory="2Gi")
    await cluster.add_node("b", memory="2Gi")
    await cluster.add_node("c", memory="64Gi", ready=False)
    async with running(cluster, fast_config(controllers=("scheduler",))):
        await cluster.client.create("pods", _pod("huge", memory="6Gi"))
        expected = ("0/3 nodes are available: 2 Insufficient memory, "
                    "1 node(s) were not ready.")

        async def condition() -> dict | None:
            pod = await cluster.client.get("pods", "huge", namespace="default")
            for c in pod["status"].get("conditions") or ():
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return c
            return None
        cond = await wait_for(condition, what="PodScheduled=False")
        assert cond["reason"] == "Unschedulable"
        assert cond["message"] == expected
        pod = await cluster.client.get("pods", "huge", namespace="default")
        assert not pod["spec"].get("nodeName")
        assert pod["status"]["phase"] == "Pending"
        warnings = await wait_for(lambda: _events(cluster, "FailedScheduling", 1),
                                  what="FailedScheduling event")
        assert warnings[0]["type"] == "Warning"
        assert warnings[0]["message"] == expected
        assert warnings[0]["involvedObject"]["name"] == "huge"

        await cluster.add_node("roomy", memory="16Gi")
        assert await _node_of(cluster, "huge") == "roomy"

        async def scheduled_true() -> bool:
            pod = await cluster.client.get("pods", "huge", namespace="default")
            return any(c["type"] == "PodScheduled" and c["status"] == "True"
                       for c in pod["status"].get("conditions") or ())
        await wait_for(scheduled_true, what="PodScheduled=True")


async def test_replicas_spread_across_zones_before_nodes(cluster: Cluster) -> None:
    """Zone a has three empty nodes, zone b one: two replicas land one per zone (zone
    spreading beats zone a's extra room), and four replicas use all four nodes."""
    zone = "topology.kubernetes.io/zone"
    for name in ("a1", "a2", "a3"):
        await cluster.add_node(name, labels={zone: "a"})
    await cluster.add_node("b1", labels={zone: "b"})
    async with running(cluster, fast_config(controllers=("scheduler", "replicaset",
                                                         "deployment"))):
        await cluster.client.create("deployments", deployment("web", 2))
        pods = await _bound(cluster, 2)
        assert sum(1 for p in pods if p["spec"]["nodeName"] == "b1") == 1
        await cluster.client.scale("deployments", "web", 4, namespace="default")
        pods = await _bound(cluster, 4)
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["a1", "a2", "a3", "b1"]


async def test_percentage_of_nodes_to_score_reaches_the_scheduler(cluster: Cluster) -> None:
    """With 150 nodes the adaptive default stops looking after 100 feasible ones;
    ``percentage_of_nodes_to_score=100`` (``--percentage-of-nodes-to-score 100``) set
    on the manager makes its scheduler examine every node."""
    await asyncio.gather(*(cluster.add_node(f"n{i:03d}") for i in range(150)))
    async with running(cluster, fast_config(percentage_of_nodes_to_score=100)) as manager:
        assert manager.scheduler is not None
        await cluster.client.create("pods", _pod("one"))
        await _bound(cluster, 1)
        stats = manager.scheduler.framework.stats
        assert stats.decisions == 1
        assert stats.nodes_examined == 150
        assert stats.searches_cut_short == 0


def test_manager_flags_set_the_percentage_and_refuse_a_bad_one() -> None:
    """``meshctl controller-manager --percentage-of-nodes-to-score`` becomes the
    manager's setting; a value outside 0..100 is refused naming the setting."""
    from control.cli.main import build_parser
    from control.controllers.main import _manager_config

    args = build_parser().parse_args(
        ["controller-manager", "--percentage-of-nodes-to-score", "30"])
    assert _manager_config(args).percentage_of_nodes_to_score == 30
    default = build_parser().parse_args(["controller-manager"])
    assert _manager_config(default).percentage_of_nodes_to_score is None
    bad = build_parser().parse_args(
        ["controller-manager", "--percentage-of-nodes-to-score", "150"])
    with pytest.raises(ValueError, match=r"percentage_of_nodes_to_score must be 0\.\.100"):
        _manager_config(bad)
