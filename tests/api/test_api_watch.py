"""Watch: newline-delimited events, initial state, resume from a resourceVersion,
selector transitions, bookmarks, timeouts, 410 after compaction, the watcher limit."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from apitest import PODS, pod, start_server


async def read_events(api, path, *, count, timeout=20.0, **params):
    """Open a watch and collect ``count`` events (or until it ends)."""
    params.setdefault("watch", "true")
    events = []
    async with api.session.get(api.server.url + path, params=params, headers={
            "Authorization": f"Bearer {api.token}"}) as resp:
        assert resp.status == 200, await resp.text()
        async with asyncio.timeout(timeout):
            async for line in resp.content:
                events.append(json.loads(line))
                if len(events) >= count:
                    break
    return events


def summary(events):
    return [(e["type"], e["object"]["metadata"].get("name")) for e in events]


async def test_watch_without_version_starts_with_current_objects(api):
    """No resourceVersion: an ADDED per existing object, then live changes."""
    await api.post(PODS, pod("a"))
    await api.post(PODS, pod("b"))
    watcher = asyncio.create_task(read_events(api, PODS, count=4))
    await asyncio.sleep(0.3)
    await api.patch(f"{PODS}/a", {"metadata": {"labels": {"x": "1"}}})
    await api.delete(f"{PODS}/b")
    events = await watcher
    assert summary(events) == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"),
                               ("DELETED", "b")]
    assert events[2]["object"]["metadata"]["labels"] == {"x": "1"}


async def test_watch_resumes_after_resource_version(api):
    """resourceVersion=N replays exactly the changes after N, in order, with the
    resourceVersion of each write."""
    await api.post(PODS, pod("a"))
    _, listed = await api.get(PODS)
    _, b = await api.post(PODS, pod("b"))
    _, a2 = await api.patch(f"{PODS}/a", {"metadata": {"labels": {"v": "2"}}})
    events = await read_events(api, PODS, count=2,
                               resourceVersion=listed["metadata"]["resourceVersion"])
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "a")]
    assert [e["object"]["metadata"]["resourceVersion"] for e in events] == [
        b["metadata"]["resourceVersion"], a2["metadata"]["resourceVersion"]]


async def test_watch_is_scoped_to_its_namespace_and_kind(api):
    await api.post("/api/v1/namespaces", {"metadata": {"name": "other"}})
    _, listed = await api.get(PODS)
    rv = listed["metadata"]["resourceVersion"]
    await api.post("/api/v1/namespaces/other/pods", pod("elsewhere"))
    await api.post("/api/v1/namespaces/default/services",
                   {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})
    await api.post(PODS, pod("here"))
    events = await read_events(api, PODS, count=1, resourceVersion=rv)
    assert summary(events) == [("ADDED", "here")]


async def test_label_selector_turns_leaving_into_deleted_and_joining_into_added(api):
    """With a selector, a change that makes an object stop matching is a DELETED and
    one that makes it match is an ADDED, as Kubernetes sends them."""
    await api.post(PODS, pod("p", labels={"tier": "web"}))
    _, listed = await api.get(PODS)
    rv = listed["metadata"]["resourceVersion"]
    await api.patch(f"{PODS}/p", {"metadata": {"labels": {"tier": "db"}}})
    await api.patch(f"{PODS}/p", {"metadata": {"labels": {"tier": "web", "v": "2"}}})
    await api.patch(f"{PODS}/p", {"metadata": {"labels": {"v": "3"}}})
    events = await read_events(api, PODS, count=3, resourceVersion=rv,
                               labelSelector="tier=web")
    assert summary(events) == [("DELETED", "p"), ("ADDED", "p"), ("MODIFIED", "p")]


async def test_field_selector_watch_for_one_node(api):
    _, listed = await api.get(PODS)
    rv = listed["metadata"]["resourceVersion"]
    await api.post(PODS, pod("on-1", node="node-1"))
    await api.post(PODS, pod("on-2", node="node-2"))
    await api.post(PODS, pod("on-1b", node="node-1"))
    events = await read_events(api, "/api/v1/pods", count=2, resourceVersion=rv,
                               fieldSelector="spec.nodeName=node-1")
    assert summary(events) == [("ADDED", "on-1"), ("ADDED", "on-1b")]


async def test_timeout_seconds_ends_the_stream(api):
    """timeoutSeconds=1 ends an idle stream cleanly (no events, no error)."""
    events = await read_events(api, PODS, count=100, timeoutSeconds="1")
    assert events == []


async def test_bookmarks_carry_the_latest_revision(data_dir):
    """allowWatchBookmarks=true: a quiet stream gets BOOKMARK events whose
    resourceVersion resumes after the last write."""
    async with start_server(data_dir, bookmark_interval=0.2) as server, \
            aiohttp.ClientSession() as session:
        from apitest import Api
        api = Api(server, session, server.admin_token)
        _, created = await api.post(PODS, pod("a"))
        events = await read_events(api, PODS, count=2, allowWatchBookmarks="true",
                                   resourceVersion=created["metadata"]["resourceVersion"])
        assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
        assert events[0]["object"]["kind"] == "Pod"
        assert int(events[0]["object"]["metadata"]["resourceVersion"]) >= \
            int(created["metadata"]["resourceVersion"])


async def test_compacted_resource_version_is_410_gone(apiserver, api):
    """Resuming from a revision the store has compacted away answers 410 with an
    Expired Status, so the client knows to list again."""
    for i in range(3):
        await api.post(PODS, pod(f"p{i}"))
    rev = await apiserver.store.current_revision()
    await apiserver.store.compact(rev)
    headers = {"Authorization": f"Bearer {api.token}"}
    async with api.session.get(api.server.url + PODS, headers=headers,
                               params={"watch": "true", "resourceVersion": "1"}) as resp:
        body = await resp.json()
        assert resp.status == 410
        assert body["reason"] == "Expired"
        assert body["code"] == 410


async def test_resume_older_than_the_watch_cache_replays_from_the_store(data_dir):
    """With a tiny in-memory ring, a resume from an old revision is served from the
    store's history, complete and in order."""
    async with start_server(data_dir, watch_ring=2) as server, \
            aiohttp.ClientSession() as session:
        from apitest import Api
        api = Api(server, session, server.admin_token)
        _, listed = await api.get(PODS)
        for i in range(6):
            await api.post(PODS, pod(f"p{i}"))
        events = await read_events(api, PODS, count=6,
                                   resourceVersion=listed["metadata"]["resourceVersion"])
        assert summary(events) == [("ADDED", f"p{i}") for i in range(6)]


