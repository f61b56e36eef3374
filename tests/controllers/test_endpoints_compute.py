"""Endpoints follow readiness, resolve named target ports through published host ports,
group Pods by ports, and are stable for an unchanged cluster."""

from __future__ import annotations

from typing import Any

from control.controllers.endpoints import compute_subsets


def svc(selector=None, ports=None) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"} if selector is None else selector,
                     "ports": ports or [{"name": "http", "port": 80, "targetPort": "http"}]}}


def pod(name: str, host_port: int, *, ready: bool = True, ip: str = "127.0.0.1",
        labels=None, ns: str = "default", phase: str = "Running", deleting: bool = False):
    meta = {"name": name, "namespace": ns, "uid": f"u-{name}",
            "labels": {"app": "web"} if labels is None else labels}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": meta,
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "portMappings": [{"containerPort": 8080, "hostPort": host_port,
                                         "protocol": "TCP"}]}}


def test_ready_and_not_ready_pods_split_and_group_by_port() -> None:
    subsets = compute_subsets(svc(), [pod("a", 31001), pod("b", 31001, ready=False),
                                      pod("c", 31002)])
    assert [s["ports"] for s in subsets] == [[{"name": "http", "port": 31001,
                                               "protocol": "TCP"}],
                                             [{"name": "http", "port": 31002,
                                               "protocol": "TCP"}]]
    assert [a["targetRef"]["name"] for a in subsets[0]["addresses"]] == ["a"]
    assert [a["targetRef"]["name"] for a in subsets[0]["notReadyAddresses"]] == ["b"]
    assert [a["targetRef"]["name"] for a in subsets[1]["addresses"]] == ["c"]


def test_unselected_foreign_terminating_and_unpublished_pods_are_left_out() -> None:
    unpublished = pod("nope", 1)
    unpublished["status"]["portMappings"] = []
    pods = [pod("other-app", 1, labels={"app": "db"}), pod("other-ns", 2, ns="prod"),
            pod("going", 3, deleting=True), pod("done", 4, phase="Succeeded"), unpublished]
    assert compute_subsets(svc(), pods) == []


def test_numeric_target_port_and_selectorless_service() -> None:
    s = svc(ports=[{"port": 80, "targetPort": 8080}])
    assert compute_subsets(s, [pod("a", 31001)])[0]["ports"][0]["port"] == 31001
    assert compute_subsets(svc(selector={}), [pod("a", 31001)]) == []


def test_output_is_stable_regardless_of_pod_order() -> None:
    pods = [pod(n, 31000 + i % 2) for i, n in enumerate("edcba")]
    assert compute_subsets(svc(), pods) == compute_subsets(svc(), list(reversed(pods)))
