"""The three patch formats: JSON merge patch, strategic merge patch, JSON patch."""

from __future__ import annotations

import pytest
from apitest import DEPLOYMENTS, PODS, deployment, pod

from control.api.patch import PatchError, apply_patch

POD = {"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
       "spec": {"containers": [{"name": "app", "image": "v1", "env": [{"name": "A",
                                                                      "value": "1"}]},
                               {"name": "side", "image": "s1"}]}}


def test_merge_patch_merges_objects_deletes_nulls_replaces_lists():
    out = apply_patch("merge", POD, {"metadata": {"labels": {"a": None, "c": "3"}},
                                     "spec": {"containers": [{"name": "only"}]}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert out["spec"]["containers"] == [{"name": "only"}]
    assert POD["metadata"]["labels"] == {"a": "1", "b": "2"}  # input untouched


def test_strategic_merge_patch_merges_containers_by_name():
    out = apply_patch("strategic", POD, {"spec": {"containers": [
        {"name": "app", "image": "v2", "env": [{"name": "B", "value": "2"}]}]}})
    app, side = out["spec"]["containers"]
    assert app["image"] == "v2"
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert side == {"name": "side", "image": "s1"}


def test_strategic_merge_patch_directives():
    out = apply_patch("strategic", POD, {
        "$setElementOrder/containers": [{"name": "app"}],
        "metadata": {"finalizers": ["y"]},
        "spec": {"containers": [{"name": "side", "$patch": "delete"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["app"]
    assert out["metadata"]["finalizers"] == ["x", "y"]  # finalizers merge as a set
    out = apply_patch("strategic", POD, {"metadata": {"labels": {"$patch": "replace",
                                                                 "z": "9"}}})
    assert out["metadata"]["labels"] == {"z": "9"}


def test_json_patch_operations():
    out = apply_patch("json", POD, [
        {"op": "replace", "path": "/spec/containers/0/image", "value": "v3"},
        {"op": "add", "path": "/metadata/labels/c", "value": "3"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "copy", "from": "/metadata/labels/b", "path": "/metadata/labels/d"},
        {"op": "move", "from": "/metadata/labels/d", "path": "/metadata/labels/e"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "z"},
        {"op": "test", "path": "/spec/containers/1/name", "value": "side"},
    ])
    assert out["spec"]["containers"][0]["image"] == "v3"
    assert out["metadata"]["labels"] == {"b": "2", "c": "3", "e": "2"}
    assert out["metadata"]["finalizers"] == ["x", "z"]


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/metadata/name", "value": "q"}],
    [{"op": "remove", "path": "/nope"}],
    [{"op": "replace", "path": "/spec/containers/9/image", "value": "x"}],
    [{"op": "frobnicate", "path": "/a"}],
    [{"path": "/a"}],
])
def test_json_patch_that_does_not_apply_is_an_error(ops):
    with pytest.raises(PatchError):
        apply_patch("json", POD, ops)


async def test_patch_content_types_through_the_server(api):
    """Each patch type works through PATCH on a real object; a failed JSON patch test
    is a 422."""
    await api.post(PODS, pod("p"))
    status, obj = await api.patch(f"{PODS}/p", {"metadata": {"labels": {"a": "1"}}},
                                  content_type="application/strategic-merge-patch+json")
    assert status == 200
    assert obj["metadata"]["labels"] == {"a": "1"}
    status, obj = await api.patch(f"{PODS}/p", [{"op": "add", "path": "/metadata/labels/b",
                                                 "value": "2"}],
                                  content_type="application/json-patch+json")
    assert status == 200
    assert obj["metadata"]["labels"] == {"a": "1", "b": "2"}
    status, err = await api.patch(f"{PODS}/p", [{"op": "test", "path": "/metadata/name",
                                                 "value": "other"}],
                                  content_type="application/json-patch+json")
    assert status == 422
    assert "test failed" in err["message"]


async def test_patch_with_stale_resource_version_is_conflict(api):
    """A patch carrying metadata.resourceVersion is a precondition."""
    _, obj = await api.post(DEPLOYMENTS, deployment("web"))
    await api.patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 3}})
    status, err = await api.patch(f"{DEPLOYMENTS}/web", {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "spec": {"replicas": 5}})
    assert status == 409
    assert err["reason"] == "Conflict"


async def test_concurrent_patches_all_apply(api):
    """Patches without a precondition retry on a race: twenty concurrent label patches
    all land."""
    import asyncio
    await api.post(PODS, pod("busy"))
    results = await asyncio.gather(*(api.patch(f"{PODS}/busy", {"metadata": {
        "labels": {f"k{i}": "v"}}}) for i in range(20)))
    assert all(status == 200 for status, _ in results)
    _, obj = await api.get(f"{PODS}/busy")
    assert len(obj["metadata"]["labels"]) == 20