async def test_watchers_beyond_the_limit_get_429(data_dir):
    async with start_server(data_dir, max_watchers=2) as server, \
            aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        url = server.url + PODS + "?watch=true&timeoutSeconds=5"
        open_streams = [await session.get(url, headers=headers) for _ in range(2)]
        try:
            assert all(r.status == 200 for r in open_streams)
            async with session.get(url, headers=headers) as third:
                body = await third.json()
                assert third.status == 429
                assert body["reason"] == "TooManyRequests"
        finally:
            for r in open_streams:
                r.close()


async def test_disconnected_watcher_frees_its_slot(data_dir):
    """A client that closes its watch stops counting against the watcher limit."""
    async with start_server(data_dir, max_watchers=1) as server, \
            aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        url = server.url + PODS + "?watch=true"
        first = await session.get(url, headers=headers)
        assert first.status == 200
        first.close()
        for _ in range(1000):  # the server notices the disconnect asynchronously
            if not server.cache.watchers:
                break
            await asyncio.sleep(0.02)
        assert server.cache.watchers == 0
        async with session.get(url + "&timeoutSeconds=1", headers=headers) as second:
            assert second.status == 200


def test_slow_subscriber_is_cut_off_with_gone():
    """A subscriber that lets more than max_pending lines queue up is ended with a 410
    (its client re-lists) and its queue is dropped, so memory stays bounded."""
    from control.api.watchcache import Subscription

    sub = Subscription("/registry/core/pods/", 0, None, max_pending=3)
    for i in range(3):
        sub.push(b"line %d\n" % i)
    assert sub.ended is None
    sub.push(b"one too many\n")
    assert sub.gone
    assert not sub.pending
