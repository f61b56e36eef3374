"""Garbage collection by owner references: background, foreground and orphan
propagation, namespace deletion, and the start-up sweep after a crash."""

from __future__ import annotations

import asyncio

import aiohttp
from apitest import DEPLOYMENTS, PODS, Api, deployment, pod, start_server

from control.store import open_store

RS = "/apis/apps/v1/namespaces/default/replicasets"


def owned(body, owner, kind, api_version="apps/v1"):
    body["metadata"]["ownerReferences"] = [{
        "apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return body


async def make_tree(api):
    """Deployment web -> ReplicaSet web-1 -> pods web-1-a, web-1-b."""
    _, dep = await api.post(DEPLOYMENTS, deployment("web"))
    rs_body = deployment("web-1", app="web")
    rs_body["kind"] = "ReplicaSet"
    _, rs = await api.post(RS, owned(rs_body, dep, "Deployment"))
    for name in ("web-1-a", "web-1-b"):
        await api.post(PODS, owned(pod(name, labels={"app": "web"}), rs, "ReplicaSet"))
    return dep, rs


async def eventually(check, timeout=20.0):
    """Poll ``check`` (an async predicate) until true; collection is asynchronous."""
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def names(api, path):
    _, body = await api.get(path)
    return sorted(i["metadata"]["name"] for i in body["items"])


async def test_background_delete_collects_dependents(api):
    """Deleting a Deployment (default Background) deletes it now; its ReplicaSet and
    then the pods follow; an unrelated pod stays."""
    await make_tree(api)
    await api.post(PODS, pod("bystander"))
    status, _ = await api.delete(f"{DEPLOYMENTS}/web")
    assert status == 200
    assert (await api.get(f"{DEPLOYMENTS}/web"))[0] == 404

    async def collected():
        return await names(api, RS) == [] and await names(api, PODS) == ["bystander"]
    await eventually(collected)


async def test_foreground_delete_keeps_owner_until_dependents_are_gone(api):
    """Foreground: the owner is marked (202, finalizer foregroundDeletion) and is
    deleted only after its ReplicaSet and pods are."""
    await make_tree(api)
    status, marked = await api.delete(f"{DEPLOYMENTS}/web",
                                      {"propagationPolicy": "Foreground"})
    assert status == 202
    assert "foregroundDeletion" in marked["metadata"]["finalizers"]

    async def all_gone():
        owner_status, _ = await api.get(f"{DEPLOYMENTS}/web")
        pods = await names(api, PODS)
        # the owner never disappears while a dependent is still there
        assert not (owner_status == 404 and pods)
        return owner_status == 404
    await eventually(all_gone)
    assert await names(api, RS) == []


async def test_orphan_delete_keeps_dependents_and_drops_the_reference(api):
    _, _rs = await make_tree(api)
    status, _ = await api.delete(f"{RS}/web-1", propagationPolicy="Orphan")
    assert status == 200
    await asyncio.sleep(0.3)  # give a (wrong) collection the chance to happen
    _, body = await api.get(PODS)
    assert sorted(p["metadata"]["name"] for p in body["items"]) == ["web-1-a", "web-1-b"]
    assert all(not p["metadata"].get("ownerReferences") for p in body["items"])


async def test_dependent_with_a_live_second_owner_only_loses_the_reference(api):
    _, a = await api.post(PODS, pod("owner-a"))
    _, b = await api.post(PODS, pod("owner-b"))
    body = pod("shared")
    body["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Pod", "name": "owner-a", "uid": a["metadata"]["uid"]},
        {"apiVersion": "v1", "kind": "Pod", "name": "owner-b", "uid": b["metadata"]["uid"]}]
    await api.post(PODS, body)
    await api.delete(f"{PODS}/owner-a")

    async def reference_dropped():
        _, shared = await api.get(f"{PODS}/shared")
        return [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["owner-b"]
    await eventually(reference_dropped)


async def test_namespace_delete_removes_its_contents_then_itself(api):
    ns = "/api/v1/namespaces"
    await api.post(ns, {"metadata": {"name": "shop"}})
    await api.post(f"{ns}/shop/pods", pod("a"))
    await api.post(f"{ns}/shop/services", {"metadata": {"name": "s"},
                                          "spec": {"ports": [{"port": 80}]}})
    status, marked = await api.delete(f"{ns}/shop")
    assert status == 202
    assert marked["status"]["phase"] == "Terminating"
    status, _body = await api.post(f"{ns}/shop/pods", pod("late"))
    assert status in (403, 404)  # refused while terminating, or already gone

    async def gone():
        return (await api.get(f"{ns}/shop"))[0] == 404
    await eventually(gone)
    _, pods = await api.get("/api/v1/pods")
    assert [p["metadata"]["namespace"] for p in pods["items"]] == []


async def test_startup_sweep_collects_orphans_left_by_a_crash(data_dir):
    """Dependents whose owner vanished while no server ran (written straight into the
    store here, as a crash between the two deletions would leave them) are collected
    when the next server starts."""
    async with start_server(data_dir) as server, aiohttp.ClientSession() as session:
        api = Api(server, session, server.admin_token)
        await make_tree(api)
    # The "crash": the Deployment disappears while no server (and no collector) runs.
    store = await open_store(f"sqlite:///{data_dir / 'store.db'}")
    try:
        await store.delete("/registry/apps/deployments/default/web")
        assert len((await store.list("/registry/core/pods/"))[0]) == 2
    finally:
        await store.close()
    async with start_server(data_dir) as server, aiohttp.ClientSession() as session:
        api = Api(server, session, server.admin_token)

        async def collected():
            return await names(api, RS) == [] and await names(api, PODS) == []
        await eventually(collected)
