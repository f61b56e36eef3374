"""Authentication (401) and authorization (403) on every verb, watch included, for each
role; the tokens file; the admin token generated once."""

from __future__ import annotations

import pytest
from apitest import DEPLOYMENTS, PODS, deployment, pod

from control.api.auth import ensure_admin_token, load_tokens_file

SERVICES = "/api/v1/namespaces/default/services"
SERVICE = {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}

# (method, path, body, content type) for every verb on one resource
VERBS = [
    ("GET", f"{DEPLOYMENTS}/web", None, None),  # get
    ("GET", DEPLOYMENTS, None, None),  # list
    ("GET", f"{DEPLOYMENTS}?watch=true&timeoutSeconds=1", None, None),  # watch
    ("POST", DEPLOYMENTS, deployment("other"), "application/json"),  # create
    ("PUT", f"{DEPLOYMENTS}/web", deployment("web", replicas=3), "application/json"),
    ("PATCH", f"{DEPLOYMENTS}/web", {"spec": {"replicas": 4}},
     "application/merge-patch+json"),
    ("DELETE", f"{DEPLOYMENTS}/web", None, None),  # delete
    ("DELETE", DEPLOYMENTS, None, None),  # deletecollection
    ("GET", f"{DEPLOYMENTS}/web/scale", None, None),
    ("PUT", f"{DEPLOYMENTS}/web/status", deployment("web"), "application/json"),
]
READS = {0, 1, 2, 8}


@pytest.fixture
async def seeded(api):
    await api.post(DEPLOYMENTS, deployment("web"))
    return api


@pytest.mark.parametrize("token", [None, "not-a-real-token-at-all"])
@pytest.mark.parametrize(("method", "path", "body", "ctype"), VERBS)
async def test_every_verb_without_a_valid_token_is_401(seeded, token, method, path, body,
                                                       ctype):
    status, err = await seeded.as_(token).request(method, path, body,
                                                  content_type=ctype or "application/json")
    assert status == 401
    assert err["reason"] == "Unauthorized"


@pytest.mark.parametrize("path", ["/api", "/apis", "/api/v1", "/apis/apps/v1", "/version",
                                  "/metrics"])
async def test_discovery_and_metrics_need_a_token(api, path):
    assert (await api.as_(None).get(path))[0] == 401


async def test_health_endpoints_need_no_token(api):
    for path in ("/healthz", "/livez", "/readyz"):
        assert (await api.as_(None).get(path)) == (200, "ok")


@pytest.mark.parametrize(("index", "verb"), list(enumerate(VERBS)))
async def test_viewer_reads_everything_and_writes_nothing(seeded, index, verb):
    method, path, body, ctype = verb
    status, _ = await seeded.as_("viewer").request(method, path, body,
                                                   content_type=ctype or "application/json")
    assert status == (200 if index in READS else 403)
    _, still = await seeded.get(f"{DEPLOYMENTS}/web")
    assert still["spec"]["replicas"] == 2


async def test_proxy_reads_services_endpoints_and_policies_only(api):
    await api.post(SERVICES, SERVICE)
    proxy = api.as_("proxy")
    assert (await proxy.get(SERVICES))[0] == 200
    assert (await proxy.get(f"{SERVICES}/web"))[0] == 200
    assert (await proxy.get("/api/v1/namespaces/default/endpoints"))[0] == 200
    assert (await proxy.get("/apis/mesh.io/v1alpha1/trafficpolicies"))[0] == 200
    assert (await proxy.get(SERVICES, watch="true", timeoutSeconds="1"))[0] == 200
    assert (await proxy.get(PODS))[0] == 403
    assert (await proxy.get(PODS, watch="true"))[0] == 403
    assert (await proxy.get(DEPLOYMENTS))[0] == 403
    assert (await proxy.post(SERVICES, {**SERVICE, "metadata": {"name": "x"}}))[0] == 403
    assert (await proxy.patch(f"{SERVICES}/web", {"metadata": {"labels": {"a": "b"}}}))[0] \
        == 403
    assert (await proxy.delete(f"{SERVICES}/web"))[0] == 403


