"""CRUD through a real server on a real SQLite file: create, get, list, update with
compare-and-swap, status separation, generation, delete, and the error bodies."""

from __future__ import annotations

import asyncio

import yaml
from apitest import DEPLOYMENTS, PODS, deployment, pod


async def test_create_fills_server_owned_metadata_and_defaults(api):
    """A created object gets uid, creationTimestamp, generation 1, a resourceVersion,
    its namespace from the path, spec defaults and the kind's initial status."""
    status, obj = await api.post(PODS, pod("web-1"))
    assert status == 201, obj
    md = obj["metadata"]
    assert md["namespace"] == "default"
    assert md["generation"] == 1
    assert int(md["resourceVersion"]) > 0
    assert len(md["uid"]) == 36
    assert md["creationTimestamp"].endswith("Z")
    assert obj["spec"]["restartPolicy"] == "Always"
    assert obj["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert obj["status"] == {"phase": "Pending"}
    status, got = await api.get(f"{PODS}/web-1")
    assert status == 200
    assert got == obj


async def test_client_cannot_set_server_owned_fields_on_create(api):
    """uid, generation and creationTimestamp sent by a client are replaced, and status
    sent with a new Deployment is dropped (status is written through /status)."""
    body = deployment("web")
    body["metadata"].update(uid="forged", generation=42, creationTimestamp="1999-01-01T00:00:00Z")
    body["status"] = {"replicas": 99}
    status, obj = await api.post(DEPLOYMENTS, body)
    assert status == 201, obj
    assert obj["metadata"]["uid"] != "forged"
    assert obj["metadata"]["generation"] == 1
    assert not obj["metadata"]["creationTimestamp"].startswith("1999")
    assert obj["status"] == {}


async def test_create_twice_is_already_exists(api):
    """A second create of the same name is a 409 AlreadyExists Status."""
    assert (await api.post(PODS, pod("dup")))[0] == 201
    status, body = await api.post(PODS, pod("dup"))
    assert status == 409
    assert body["kind"] == "Status"
    assert body["reason"] == "AlreadyExists"
    assert body["details"] == {"kind": "pods", "name": "dup"}


async def test_generate_name_creates_unique_names(api):
    """metadata.generateName without a name gets a random 5-character suffix."""
    body = pod("")
    body["metadata"] = {"generateName": "web-"}
    names = set()
    for _ in range(3):
        status, obj = await api.post(PODS, body)
        assert status == 201, obj
        names.add(obj["metadata"]["name"])
    assert len(names) == 3
    assert all(n.startswith("web-") and len(n) == 9 for n in names)


async def test_get_missing_object_is_not_found_status(api):
    """A missing object is a 404 with a NotFound Status naming it."""
    status, body = await api.get(f"{PODS}/nope")
    assert status == 404
    assert body["reason"] == "NotFound"
    assert body["message"] == 'pods "nope" not found'


async def test_update_with_stale_resource_version_is_conflict(api):
    """PUT is compare-and-swap on metadata.resourceVersion: the first writer wins, the
    second gets 409 Conflict and the stored object keeps the first write."""
    _, created = await api.post(DEPLOYMENTS, deployment("web", replicas=1))
    first = dict(created, spec=dict(created["spec"], replicas=2))
    second = dict(created, spec=dict(created["spec"], replicas=5))
    status, updated = await api.put(f"{DEPLOYMENTS}/web", first)
    assert status == 200, updated
    status, body = await api.put(f"{DEPLOYMENTS}/web", second)
    assert status == 409
    assert body["reason"] == "Conflict"
    _, now = await api.get(f"{DEPLOYMENTS}/web")
    assert now["spec"]["replicas"] == 2
    assert now["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]


async def test_update_without_resource_version_is_unconditional(api):
    """A PUT without resourceVersion replaces whatever is stored."""
    _, created = await api.post(DEPLOYMENTS, deployment("web", replicas=1))
    body = dict(created, spec=dict(created["spec"], replicas=3))
    body["metadata"] = {k: v for k, v in created["metadata"].items() if k != "resourceVersion"}
    status, updated = await api.put(f"{DEPLOYMENTS}/web", body)
    assert status == 200, updated
    assert updated["spec"]["replicas"] == 3


async def test_generation_bumps_on_spec_change_only(api):
    """Changing labels leaves generation alone; changing the spec bumps it by one; a
    status write never does."""
    _, obj = await api.post(DEPLOYMENTS, deployment("web"))
    _, obj = await api.patch(f"{DEPLOYMENTS}/web", {"metadata": {"labels": {"team": "a"}}})
    assert obj["metadata"]["generation"] == 1
    _, obj = await api.patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 4}})
    assert obj["metadata"]["generation"] == 2
    status, obj = await api.patch(f"{DEPLOYMENTS}/web/status",
                                  {"status": {"replicas": 4, "observedGeneration": 2}})
    assert status == 200, obj
    assert obj["metadata"]["generation"] == 2


async def test_status_write_cannot_change_spec_and_spec_write_cannot_change_status(api):
    """PUT /status keeps the spec as stored; PUT on the object keeps the status."""
    _, obj = await api.post(DEPLOYMENTS, deployment("web", replicas=1))
    sneaky = dict(obj, spec=dict(obj["spec"], replicas=7), status={"replicas": 1})
    status, after = await api.put(f"{DEPLOYMENTS}/web/status", sneaky)
    assert status == 200, after
    assert after["spec"]["replicas"] == 1
    assert after["status"] == {"replicas": 1}
    sneaky = dict(after, spec=dict(after["spec"], replicas=2), status={"replicas": 50})
    status, after = await api.put(f"{DEPLOYMENTS}/web", sneaky)
    assert status == 200, after
    assert after["spec"]["replicas"] == 2
    assert after["status"] == {"replicas": 1}


