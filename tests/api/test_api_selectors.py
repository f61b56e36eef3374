"""Label and field selectors (parsing and matching), and lists filtered and paged by
the server with limit/continue."""

from __future__ import annotations

import pytest
from apitest import PODS, pod

from control.api.selectors import FieldSelector, LabelSelector


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("env in (prod, staging)", {"env": "staging"}, True),
    ("env in (prod,staging)", {"env": "dev"}, False),
    ("env notin (prod)", {}, True),
    ("env notin (prod)", {"env": "prod"}, False),
    ("canary", {"canary": "x"}, True),
    ("!canary", {"canary": "x"}, False),
    ("!canary", {}, True),
    ("app=web,tier in (fe),!canary", {"app": "web", "tier": "fe"}, True),
    ("app=web,tier in (fe),!canary", {"app": "web", "tier": "fe", "canary": "1"}, False),
    ("track=", {"track": ""}, True),
    ("example.com/role=edge", {"example.com/role": "edge"}, True),
    ("", {"anything": "x"}, True),
])
def test_label_selector_string_forms(text, labels, expected):
    assert LabelSelector.parse(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["app in (a", "app in ()", "=x", "a b", "app in x", "!"])
def test_malformed_label_selectors_are_refused(text):
    with pytest.raises(ValueError, match="label selector"):
        LabelSelector.parse(text)


def test_label_selector_object_form():
    sel = LabelSelector.from_object({
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]},
                             {"key": "canary", "operator": "DoesNotExist"}]})
    assert sel.matches({"app": "web", "tier": "be"})
    assert not sel.matches({"app": "web", "tier": "be", "canary": "1"})
    assert not sel.matches({"app": "web"})


def test_field_selector_supports_only_indexed_fields():
    sel = FieldSelector.parse("spec.nodeName=n1,status.phase!=Failed", "Pod")
    assert sel.matches({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    assert not sel.matches({"spec": {"nodeName": "n1"}, "status": {"phase": "Failed"}})
    assert FieldSelector.parse("spec.nodeName=", "Pod").matches({"spec": {}})
    with pytest.raises(ValueError, match="field label not supported"):
        FieldSelector.parse("spec.nodeName=n1", "Service")


async def test_list_filters_by_set_based_label_selector(api):
    await api.post(PODS, pod("a", labels={"env": "prod", "app": "web"}))
    await api.post(PODS, pod("b", labels={"env": "dev", "app": "web"}))
    await api.post(PODS, pod("c", labels={"env": "prod", "app": "db"}))
    await api.post(PODS, pod("d", labels={"env": "prod", "app": "web", "canary": "y"}))
    _, body = await api.get(PODS, labelSelector="env in (prod),app=web,!canary")
    assert [p["metadata"]["name"] for p in body["items"]] == ["a"]
    _, body = await api.get(PODS, labelSelector="env notin (prod)")
    assert [p["metadata"]["name"] for p in body["items"]] == ["b"]


async def test_list_filters_by_field_selectors(api):
    await api.post(PODS, pod("bound", node="node-1"))
    await api.post(PODS, pod("pending"))
    await api.patch(f"{PODS}/bound/status", {"status": {"phase": "Running"}})
    _, body = await api.get(PODS, fieldSelector="spec.nodeName=")
    assert [p["metadata"]["name"] for p in body["items"]] == ["pending"]
    _, body = await api.get(PODS, fieldSelector="status.phase=Running")
    assert [p["metadata"]["name"] for p in body["items"]] == ["bound"]
    _, body = await api.get("/api/v1/pods", fieldSelector="metadata.namespace=default,"
                                                          "metadata.name=pending")
    assert [p["metadata"]["name"] for p in body["items"]] == ["pending"]


async def test_limit_and_continue_page_through_everything_once(api):
    """Pages of 3 over 10 pods return each pod exactly once, in name order, all pages
    reporting the first page's resourceVersion; the last page has no continue."""
    names = [f"p{i:02d}" for i in range(10)]
    for n in names:
        await api.post(PODS, pod(n))
    seen, token, versions = [], None, set()
    for _ in range(10):
        params = {"limit": "3"} | ({"continue": token} if token else {})
        status, body = await api.get(PODS, **params)
        assert status == 200
        assert len(body["items"]) <= 3
        seen += [p["metadata"]["name"] for p in body["items"]]
        versions.add(body["metadata"]["resourceVersion"])
        token = body["metadata"].get("continue")
        if not token:
            break
    assert seen == names
    assert len(versions) == 1


async def test_limit_applies_after_label_filtering(api):
    """With a selector, each page holds `limit` matching items (not `limit` scanned)."""
    for i in range(12):
        await api.post(PODS, pod(f"p{i:02d}", labels={"even": str(i % 2 == 0).lower()}))
    _, first = await api.get(PODS, limit="4", labelSelector="even=true")
    assert [p["metadata"]["name"] for p in first["items"]] == ["p00", "p02", "p04", "p06"]
    _, second = await api.get(PODS, limit="4", labelSelector="even=true",
                              **{"continue": first["metadata"]["continue"]})
    assert [p["metadata"]["name"] for p in second["items"]] == ["p08", "p10"]
    assert "continue" not in second["metadata"]


async def test_listed_objects_equal_what_get_returns(api):
    """The list body (built from stored bytes with the resourceVersion spliced in) holds
    exactly the objects GET returns, also for objects whose fields arrived in an unusual
    order."""
    body = pod("odd-order")
    body = {"spec": body["spec"], "metadata": body["metadata"], "kind": "Pod",
            "apiVersion": "v1"}
    await api.post(PODS, body)
    await api.post(PODS, pod("plain"))
    _, listed = await api.get(PODS)
    for item in listed["items"]:
        _, got = await api.get(f"{PODS}/{item['metadata']['name']}")
        assert item == got


def test_resource_version_is_spliced_into_stored_bytes():
    import json

    from control.api.storage import encode, encoded_with_version
    from control.store import KeyValue

    obj = {"spec": {"template": {"metadata": {"name": "inner"}}}, "kind": "Deployment",
           "apiVersion": "apps/v1", "metadata": {"name": "web", "resourceVersion": "1"}}
    kv = KeyValue("/k", encode(obj), 5, 9)
    out = json.loads(encoded_with_version(kv))
    assert out["metadata"] == {"name": "web", "resourceVersion": "9"}
    assert out["spec"]["template"]["metadata"] == {"name": "inner"}
    foreign = KeyValue("/k", json.dumps({"spec": {"metadata": {}}, "metadata": {}}).encode(),
                       1, 3)
    assert json.loads(encoded_with_version(foreign))["metadata"] == {"resourceVersion": "3"}
