"""Graceful deletion of Pods, as Kubernetes does it: a Pod bound to a node is only marked
(``deletionTimestamp`` = now + grace, ``deletionGracePeriodSeconds``) and stays until its
node's agent deletes it with ``gracePeriodSeconds=0``; unbound and finished Pods go at
once; a second delete may only shorten the grace; bad grace values change nothing;
garbage collection of bound Pods is graceful too."""

from __future__ import annotations

import asyncio
import calendar
import time

from apitest import PODS, pod
from test_api_gc import RS, eventually, names, owned
from test_api_watch import read_events, summary


def stamp_seconds(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


async def test_bound_pod_is_marked_terminating_with_the_spec_grace(api):
    """DELETE of a bound Pod answers 202 with the marked object; the grace defaults to
    spec.terminationGracePeriodSeconds (30) and the Pod is still readable."""
    await api.post(PODS, pod("web", node="node-1"))
    before = int(time.time())
    status, body = await api.delete(f"{PODS}/web")
    after = int(time.time()) + 1
    assert status == 202
    md = body["metadata"]
    assert md["deletionGracePeriodSeconds"] == 30
    assert before + 30 <= stamp_seconds(md["deletionTimestamp"]) <= after + 30
    assert "finalizers" not in md
    status, again = await api.get(f"{PODS}/web")
    assert status == 200
    assert again["metadata"]["deletionTimestamp"] == md["deletionTimestamp"]


async def test_grace_comes_from_delete_options_body_or_query(api):
    """gracePeriodSeconds in a DeleteOptions body or in the query sets the grace."""
    await api.post(PODS, pod("a", node="node-1"))
    await api.post(PODS, pod("b", node="node-1"))
    _, a = await api.delete(f"{PODS}/a", {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "gracePeriodSeconds": 7})
    _, b = await api.delete(f"{PODS}/b", gracePeriodSeconds="5")
    assert a["metadata"]["deletionGracePeriodSeconds"] == 7
    assert b["metadata"]["deletionGracePeriodSeconds"] == 5


async def test_spec_termination_grace_is_the_default(api):
    body = pod("slow", node="node-1")
    body["spec"]["terminationGracePeriodSeconds"] = 90
    await api.post(PODS, body)
    _, marked = await api.delete(f"{PODS}/slow")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 90


async def test_second_delete_may_only_shorten_the_grace(api):
    """A longer or absent grace leaves the deadline alone; a shorter one moves it
    earlier by the difference; 0 deletes the Pod."""
    await api.post(PODS, pod("web", node="node-1"))
    _, first = await api.delete(f"{PODS}/web", gracePeriodSeconds="30")
    deadline = stamp_seconds(first["metadata"]["deletionTimestamp"])
    status, longer = await api.delete(f"{PODS}/web", gracePeriodSeconds="60")
    assert status == 202
    assert longer["metadata"]["deletionGracePeriodSeconds"] == 30
    assert longer["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    status, plain = await api.delete(f"{PODS}/web")
    assert (status, plain["metadata"]["resourceVersion"]) == (
        202, first["metadata"]["resourceVersion"])
    status, shorter = await api.delete(f"{PODS}/web", gracePeriodSeconds="10")
    assert status == 202
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 10
    assert stamp_seconds(shorter["metadata"]["deletionTimestamp"]) == deadline - 20
    status, _ = await api.delete(f"{PODS}/web", gracePeriodSeconds="0")
    assert status == 200
    assert (await api.get(f"{PODS}/web"))[0] == 404


async def test_unbound_finished_and_forced_pods_go_at_once(api):
    """No agent runs an unbound Pod, a finished one has nothing to stop, and
    gracePeriodSeconds=0 is a force delete: all three are deleted by the first DELETE."""
    await api.post(PODS, pod("pending"))
    await api.post(PODS, pod("done", node="node-1"))
    await api.patch(f"{PODS}/done/status", {"status": {"phase": "Succeeded"}})
    await api.post(PODS, pod("forced", node="node-1"))
    for name, params in (("pending", {}), ("done", {}), ("forced",
                                                         {"gracePeriodSeconds": "0"})):
        status, _ = await api.delete(f"{PODS}/{name}", **params)
        assert status == 200, name
        assert (await api.get(f"{PODS}/{name}"))[0] == 404, name


async def test_bad_grace_is_refused_and_changes_nothing(api):
    """A negative or non-integer grace is a 400 naming the field; the Pod is untouched."""
    _, created = await api.post(PODS, pod("web", node="node-1"))
    for kw in ({"gracePeriodSeconds": "-1"}, {"gracePeriodSeconds": "soon"}):
        status, body = await api.delete(f"{PODS}/web", **kw)
        assert status == 400
        assert "gracePeriodSeconds" in body["message"]
    for options in ({"gracePeriodSeconds": -3}, {"gracePeriodSeconds": "5"},
                    {"gracePeriodSeconds": True}):
        status, body = await api.delete(f"{PODS}/web", options)
        assert status == 400
        assert "gracePeriodSeconds" in body["message"]
    _, now = await api.get(f"{PODS}/web")
    assert now["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert "deletionTimestamp" not in now["metadata"]


async def test_status_writes_keep_a_terminating_pod(api):
    """The agent reports status while it stops the containers: those writes must not
    delete the Pod (only its final gracePeriodSeconds=0 delete does)."""
    await api.post(PODS, pod("web", node="node-1"))
    await api.delete(f"{PODS}/web")
    node1 = api.as_("node-1")
    status, body = await node1.patch(f"{PODS}/web/status",
                                     {"status": {"phase": "Running", "conditions": [
                                         {"type": "Ready", "status": "False"}]}})
    assert status == 200
    assert body["metadata"]["deletionTimestamp"]
    assert (await api.get(f"{PODS}/web"))[0] == 200


async def test_watch_sees_modified_then_deleted(api):
    """Watchers see the mark (MODIFIED with deletionTimestamp) and then the removal."""
    _, created = await api.post(PODS, pod("web", node="node-1"))
    watcher = asyncio.create_task(read_events(
        api, PODS, count=2, resourceVersion=created["metadata"]["resourceVersion"]))
    await asyncio.sleep(0.2)
    await api.delete(f"{PODS}/web")
    await api.as_("node-1").delete(f"{PODS}/web", gracePeriodSeconds="0")
    events = await watcher
    assert summary(events) == [("MODIFIED", "web"), ("DELETED", "web")]
    assert events[0]["object"]["metadata"]["deletionGracePeriodSeconds"] == 30


async def test_finalizers_outlive_a_forced_delete(api):
    """A force delete of a Pod with a finalizer leaves it marked with grace 0; removing
    the finalizer then deletes it."""
    body = pod("held", node="node-1")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    await api.post(PODS, body)
    status, marked = await api.delete(f"{PODS}/held")
    assert (status, marked["metadata"]["deletionGracePeriodSeconds"]) == (202, 30)
    status, forced = await api.delete(f"{PODS}/held", gracePeriodSeconds="0")
    assert status == 202
    assert forced["metadata"]["deletionGracePeriodSeconds"] == 0
    assert forced["metadata"]["finalizers"] == ["example.com/hold"]
    status, _ = await api.patch(f"{PODS}/held", {"metadata": {"finalizers": None}})
    assert status == 200
    assert (await api.get(f"{PODS}/held"))[0] == 404


async def test_removing_a_finalizer_keeps_a_pod_in_its_grace(api):
    """Finalizers gone but grace not over: the Pod waits for its agent, as in
    Kubernetes."""
    body = pod("held", node="node-1")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    await api.post(PODS, body)
    await api.delete(f"{PODS}/held")
    status, _ = await api.patch(f"{PODS}/held", {"metadata": {"finalizers": None}})
    assert status == 200
    status, still = await api.get(f"{PODS}/held")
    assert status == 200
    assert still["metadata"]["deletionTimestamp"]


async def test_collected_bound_pods_terminate_gracefully(api):
    """Owner garbage collection deletes a bound dependent the way a user would: it is
    marked Terminating (its agent finishes it); an unbound one goes at once."""
    rs_body = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "app",
                                                              "image": "x:1"}]}}}}
    _, rs = await api.post(RS, rs_body)
    await api.post(PODS, owned(pod("bound", labels={"app": "web"}, node="node-1"), rs,
                               "ReplicaSet"))
    await api.post(PODS, owned(pod("unbound", labels={"app": "web"}), rs, "ReplicaSet"))
    assert (await api.delete(f"{RS}/web"))[0] == 200

    async def marked():
        _, body = await api.get(f"{PODS}/bound")
        return await names(api, PODS) == ["bound"] and \
            bool(body["metadata"].get("deletionTimestamp"))
    await eventually(marked)
    await api.as_("node-1").delete(f"{PODS}/bound", gracePeriodSeconds="0")
    assert await names(api, PODS) == []


async def test_namespace_waits_for_its_terminating_pods(api):
    """Deleting a namespace marks its bound Pods Terminating and the namespace stays
    until they are gone."""
    await api.post("/api/v1/namespaces", {"metadata": {"name": "shop"}})
    shop = "/api/v1/namespaces/shop/pods"
    await api.post(shop, pod("web", node="node-1"))
    assert (await api.delete("/api/v1/namespaces/shop"))[0] == 202

    async def pod_marked():
        _, body = await api.get(f"{shop}/web")
        return bool(body["metadata"].get("deletionTimestamp"))
    await eventually(pod_marked)
    await asyncio.sleep(0.5)  # a few collector passes: the namespace must still be there
    assert (await api.get("/api/v1/namespaces/shop"))[0] == 200
    await api.delete(f"{shop}/web", gracePeriodSeconds="0")

    async def ns_gone():
        return (await api.get("/api/v1/namespaces/shop"))[0] == 404
    await eventually(ns_gone)
