"""Bad requests get a clear Status (400, 404, 405, 413, 415, 422) and change nothing."""

from __future__ import annotations

import aiohttp
import pytest
from apitest import DEPLOYMENTS, PODS, deployment, pod, start_server


async def test_malformed_json_is_bad_request(api):
    status, body = await api.post(PODS, "{not json")
    assert status == 400
    assert body["reason"] == "BadRequest"
    assert "not valid JSON" in body["message"]


async def test_malformed_yaml_is_bad_request(api):
    status, body = await api.post(PODS, "a: [unclosed", content_type="application/yaml")
    assert status == 400
    assert "not valid YAML" in body["message"]


async def test_body_that_is_not_an_object_is_bad_request(api):
    status, body = await api.post(PODS, [1, 2])
    assert status == 400
    assert "must be an object" in body["message"]


async def test_unknown_content_type_is_415(api):
    status, body = await api.post(PODS, "name=x", content_type="application/x-www-form-urlencoded")
    assert status == 415
    assert body["reason"] == "UnsupportedMediaType"


async def test_patch_with_plain_json_content_type_is_415(api):
    """A PATCH must say which patch it is; application/json is not one."""
    await api.post(PODS, pod("p"))
    status, _body = await api.patch(f"{PODS}/p", {"metadata": {}}, content_type="application/json")
    assert status == 415


async def test_body_over_the_limit_is_413(data_dir):
    """A body larger than the configured limit is refused with 413 before it is parsed."""
    async with start_server(data_dir, body_limit=4096) as server, aiohttp.ClientSession() as s:
        big = pod("big")
        big["metadata"]["annotations"] = {"x": "y" * 10_000}
        async with s.post(server.url + PODS, json=big,
                          headers={"Authorization": f"Bearer {server.admin_token}"}) as r:
            body = await r.json()
            assert r.status == 413
            assert body["reason"] == "RequestEntityTooLarge"


async def test_unknown_resource_is_404(api):
    status, body = await api.get("/api/v1/namespaces/default/widgets")
    assert status == 404
    assert body["kind"] == "Status"
    assert "widgets" in body["message"]


async def test_unknown_group_version_is_404(api):
    assert (await api.get("/apis/apps/v2/namespaces/default/deployments"))[0] == 404
    assert (await api.get("/apis/nope.io/v1"))[0] == 404


async def test_wrong_kind_for_path_is_400(api):
    """A Service body posted to the pods collection is refused, naming both kinds."""
    status, body = await api.post(PODS, {"apiVersion": "v1", "kind": "Service",
                                         "metadata": {"name": "x"}})
    assert status == 400
    assert "Service" in body["message"]
    assert "Pod" in body["message"]


async def test_wrong_api_version_is_400(api):
    body = deployment("web")
    body["apiVersion"] = "extensions/v1beta1"
    status, err = await api.post(DEPLOYMENTS, body)
    assert status == 400
    assert "extensions/v1beta1" in err["message"]


async def test_namespace_mismatch_is_400(api):
    body = pod("p")
    body["metadata"]["namespace"] = "other"
    status, err = await api.post(PODS, body)
    assert status == 400
    assert "namespace" in err["message"]


@pytest.mark.parametrize("name", ["Upper", "under_score", "-lead", "trail-", "a" * 254, "dot..dot"])
async def test_names_that_are_not_dns1123_are_refused(api, name):
    status, body = await api.post(PODS, pod(name))
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_service_name_must_be_a_dns_label(api):
    """Services (like Namespaces) need a DNS-1123 label: no dots."""
    status, body = await api.post("/api/v1/namespaces/default/services", {
        "metadata": {"name": "a.b"}, "spec": {"ports": [{"port": 80}]}})
    assert status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_validation_names_every_bad_field(api):
    """All problems of one object come back at once, each naming its field."""
    body = deployment("web", replicas=-1)
    body["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    body["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": 70000}]
    status, err = await api.post(DEPLOYMENTS, body)
    assert status == 422
    assert err["reason"] == "Invalid"
    fields = {c["field"] for c in err["details"]["causes"]}
    assert fields == {"spec.replicas", "spec.template.spec.containers[0].ports[0].containerPort"}
    assert 'Deployment.apps "web" is invalid' in err["message"]


async def test_method_not_allowed_is_405(api):
    status, body = await api.put(PODS, pod("x"))
    assert status == 405
    assert body["kind"] == "Status"


async def test_invalid_query_parameters_are_400(api):
    assert (await api.get(PODS, labelSelector="a in (b"))[0] == 400
    assert (await api.get(PODS, fieldSelector="spec.image=x"))[0] == 400
    assert (await api.get(PODS, limit="-3"))[0] == 400
    assert (await api.get(PODS, watch="true", resourceVersion="abc"))[0] == 400
    assert (await api.get(PODS, limit="5", **{"continue": "garbage!"}))[0] == 400


async def test_refused_requests_change_nothing(api, apiserver):
    """Every refused write leaves the store exactly as it was: same revision, same
    objects (the store's revision counter advances on any write)."""
    _, web = await api.post(DEPLOYMENTS, deployment("web"))
    store = apiserver.store
    before_rev = await store.current_revision()
    before, _ = await store.list("/registry/")
    stale = dict(web, spec=dict(web["spec"], replicas=9))
    stale["metadata"] = dict(web["metadata"], resourceVersion="1")
    bad_template = deployment("web")
    bad_template["spec"]["template"]["spec"]["containers"] = []
    refusals = [
        await api.post(DEPLOYMENTS, deployment("web")),  # exists
        await api.post(DEPLOYMENTS, deployment("Bad")),  # name
        await api.post(DEPLOYMENTS, "{"),  # JSON
        await api.put(f"{DEPLOYMENTS}/web", stale),  # stale rv
        await api.put(f"{DEPLOYMENTS}/web", bad_template),  # invalid update
        await api.patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": "many"}}),
        await api.patch(f"{DEPLOYMENTS}/web", {"spec": {"selector": {"matchLabels": {"a": "b"}}}}),
        await api.patch(f"{DEPLOYMENTS}/web", [{"op": "test", "path": "/spec/replicas",
                                                "value": 99}],
                        content_type="application/json-patch+json"),
        await api.as_("viewer").delete(f"{DEPLOYMENTS}/web"),
        await api.as_(None).delete(f"{DEPLOYMENTS}/web"),
        await api.put(f"{DEPLOYMENTS}/web/scale", {"spec": {"replicas": -2}}),
        await api.post("/api/v1/namespaces/default/pods/nope/binding",
                       {"target": {"kind": "Node", "name": "n"}}),
    ]
    assert all(status >= 400 for status, _ in refusals), [s for s, _ in refusals]
    assert await store.current_revision() == before_rev
    after, _ = await store.list("/registry/")
    assert after == before


async def test_paths_outside_the_api_are_404_status(api):
    status, body = await api.get("/nothing/here")
    assert status == 404
    assert body["kind"] == "Status"


async def test_namespaced_object_without_namespace_is_404(api):
    status, body = await api.get("/api/v1/pods/web")
    assert status == 404
    assert "namespaced" in body["message"]
