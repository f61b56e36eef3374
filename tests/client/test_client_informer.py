"""Informers against the real API server: handlers fire in order; a cut watch resumes
from the last resourceVersion without relisting; a compacted revision (410) relists
and the diff neither loses nor duplicates state; reconnects back off exponentially on
a manual clock; resync calls update handlers; custom indexes follow bindings; the
factory shares informers; and a controller built from informer + work queue + workers
converges.

Watch connections are cut by stopping the in-process server; while it is "down" for the
informer, changes are made through a second server on another port over the same SQLite
store, so they are exactly the events the informer must catch up on.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable

import pytest
from client_kit import ServerHandle, client_config

from control.client import errors
from control.client.cache import index_by_owner_uid, pods_by_node
from control.client.clock import ManualClock
from control.client.factory import InformerFactory
from control.client.informer import Informer
from control.client.rest import ApiClient
from control.client.workers import run_workers
from control.client.workqueue import WorkQueue

TIMEOUT = 30.0  # generous: the machine is shared


def service(name: str, port: int = 80) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


async def until(cond: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    """Records handler calls as (event, name, resourceVersion)."""

    def __init__(self, informer: Informer) -> None:
        self.calls: list[tuple[str, str, str | None]] = []
        informer.add_handler(on_add=lambda o: self._rec("add", o),
                             on_update=lambda old, new: self._rec("update", new, old),
                             on_delete=lambda o: self._rec("delete", o))
        self.same_object_updates = 0

    def _rec(self, what: str, obj: dict, old: dict | None = None) -> None:
        if old is obj:
            self.same_object_updates += 1
        meta = obj["metadata"]
        self.calls.append((what, meta["name"], meta.get("resourceVersion")))

    def names(self) -> list[tuple[str, str]]:
        return [(w, n) for w, n, _ in self.calls]


def cached(informer: Informer) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in informer.list()}


async def server_view(api: ApiClient) -> dict[str, str]:
    items, _ = await api.list_all("services", namespace="default")
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items}


async def test_handlers_fire_in_order_for_create_update_delete(api: ApiClient) -> None:
    """Existing objects arrive as adds from the list; then each change arrives once, in
    the order it was made, and the cache mirrors the server. A handler registered
    later gets adds for the cached objects."""
    await api.create("services", service("pre"))
    async with Informer(api, "services", namespace="default") as inf:
        rec = Recorder(inf)
        await inf.wait_synced(TIMEOUT)
        await until(lambda: rec.names() == [("add", "pre")], "initial add")
        await api.create("services", service("a"))
        await api.create("services", service("b"))
        await api.patch("services", "a", {"metadata": {"labels": {"v": "2"}}})
        await api.delete("services", "b")
        await api.delete("services", "pre")
        expected = [("add", "pre"), ("add", "a"), ("add", "b"), ("update", "a"),
                    ("delete", "b"), ("delete", "pre")]
        await until(lambda: len(rec.calls) >= len(expected), "all events")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive meanwhile
        assert rec.names() == expected
        assert cached(inf) == await server_view(api)
        assert inf.get("default", "a")["metadata"]["labels"]["v"] == "2"
        assert inf.lists == 1
        late = Recorder(inf)  # a handler added after sync is told about what is cached
        assert late.names() == [("add", "a")]


async def _changes_behind_the_informers_back(handle: ServerHandle, *, compact: bool) -> None:
    """Stop the informer's server; change services through a server on another port
    (same store); optionally compact the store's history; stop that server."""
    await handle.stop()
    other = await handle.start(port=0)
    try:
        async with ApiClient(client_config(other)) as side:
            await side.delete("services", "gone")
            await side.patch("services", "changed", {"metadata": {"labels": {"v": "2"}}})
            await side.create("services", service("new"))
        if compact:
            assert other.store is not None
            await other.store.compact(await other.store.current_revision())
    finally:
        await handle.stop()


async def test_cut_watch_resumes_from_last_version_without_relisting(
        api: ApiClient, server_handle: ServerHandle) -> None:
    """When the connection breaks, the informer re-watches from the last
    resourceVersion once the server is back: the missed changes arrive as events, with
    no second list and nothing delivered twice."""
    for name in ("kept", "changed", "gone"):
        await api.create("services", service(name))
    inf = Informer(api, "services", namespace="default", backoff_base=0.05, backoff_max=0.5)
    async with inf:
        rec = Recorder(inf)
        await inf.wait_synced(TIMEOUT)
        await until(lambda: len(rec.calls) == 3, "initial adds")
        rec.calls.clear()
        await _changes_behind_the_informers_back(server_handle, compact=False)
        await server_handle.start()  # back on the informer's port
        await until(lambda: len(rec.calls) >= 3, "missed events")
        await asyncio.sleep(0.3)
        assert rec.names() == [("delete", "gone"), ("update", "changed"), ("add", "new")]
        assert inf.lists == 1, "a resumable watch must not relist"
        assert inf.watches >= 2
        assert cached(inf) == await server_view(api)


