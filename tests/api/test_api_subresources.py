"""The scale, binding and status subresources, and discovery documents."""

from __future__ import annotations

from apitest import DEPLOYMENTS, PODS, deployment, pod


async def test_scale_get_put_patch(api):
    """GET scale shows spec.replicas and the selector; PUT and PATCH set replicas on the
    Deployment (and only that)."""
    await api.post(DEPLOYMENTS, deployment("web", replicas=2))
    status, scale = await api.get(f"{DEPLOYMENTS}/web/scale")
    assert status == 200
    assert scale["kind"] == "Scale"
    assert scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 2}
    assert scale["status"] == {"replicas": 0, "selector": "app=web"}
    scale["spec"]["replicas"] = 5
    status, scale = await api.put(f"{DEPLOYMENTS}/web/scale", scale)
    assert status == 200, scale
    assert scale["spec"]["replicas"] == 5
    status, scale = await api.patch(f"{DEPLOYMENTS}/web/scale", {"spec": {"replicas": 7}},
                                    content_type="application/strategic-merge-patch+json")
    assert status == 200
    _, dep = await api.get(f"{DEPLOYMENTS}/web")
    assert dep["spec"]["replicas"] == 7
    assert dep["metadata"]["generation"] == 3


async def test_scale_with_stale_resource_version_is_conflict(api):
    await api.post(DEPLOYMENTS, deployment("web"))
    _, scale = await api.get(f"{DEPLOYMENTS}/web/scale")
    await api.patch(f"{DEPLOYMENTS}/web", {"metadata": {"labels": {"x": "y"}}})
    scale["spec"]["replicas"] = 4
    status, body = await api.put(f"{DEPLOYMENTS}/web/scale", scale)
    assert status == 409
    assert body["reason"] == "Conflict"


async def test_scale_of_replicaset_and_negative_replicas(api):
    rs = deployment("rs")
    rs["kind"] = "ReplicaSet"
    path = "/apis/apps/v1/namespaces/default/replicasets"
    assert (await api.post(path, rs))[0] == 201
    status, body = await api.put(f"{path}/rs/scale", {"spec": {"replicas": -1}})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "spec.replicas"
    assert (await api.put(f"{path}/rs/scale", {"spec": {"replicas": 0}}))[0] == 200


async def test_binding_assigns_a_node_once(api):
    """POST pods/{name}/binding sets spec.nodeName (201 Success); a second binding is a
    409 and the pod stays on the first node; nodeName cannot be set by a plain update."""
    _, p = await api.post(PODS, pod("p"))
    moved = dict(p, spec=dict(p["spec"], nodeName="node-9"))
    status, err = await api.put(f"{PODS}/p", moved)
    assert status == 422
    assert err["details"]["causes"][0]["field"] == "spec"
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    status, body = await api.post(f"{PODS}/p/binding", binding)
    assert status == 201
    assert body["status"] == "Success"
    _, bound = await api.get(f"{PODS}/p")
    assert bound["spec"]["nodeName"] == "node-1"
    status, body = await api.post(f"{PODS}/p/binding",
                                  dict(binding, target={"kind": "Node", "name": "node-2"}))
    assert status == 409
    assert "already assigned" in body["message"]
    _, still = await api.get(f"{PODS}/p")
    assert still["spec"]["nodeName"] == "node-1"


async def test_binding_validates_its_target(api):
    await api.post(PODS, pod("p"))
    status, body = await api.post(f"{PODS}/p/binding", {"target": {"kind": "Pod",
                                                                   "name": "x"}})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "target.kind"


async def test_pod_status_subresource_validates_phase(api):
    await api.post(PODS, pod("p"))
    status, body = await api.patch(f"{PODS}/p/status", {"status": {"phase": "Exploded"}})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "status.phase"
    status, body = await api.patch(f"{PODS}/p/status", {"status": {
        "phase": "Running", "podIP": "10.1.0.4",
        "conditions": [{"type": "Ready", "status": "True"}]}})
    assert status == 200
    assert body["status"]["conditions"] == [{"type": "Ready", "status": "True"}]


async def test_unknown_subresource_is_404(api):
    await api.post(PODS, pod("p"))
    assert (await api.get(f"{PODS}/p/scale"))[0] == 404
    assert (await api.get(f"{PODS}/p/exec"))[0] == 404


async def test_discovery_documents(api):
    _, versions = await api.get("/api")
    assert versions["versions"] == ["v1"]
    _, groups = await api.get("/apis")
    names = {g["name"]: g["preferredVersion"]["groupVersion"] for g in groups["groups"]}
    assert names == {"apps": "apps/v1", "autoscaling": "autoscaling/v2",
                     "mesh.io": "mesh.io/v1alpha1"}
    _, core = await api.get("/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"]
    assert by_name["pods"]["namespaced"] is True
    assert by_name["nodes"]["namespaced"] is False
    assert by_name["pods/binding"]["verbs"] == ["create"]
    assert "watch" in by_name["services"]["verbs"]
    _, apps = await api.get("/apis/apps/v1")
    scale = {r["name"]: r for r in apps["resources"]}["deployments/scale"]
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    status, version = await api.get("/version")
    assert status == 200
    assert version["major"] == "1"