async def test_node_manages_only_its_own_node(api):
    node1 = api.as_("node-1")
    status, _ = await node1.post("/api/v1/nodes", {"metadata": {"name": "node-1"}})
    assert status == 201
    assert (await node1.post("/api/v1/nodes", {"metadata": {"name": "node-2"}}))[0] == 403
    assert (await node1.get("/api/v1/nodes/node-1"))[0] == 200
    status, _ = await node1.patch("/api/v1/nodes/node-1/status", {"status": {
        "conditions": [{"type": "Ready", "status": "True"}]}})
    assert status == 200
    await api.post("/api/v1/nodes", {"metadata": {"name": "node-2"}})
    assert (await node1.get("/api/v1/nodes/node-2"))[0] == 403
    assert (await node1.delete("/api/v1/nodes/node-2"))[0] == 403
    assert (await node1.get("/api/v1/nodes"))[0] == 403
    status, body = await node1.get("/api/v1/nodes", fieldSelector="metadata.name=node-1")
    assert status == 200
    assert [n["metadata"]["name"] for n in body["items"]] == ["node-1"]
    assert (await node1.get("/api/v1/nodes", watch="true", timeoutSeconds="1",
                            fieldSelector="metadata.name=node-1"))[0] == 200
    assert (await node1.get("/api/v1/nodes", watch="true"))[0] == 403


async def test_node_sees_and_updates_only_pods_bound_to_it(api):
    await api.post(PODS, pod("mine", node="node-1"))
    await api.post(PODS, pod("theirs", node="node-2"))
    node1 = api.as_("node-1")
    assert (await node1.get(f"{PODS}/mine"))[0] == 200
    assert (await node1.get(f"{PODS}/theirs"))[0] == 403
    assert (await node1.get(PODS))[0] == 403
    status, body = await node1.get("/api/v1/pods", fieldSelector="spec.nodeName=node-1")
    assert status == 200
    assert [p["metadata"]["name"] for p in body["items"]] == ["mine"]
    assert (await node1.get("/api/v1/pods", watch="true", timeoutSeconds="1",
                            fieldSelector="spec.nodeName=node-1"))[0] == 200
    assert (await node1.get("/api/v1/pods", watch="true",
                            fieldSelector="spec.nodeName=node-2"))[0] == 403
    running = {"status": {"phase": "Running"}}
    assert (await node1.patch(f"{PODS}/mine/status", running))[0] == 200
    assert (await node1.patch(f"{PODS}/theirs/status", running))[0] == 403
    assert (await node1.patch(f"{PODS}/mine", {"metadata": {"labels": {"a": "b"}}}))[0] == 403
    assert (await node1.post(PODS, pod("new", node="node-1")))[0] == 403
    assert (await node1.delete(f"{PODS}/theirs", gracePeriodSeconds="0"))[0] == 403
    # a node finalizes the graceful deletion of its own Pods (a force delete)
    assert (await node1.delete(f"{PODS}/mine", gracePeriodSeconds="0"))[0] == 200
    assert (await node1.get(f"{PODS}/mine"))[0] == 404
    assert (await node1.get(DEPLOYMENTS))[0] == 403
    _, theirs = await api.get(f"{PODS}/theirs")
    assert theirs["status"] == {"phase": "Pending"}


async def test_node_may_create_events(api):
    event = {"metadata": {"name": "mine.1"}, "involvedObject": {"kind": "Pod", "name": "mine"},
             "reason": "Started", "message": "container started"}
    status, body = await api.as_("node-1").post("/api/v1/namespaces/default/events", event)
    assert status == 201, body
    assert body["type"] == "Normal"


async def test_metrics_for_admin_and_viewer_only(api):
    status, text = await api.get("/metrics")
    assert status == 200
    assert "apiserver_request_total" in text
    assert (await api.as_("viewer").get("/metrics"))[0] == 200
    assert (await api.as_("proxy").get("/metrics"))[0] == 403


def test_tokens_file_is_parsed_with_roles(tmp_path):
    path = tmp_path / "tokens.csv"
    path.write_text("# token,user,roles\n"
                    "aaaaaaaaaaaaaaaaaaaa,alice,viewer\n"
                    "bbbbbbbbbbbbbbbbbbbb,system:node:n1,node;viewer\n")
    users = {u.name: u.roles for u in load_tokens_file(path).values()}
    assert users == {"alice": {"viewer"}, "system:node:n1": {"node", "viewer"}}


@pytest.mark.parametrize(("line", "problem"), [
    ("short,alice,viewer", "too short"),
    ("aaaaaaaaaaaaaaaaaaaa,alice,root", "roles must be"),
    ("aaaaaaaaaaaaaaaaaaaa,alice", "expected 'token,user,roles'"),
    ("aaaaaaaaaaaaaaaaaaaa,,viewer", "user is empty"),
])
def test_bad_tokens_file_names_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "tokens.csv"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=problem) as e:
        load_tokens_file(path)
    assert ":1:" in str(e.value)


def test_admin_token_is_generated_once_and_private(data_dir):
    token, created = ensure_admin_token(data_dir)
    assert created
    assert len(token) >= 32
    assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    again, created_again = ensure_admin_token(data_dir)
    assert again == token
    assert not created_again