async def test_compacted_version_relists_and_diffs_without_loss_or_duplicates(
        api: ApiClient, server_handle: ServerHandle) -> None:
    """When the informer's resourceVersion has been compacted away (410 Gone), it lists
    again: the object deleted meanwhile gets on_delete, the new one on_add, the changed
    one on_update, the untouched one nothing; the cache equals the server's list."""
    for name in ("kept", "changed", "gone"):
        await api.create("services", service(name))
    inf = Informer(api, "services", namespace="default", backoff_base=0.05, backoff_max=0.5)
    async with inf:
        rec = Recorder(inf)
        await inf.wait_synced(TIMEOUT)
        await until(lambda: len(rec.calls) == 3, "initial adds")
        rec.calls.clear()
        await _changes_behind_the_informers_back(server_handle, compact=True)
        await server_handle.start()
        await until(lambda: len(rec.calls) >= 3, "relist diff")
        await asyncio.sleep(0.3)
        assert sorted(rec.names()) == [("add", "new"), ("delete", "gone"),
                                       ("update", "changed")]
        assert inf.lists == 2
        assert isinstance(inf.last_error, errors.Gone)
        assert cached(inf) == await server_view(api)
        # The informer keeps following changes after the relist.
        await api.delete("services", "kept")
        await until(lambda: ("delete", "kept") in rec.names(), "delete after relist")


async def test_resync_passes_every_cached_object_to_update_handlers(api: ApiClient) -> None:
    """On a controllable clock: nothing happens before the resync period; each period
    calls on_update(obj, obj) for every cached object (the level-triggered safety net)."""
    for name in ("a", "b"):
        await api.create("services", service(name))
    clock = ManualClock()
    async with Informer(api, "services", namespace="default", resync_period=60,
                        clock=clock) as inf:
        rec = Recorder(inf)
        await inf.wait_synced(TIMEOUT)
        await until(lambda: len(rec.calls) == 2, "initial adds")
        await until(lambda: clock.pending_timers() >= 1, "resync timer armed")
        clock.advance(59)
        await asyncio.sleep(0.05)
        assert rec.same_object_updates == 0
        clock.advance(1)
        await until(lambda: rec.same_object_updates == 2, "first resync")
        assert sorted(rec.names()[2:]) == [("update", "a"), ("update", "b")]
        await until(lambda: clock.pending_timers() >= 1, "resync timer re-armed")
        clock.advance(60)
        await until(lambda: rec.same_object_updates == 4, "second resync")


async def test_custom_index_follows_bindings(api: ApiClient) -> None:
    """A pods-by-node index sees a pod once it is bound (through the binding
    subresource) and forgets it when the pod is deleted (with gracePeriodSeconds=0: a
    bound Pod's plain delete only marks it Terminating until its node's agent is done)."""
    async with Informer(api, "pods", indexers={"node": pods_by_node}) as inf:
        await inf.wait_synced(TIMEOUT)
        await api.create("pods", pod("p1"))
        await api.create("pods", pod("p2"))
        await until(lambda: len(inf.list()) == 2, "pods cached")
        assert inf.store.index_values("node") == []
        await api.bind("p1", "node-a")
        await api.bind("p2", "node-b")
        await until(lambda: inf.store.index_values("node") == ["node-a", "node-b"], "bindings")
        assert [p["metadata"]["name"] for p in inf.store.by_index("node", "node-a")] == ["p1"]
        await api.request("DELETE", "/api/v1/namespaces/default/pods/p1",
                          body={"gracePeriodSeconds": 0})
        await until(lambda: inf.store.index_values("node") == ["node-b"], "delete seen")


