"""The Endpoints controller: each Service's Endpoints object follows its Pods.

Service, Pod and Endpoints informers enqueue Service keys; ``reconcile(key)`` computes
the ``subsets`` with :func:`~control.controllers.endpoints.compute_subsets` (ready
addresses, not-ready addresses, published ports) and writes the Endpoints object only
when the subsets differ from what is stored, so a quiet cluster causes no writes and a
Pod's readiness change reaches the Endpoints in one watch event plus one write.

A Pod change enqueues every Service of its namespace whose selector matches the Pod's
labels before *or* after the change (a relabelled Pod must leave the old Service). The
Endpoints object carries an owner reference to its Service, so deleting the Service lets
the API server's garbage collector remove it. Services without a selector are left
alone: their Endpoints are written by hand.

Neighbours: ``endpoints.py`` (the pure computation and its port conventions).
"""

from __future__ import annotations

import logging
from typing import Any

from control.client import errors
from control.client.cache import index_by_namespace, object_key, split_key
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.client.workers import run_workers
from control.client.workqueue import WorkQueue
from control.controllers.endpoints import compute_subsets, selector_matches

Obj = dict[str, Any]
log = logging.getLogger(__name__)

NS_INDEX = "namespace"


class EndpointsController:
    """Keeps ``Endpoints/{service}`` equal to what the Service's Pods say."""

    name = "endpoints"

    def __init__(self, api: ApiClient, factory: InformerFactory, *, workers: int = 4) -> None:
        self.api = api
        self.workers = workers
        self.queue: WorkQueue[str] = WorkQueue(name="endpoints")
        self.services = factory.informer("services", indexers={NS_INDEX: index_by_namespace})
        self.pods = factory.informer("pods", indexers={NS_INDEX: index_by_namespace})
        self.endpoints = factory.informer("endpoints")
        self.services.add_handler(on_add=self._enqueue,
                                  on_update=lambda _o, n: self._enqueue(n),
                                  on_delete=self._enqueue)
        self.pods.add_handler(on_add=lambda p: self._pod_changed(None, p),
                              on_update=self._pod_changed,
                              on_delete=lambda p: self._pod_changed(None, p))
        # A hand edit (or a lost write) of a managed Endpoints is put right.
        self.endpoints.add_handler(on_update=lambda _o, n: self._endpoints_changed(n),
                                   on_delete=self._endpoints_changed)

    def _enqueue(self, svc: Obj) -> None:
        self.queue.add(object_key(svc))

    def _pod_changed(self, old: Obj | None, new: Obj) -> None:
        ns = (new.get("metadata") or {}).get("namespace")
        if not ns:
            return
        label_sets = [(new.get("metadata") or {}).get("labels") or {}]
        if old is not None:
            label_sets.append((old.get("metadata") or {}).get("labels") or {})
        for svc in self.services.store.by_index(NS_INDEX, ns):
            selector = (svc.get("spec") or {}).get("selector") or {}
            if selector and any(selector_matches(selector, ls) for ls in label_sets):
                self.queue.add(object_key(svc))

    def _endpoints_changed(self, ep: Obj) -> None:
        md = ep.get("metadata") or {}
        if self.services.get(md.get("namespace"), md.get("name", "")) is not None:
            self.queue.add(object_key(ep))

    async def run(self) -> None:
        for inf in (self.services, self.pods, self.endpoints):
            await inf.wait_synced()
        await run_workers(self.queue, self.reconcile, workers=self.workers)

    def shutdown(self) -> None:
        self.queue.shut_down()

    async def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.services.get(ns, name)
        if svc is None or svc["metadata"].get("deletionTimestamp"):
            return  # its Endpoints go with it (owner reference)
        if not (svc.get("spec") or {}).get("selector"):
            return
        subsets = compute_subsets(svc, self.pods.store.by_index(NS_INDEX, ns or ""))
        current = self.endpoints.get(ns, name)
        if current is not None and (current.get("subsets") or []) == subsets:
            return
        md = svc["metadata"]
        owner = {"apiVersion": "v1", "kind": "Service", "name": md["name"], "uid": md["uid"]}
        if current is None:
            body = {"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": dict(md.get("labels") or {}),
                                 "ownerReferences": [owner]},
                    "subsets": subsets}
            try:
                await self.api.create("endpoints", body, namespace=ns)
                return
            except errors.AlreadyExists:
                current = await self.api.get("endpoints", name, namespace=ns)
        body = dict(current)
        body["subsets"] = subsets
        body["metadata"] = dict(current["metadata"])
        refs = [r for r in body["metadata"].get("ownerReferences") or ()
                if r.get("uid") != md["uid"]]
        body["metadata"]["ownerReferences"] = [*refs, owner]
        # resourceVersion from the cache: a 409 means the cache was stale; the retry
        # (with back-off) computes again from fresher state.
        await self.api.replace("endpoints", body, namespace=ns)
