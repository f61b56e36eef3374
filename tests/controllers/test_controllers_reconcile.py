"""Controllers in the sample-controller style: seed the store through the real API
server, fill the controller's informers once and freeze them, call ``reconcile(key)``
once, and assert the exact writes it sent (``RecordingClient`` notes them on their way
to the server). Events are checked apart: they are written asynchronously."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from controller_kit import Cluster, RecordingClient, deployment, pod_template

from control.client.factory import InformerFactory
from control.controllers.deployment import REVISION, DeploymentController
from control.controllers.endpoints import compute_subsets
from control.controllers.endpoints_controller import EndpointsController
from control.controllers.events import EventRecorder
from control.controllers.replicaset import ReplicaSetController

RS_PATH = "/apis/apps/v1/namespaces/default/replicasets"
PODS_PATH = "/api/v1/namespaces/default/pods"


@asynccontextmanager
async def frozen(cluster: Cluster, build: Any) -> AsyncIterator[tuple[Any, RecordingClient,
                                                                       EventRecorder]]:
    """``build(client, factory, recorder)`` -> controller, with its informers synced
    once and then stopped, so reconcile sees exactly the seeded state."""
    client = RecordingClient(cluster.client_config())
    factory = InformerFactory(client)
    recorder = EventRecorder(client, "test-controller")
    controller = build(client, factory, recorder)
    factory.start()
    await factory.wait_synced(timeout=30)
    await factory.stop()
    recorder.start()
    try:
        yield controller, client, recorder
    finally:
        await recorder.stop()
        await client.close()


def _rs(name: str, replicas: int, labels: dict[str, str], **kw: Any) -> dict:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": "default", **kw},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": pod_template(labels)}}


def _owned_pod(name: str, owner: dict, *, node: str | None = None) -> dict:
    md = owner["metadata"]
    spec = dict(owner["spec"]["template"]["spec"])
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": owner["spec"]["template"]["metadata"]["labels"],
                         "ownerReferences": [{"apiVersion": owner["apiVersion"],
                                              "kind": owner["kind"], "name": md["name"],
                                              "uid": md["uid"], "controller": True}]},
            "spec": spec}


async def test_replicaset_creates_exactly_the_missing_pods(cluster: Cluster) -> None:
    """replicas=3 with one Pod: two POSTs of Pods from the template (owner reference,
    labels, generateName), then one status write; a second reconcile on the same stale
    cache creates no Pod (expectations: the two are not observed yet) and only repeats
    the status write (the frozen cache does not show the first one)."""
    rs = await cluster.client.create("replicasets", _rs("web-1", 3, {"app": "web"}))
    await cluster.client.create("pods", _owned_pod("web-1-a", rs))
    async with frozen(cluster, ReplicaSetController) as (ctl, client, recorder):
        await ctl.reconcile("default/web-1")
        assert client.writes() == [("POST", PODS_PATH), ("POST", PODS_PATH),
                                   ("PATCH", f"{RS_PATH}/web-1/status")]
        for body in client.bodies("POST", PODS_PATH):
            assert body["metadata"]["generateName"] == "web-1-"
            assert body["metadata"]["labels"] == {"app": "web"}
            ref = body["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref["uid"], ref["controller"]) == \
                ("ReplicaSet", rs["metadata"]["uid"], True)
        (status,) = client.bodies("PATCH", "/web-1/status")
        assert status["status"]["replicas"] == 1  # what the (frozen) cache shows
        client.actions.clear()
        await ctl.reconcile("default/web-1")
        assert client.writes() == [("PATCH", f"{RS_PATH}/web-1/status")]
        await recorder.flush()
    events = await cluster.events("SuccessfulCreate")
    assert len(events) == 1
    assert events[0]["message"].startswith("Created pod: web-1-")


async def test_replicaset_scale_down_deletes_unscheduled_then_not_ready(
        cluster: Cluster) -> None:
    """replicas=1 with an unscheduled Pod, a bound not-ready Pod and a ready one: the
    two DELETEs hit the unscheduled and the not-ready Pod, in that order."""
    rs = await cluster.client.create("replicasets", _rs("web-1", 1, {"app": "web"}))
    await cluster.client.create("pods", _owned_pod("pending", rs))
    await cluster.client.create("pods", _owned_pod("starting", rs, node="n0"))
    await cluster.client.create("pods", _owned_pod("serving", rs, node="n0"))
    await cluster.set_pod_ready("serving")
    async with frozen(cluster, ReplicaSetController) as (ctl, client, _):
        await ctl.reconcile("default/web-1")
        deletes = [u for m, u in client.writes() if m == "DELETE"]
        assert deletes == [f"{PODS_PATH}/pending", f"{PODS_PATH}/starting"]


async def test_replicaset_replaces_a_terminating_pod_at_once_and_leaves_it_alone(
        cluster: Cluster) -> None:
    """replicas=2 with two ready bound Pods, one of them Terminating (graceful delete,
    its agent still stopping it): one POST of a replacement, no DELETE of the
    Terminating Pod, and status counts only the active Pod."""
    rs = await cluster.client.create("replicasets", _rs("web-1", 2, {"app": "web"}))
    for name in ("web-1-a", "web-1-b"):
        await cluster.client.create("pods", _owned_pod(name, rs, node="n0"))
        await cluster.set_pod_ready(name)
    marked = await cluster.client.delete("pods", "web-1-b", namespace="default")
    assert marked["metadata"]["deletionTimestamp"]
    async with frozen(cluster, ReplicaSetController) as (ctl, client, _):
        await ctl.reconcile("default/web-1")
        assert client.writes() == [("POST", PODS_PATH),
                                   ("PATCH", f"{RS_PATH}/web-1/status")]
        (status,) = client.bodies("PATCH", "/web-1/status")
        assert (status["status"]["replicas"], status["status"]["readyReplicas"]) == (1, 1)


async def test_replicaset_scale_down_never_picks_a_terminating_pod(
        cluster: Cluster) -> None:
    """replicas=1 with three bound Pods of which one is already Terminating: exactly one
    DELETE, of an active Pod (the not-ready one), and none of the Terminating one."""
    rs = await cluster.client.create("replicasets", _rs("web-1", 1, {"app": "web"}))
    for name in ("going", "starting", "serving"):
        await cluster.client.create("pods", _owned_pod(name, rs, node="n0"))
    await cluster.set_pod_ready("serving")
    await cluster.client.delete("pods", "going", namespace="default")
    async with frozen(cluster, ReplicaSetController) as (ctl, client, _):
        await ctl.reconcile("default/web-1")
        deletes = [u for m, u in client.writes() if m == "DELETE"]
        assert deletes == [f"{PODS_PATH}/starting"]


async def test_endpoints_drop_a_terminating_pod_at_once(cluster: Cluster) -> None:
    """A ready Pod marked for deletion leaves its Service's Endpoints with the very next
    reconcile, while its agent is still stopping it (Kubernetes' Endpoints leave
    Terminating Pods out; meshproxy routes only to ready addresses)."""
    await cluster.client.create("services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    for name in ("web-a", "web-b"):
        body = {"metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n0", **pod_template({"app": "web"})["spec"]}}
        body["spec"]["containers"][0]["ports"] = [{"containerPort": 8080}]
        await cluster.client.create("pods", body)
        await cluster.set_pod_ready(name)
    await cluster.client.delete("pods", "web-b", namespace="default")
    async with frozen(cluster, lambda c, f, _r: EndpointsController(c, f)) as (ctl, client, _):
        await ctl.reconcile("default/web")
        (created,) = client.bodies("POST", "/endpoints")
        [subset] = created["subsets"]
        assert [a["targetRef"]["name"] for a in subset["addresses"]] == ["web-a"]
        assert "notReadyAddresses" not in subset


async def test_deployment_without_replicaset_creates_revision_one(cluster: Cluster) -> None:
    """A new Deployment: one ReplicaSet POST (full replicas, revision 1, hash label in
    selector and template), the revision annotation on the Deployment, its status."""
    await cluster.client.create("deployments", deployment("web", 3))
    async with frozen(cluster, DeploymentController) as (ctl, client, _):
        await ctl.reconcile("default/web")
        assert client.writes() == [
            ("POST", RS_PATH),
            ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web"),
            ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/status")]
        (rs,) = client.bodies("POST", RS_PATH)
        h = rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"]
        assert rs["metadata"]["name"] == f"web-{h}"
        assert rs["spec"]["replicas"] == 3
        assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": h}
        assert rs["metadata"]["annotations"] == {REVISION: "1"}
        (annotate,) = client.bodies("PATCH", "/deployments/web")
        assert annotate == {"metadata": {"annotations": {REVISION: "1"}}}


async def test_deployment_template_change_takes_one_surge_step(cluster: Cluster) -> None:
    """4 available old Pods, maxSurge=1, maxUnavailable=1, template changed: a new
    ReplicaSet (revision 2, created at 0), the old one scaled 4 -> 3 first, the new one
    0 -> 1: never more than 5 Pods, never fewer than 3 available."""
    d = deployment("web", 4, strategy={"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": 1, "maxUnavailable": 1}})
    d = await cluster.client.create("deployments", d)
    old = _rs("web-old", 4, {"app": "web"}, annotations={REVISION: "1"},
              ownerReferences=[{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                "uid": d["metadata"]["uid"], "controller": True}])
    old["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:0"
    old = await cluster.client.create("replicasets", old)
    for i in range(4):
        await cluster.client.create("pods", _owned_pod(f"old-{i}", old, node="n0"))
        await cluster.set_pod_ready(f"old-{i}")
    async with frozen(cluster, DeploymentController) as (ctl, client, _):
        await ctl.reconcile("default/web")
        writes = client.writes()
        assert writes[0] == ("POST", RS_PATH)
        (new,) = client.bodies("POST", RS_PATH)
        new_name = new["metadata"]["name"]
        assert new["spec"]["replicas"] == 0
        assert new["metadata"]["annotations"] == {REVISION: "2"}
        assert writes[1:] == [
            ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web"),
            ("PATCH", f"{RS_PATH}/web-old"),
            ("PATCH", f"{RS_PATH}/{new_name}"),
            ("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/status")]
        assert client.bodies("PATCH", "/web-old")[0]["spec"] == {"replicas": 3}
        assert client.bodies("PATCH", f"/{new_name}")[0]["spec"] == {"replicas": 1}


async def test_endpoints_written_once_then_left_alone_when_unchanged(
        cluster: Cluster) -> None:
    """A Service with one ready and one not-ready Pod: one POST of Endpoints with exactly
    ``compute_subsets``'s answer. With those Endpoints already stored, reconcile writes
    nothing."""
    svc = await cluster.client.create("services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    for name in ("a", "b"):
        await cluster.client.create("pods", {
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n0", **pod_template({"app": "web"})["spec"]}})
    await cluster.set_pod_ready("a")
    await cluster.set_pod_ready("b", ready=False)
    async with frozen(cluster, lambda c, f, _r: EndpointsController(c, f)) as (ctl, client, _):
        await ctl.reconcile("default/web")
        assert client.writes() == [("POST", "/api/v1/namespaces/default/endpoints")]
        (body,) = client.bodies("POST", "/endpoints")
        expected = compute_subsets(svc, await cluster.pods())
        assert body["subsets"] == expected
        # Each Pod publishes its own host port, so each is a subset of its own.
        assert [[a["targetRef"]["name"] for a in s.get("addresses", [])] for s in expected] \
            in ([["a"], []], [[], ["a"]])
        assert [[a["targetRef"]["name"] for a in s.get("notReadyAddresses", [])]
                for s in expected] in ([[], ["b"]], [["b"], []])
    async with frozen(cluster, lambda c, f, _r: EndpointsController(c, f)) as (ctl, client, _):
        await ctl.reconcile("default/web")
        assert client.writes() == []