async def test_controller_of_informer_queue_and_workers_converges(api: ApiClient) -> None:
    """The documented controller shape: handlers enqueue keys, workers reconcile from
    the cache. This one labels each Service with its port count; it converges on
    create and on change, and a reconcile that hits a conflict is retried."""
    queue: WorkQueue[str] = WorkQueue(name="port-labeller")
    attempts: dict[str, int] = {}

    def enqueue(obj: dict) -> None:
        queue.add(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")

    inf = Informer(api, "services", namespace="default")
    inf.add_handler(on_add=enqueue, on_update=lambda _old, new: enqueue(new),
                    on_delete=enqueue)

    async def reconcile(key: str) -> None:
        ns, name = key.split("/")
        svc = inf.get(ns, name)
        if svc is None:
            return  # deleted: nothing to converge
        want = str(len(svc["spec"]["ports"]))
        if svc["metadata"].get("labels", {}).get("ports") == want:
            return
        attempts[name] = attempts.get(name, 0) + 1
        obj = copy.deepcopy(svc)  # never mutate the cache
        obj["metadata"].setdefault("labels", {})["ports"] = want
        if name == "racy" and attempts[name] == 1:
            obj["metadata"]["resourceVersion"] = "1"  # stale on purpose: 409
        await api.replace("services", obj)

    async with inf:
        workers = asyncio.ensure_future(run_workers(queue, reconcile, workers=2))
        try:
            await inf.wait_synced(TIMEOUT)
            await api.create("services", service("one"))
            await api.create("services", service("racy"))

            def labelled(name: str, n: str) -> bool:
                obj = inf.get("default", name)
                return obj is not None and obj["metadata"].get("labels", {}).get("ports") == n

            await until(lambda: labelled("one", "1") and labelled("racy", "1"), "labels")
            assert attempts["racy"] == 2, "the conflicting write was retried once"
            two = service("one")
            two["spec"]["ports"] = [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]
            await api.patch("services", "one", {"spec": {"ports": two["spec"]["ports"]}})
            await until(lambda: labelled("one", "2"), "label follows the change")
        finally:
            await queue.shut_down_with_drain()
            await asyncio.wait_for(workers, TIMEOUT)


async def test_factory_shares_one_informer_per_resource_and_merges_indexes(
        api: ApiClient) -> None:
    """Two controllers asking for pods get one informer (one list, one watch) holding
    both their indexes; a clashing index function under one name is refused; the
    factory starts, syncs and stops them all."""
    await api.create("pods", pod("p1"))
    factory = InformerFactory(api)
    a = factory.informer("pods", indexers={"node": pods_by_node})
    b = factory.informer("po", indexers={"owner": index_by_owner_uid})
    services = factory.informer("services", namespace="default")
    assert a is b
    assert len(factory) == 2
    with pytest.raises(ValueError, match="already defined by another function"):
        factory.informer("pods", indexers={"node": index_by_owner_uid})
    async with factory:
        await factory.wait_synced(TIMEOUT)
        assert [p["metadata"]["name"] for p in a.list()] == ["p1"]
        assert a.lists == 1
        late = factory.informer("namespaces")  # made after start: started at once
        await late.wait_synced(TIMEOUT)
        assert "default" in {n["metadata"]["name"] for n in late.list()}
        await api.bind("p1", "node-a")
        await until(lambda: len(b.store.by_index("node", "node-a")) == 1, "shared index")
        assert services.has_synced


async def test_reconnect_backs_off_exponentially_with_jitter_and_a_cap(
        api: ApiClient, server_handle: ServerHandle) -> None:
    """While the server is down, each failed attempt waits on the (manual) clock before
    the next: between half and all of 1 s, 2 s, 4 s, then 4 s again (the cap), never
    sooner; once the server is back the next attempt reconnects and resumes."""
    await api.create("services", service("a"))
    clock = ManualClock()
    inf = Informer(api, "services", namespace="default", clock=clock, backoff_base=1.0,
                   backoff_max=4.0)
    async with inf:
        await inf.wait_synced(TIMEOUT)
        await until(lambda: inf.watches == 1, "watch open")
        await server_handle.stop()
        await until(lambda: inf.failures == 1, "first failed reconnect")
        for n, delay in enumerate([1.0, 2.0, 4.0, 4.0], start=1):
            clock.advance(delay / 2 - 0.01)
            await asyncio.sleep(0.1)
            assert inf.failures == n, f"attempt {n + 1} came before half of {delay}s"
            clock.advance(delay / 2 + 0.01)
            await until(lambda n=n: inf.failures == n + 1, f"attempt {n + 1}")
        await server_handle.start()
        await api.create("services", service("b"))
        clock.advance(4.0)
        await until(lambda: inf.get("default", "b") is not None, "resumed after restart")
        assert inf.lists == 1