async def test_noop_update_does_not_write(api):
    """An update that changes nothing keeps the resourceVersion (nothing is written)."""
    _, obj = await api.post(PODS, pod("same"))
    status, again = await api.put(f"{PODS}/same", obj)
    assert status == 200
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


async def test_yaml_body_is_accepted(api):
    """A create body in YAML (application/yaml) works like JSON."""
    status, obj = await api.post(PODS, yaml.safe_dump(pod("from-yaml")),
                                 content_type="application/yaml")
    assert status == 201, obj
    assert obj["metadata"]["name"] == "from-yaml"


async def test_delete_returns_object_and_removes_it(api):
    """DELETE answers 200 with the deleted object; a second DELETE is 404."""
    await api.post(PODS, pod("gone"))
    status, body = await api.delete(f"{PODS}/gone")
    assert status == 200
    assert body["metadata"]["name"] == "gone"
    assert (await api.get(f"{PODS}/gone"))[0] == 404
    assert (await api.delete(f"{PODS}/gone"))[0] == 404


async def test_delete_with_stale_precondition_is_conflict(api):
    """DeleteOptions.preconditions.resourceVersion that is stale refuses the delete."""
    _, obj = await api.post(PODS, pod("keep"))
    await api.patch(f"{PODS}/keep", {"metadata": {"labels": {"v": "2"}}})
    status, body = await api.delete(f"{PODS}/keep", {
        "kind": "DeleteOptions", "apiVersion": "v1",
        "preconditions": {"resourceVersion": obj["metadata"]["resourceVersion"]}})
    assert status == 409, body
    assert (await api.get(f"{PODS}/keep"))[0] == 200


async def test_finalizer_holds_deletion_until_removed(api):
    """An object with a finalizer is only marked (deletionTimestamp, 202) on delete and
    disappears when its last finalizer is removed."""
    body = pod("held")
    body["metadata"]["finalizers"] = ["example.com/cleanup"]
    await api.post(PODS, body)
    status, marked = await api.delete(f"{PODS}/held")
    assert status == 202
    assert marked["metadata"]["deletionTimestamp"]
    status, still = await api.get(f"{PODS}/held")
    assert status == 200
    assert still["metadata"]["deletionTimestamp"]
    status, _ = await api.patch(f"{PODS}/held", {"metadata": {"finalizers": None}})
    assert status == 200
    assert (await api.get(f"{PODS}/held"))[0] == 404


async def test_cluster_scoped_nodes_and_namespaces(api):
    """Nodes live at /api/v1/nodes; a new namespace accepts objects; a namespace that
    does not exist refuses them with 404."""
    status, node = await api.post("/api/v1/nodes", {"metadata": {"name": "node-a"},
                                                   "status": {"capacity": {"cpu": "4"}}})
    assert status == 201, node
    assert node["status"]["capacity"] == {"cpu": "4"}
    assert "namespace" not in node["metadata"]
    assert (await api.post("/api/v1/namespaces", {"metadata": {"name": "shop"}}))[0] == 201
    assert (await api.post("/api/v1/namespaces/shop/pods", pod("p")))[0] == 201
    status, body = await api.post("/api/v1/namespaces/nowhere/pods", pod("p"))
    assert status == 404
    assert "nowhere" in body["message"]


async def test_list_all_namespaces(api):
    """GET /api/v1/pods lists pods of every namespace."""
    await api.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    await api.post(PODS, pod("a"))
    await api.post("/api/v1/namespaces/other/pods", pod("b"))
    status, body = await api.get("/api/v1/pods")
    assert status == 200
    assert body["kind"] == "PodList"
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in body["items"]} == {
        ("default", "a"), ("other", "b")}


async def test_traffic_policy_in_mesh_group(api):
    """TrafficPolicy is served at /apis/mesh.io/v1alpha1 and requires spec.service."""
    path = "/apis/mesh.io/v1alpha1/namespaces/default/trafficpolicies"
    body = {"apiVersion": "mesh.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "catalog"},
            "spec": {"service": "catalog", "cluster": {"lb_policy": "least_request"}}}
    status, obj = await api.post(path, body)
    assert status == 201, obj
    status, err = await api.post(path, {**body, "metadata": {"name": "x"}, "spec": {}})
    assert status == 422
    assert [c["field"] for c in err["details"]["causes"]] == ["spec.service"]


async def test_deletecollection_deletes_only_matching_objects(api):
    """DELETE on a collection with a label selector deletes the matching objects and
    answers with the list of what it deleted."""
    await api.post(PODS, pod("a", labels={"batch": "1"}))
    await api.post(PODS, pod("b", labels={"batch": "1"}))
    await api.post(PODS, pod("c", labels={"batch": "2"}))
    status, body = await api.delete(PODS, labelSelector="batch=1")
    assert status == 200
    assert body["kind"] == "PodList"
    assert sorted(p["metadata"]["name"] for p in body["items"]) == ["a", "b"]
    _, left = await api.get(PODS)
    assert [p["metadata"]["name"] for p in left["items"]] == ["c"]


async def test_readyz_follows_the_watch_cache(apiserver, api):
    """/readyz answers 200 while the store watch runs and 503 once it has stopped."""
    assert await api.as_(None).get("/readyz") == (200, "ok")
    apiserver.cache._task.cancel()
    for _ in range(100):
        if not apiserver.cache.healthy:
            break
        await asyncio.sleep(0.01)
    status, _ = await api.as_(None).get("/readyz")
    assert status == 503
