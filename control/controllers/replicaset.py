"""The ReplicaSet controller: keep ``spec.replicas`` Pods of a template alive.

sample-controller's shape: Pod and ReplicaSet informers enqueue the ReplicaSet's key;
``reconcile(key)`` counts the active Pods it controls (owner reference with
``controller: true``), creates the missing ones from the template or deletes the surplus
in :func:`~control.controllers.podutil.deletion_rank` order (unscheduled, pending,
not-ready and newest first), then writes ``status`` (replicas, ready, available,
``observedGeneration``) when it changed.

**Expectations** (client-go's ``ControllerExpectations``): after creating or deleting
Pods the informer needs a moment to show them; counting before it does would create or
delete the same Pods twice. So each ReplicaSet remembers how many creations and which
deletions it still expects to see; until they are observed (or ``expectation_timeout``
passes, in case an event was lost) it only updates status. Creations go in slow-start
batches (1, 2, 4, ...), as Kubernetes does, so a template the API refuses fails once,
not 3,000 times.

Neighbours: ``podutil.py`` (ready/available/deletion order), ``deployment.py`` (owns
ReplicaSets and drives their ``spec.replicas``), ``events.py``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from control.client import errors
from control.client.cache import index_by_owner_uid, object_key, split_key
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.client.workers import PermanentError, run_workers
from control.client.workqueue import WorkQueue
from control.controllers.events import EventRecorder
from control.controllers.podutil import (
    condition,
    deletion_rank,
    is_active,
    is_available,
    is_draining,
    is_ready,
    parse_time,
)

Obj = dict[str, Any]
log = logging.getLogger(__name__)

OWNER_INDEX = "owner"
# Pod events wake their owner this much later: a burst of a hundred Pod changes (a
# node's Pods evicted, a deployment's Pods bound) becomes one reconcile and one status
# write instead of a hundred, and deletions are replaced in one batch.
POD_EVENT_DELAY = 0.1  # seconds
BURST = 500  # Pods created or deleted per reconcile at most (Kubernetes' burstReplicas)


def controller_ref(obj: Obj) -> Obj | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def owned_by(obj: Obj, owner: Obj) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.get("uid") == (owner.get("metadata") or {}).get("uid")


def owner_reference(owner: Obj) -> Obj:
    md = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", ""), "kind": owner.get("kind", ""),
            "name": md["name"], "uid": md["uid"], "controller": True,
            "blockOwnerDeletion": True}


@dataclass(slots=True)
class _Expect:
    adds: int = 0
    deletes: set[str] = field(default_factory=set)
    at: float = 0.0


class Expectations:
    """Creations and deletions a controller made but its informer has not shown yet."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._by_key: dict[str, _Expect] = {}

    def satisfied(self, key: str) -> bool:
        e = self._by_key.get(key)
        if e is None or (e.adds <= 0 and not e.deletes):
            return True
        return time.monotonic() - e.at > self.timeout  # an event was lost: start over

    def expect(self, key: str, *, adds: int = 0, deletes: set[str] | None = None) -> None:
        self._by_key[key] = _Expect(adds, set(deletes or ()), time.monotonic())

    def created(self, key: str) -> None:
        e = self._by_key.get(key)
        if e is not None and e.adds > 0:
            e.adds -= 1

    def deleted(self, key: str, uid: str) -> None:
        e = self._by_key.get(key)
        if e is not None:
            e.deletes.discard(uid)

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)


def pod_from_template(rs: Obj) -> Obj:
    template = copy.deepcopy((rs.get("spec") or {}).get("template") or {})
    tmd = template.get("metadata") or {}
    md: Obj = {"generateName": f"{rs['metadata']['name']}-",
               "namespace": rs["metadata"].get("namespace"),
               "labels": tmd.get("labels") or {},
               "ownerReferences": [owner_reference(rs)]}
    if tmd.get("annotations"):
        md["annotations"] = tmd["annotations"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md,
            "spec": template.get("spec") or {}}


def replica_status(owner: Obj, pods: list[Obj], now: datetime, *, terminating: int = 0
                   ) -> Obj:
    """``status`` of a ReplicaSet from the active Pods it controls, and the number of
    its Pods still terminating (``terminatingReplicas``: graceful deletions in progress,
    not counted in ``replicas``; Kubernetes 1.33's field)."""
    spec = owner.get("spec") or {}
    min_ready = int(spec.get("minReadySeconds") or 0)
    tlabels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    return {
        "replicas": len(pods),
        "fullyLabeledReplicas": sum(
            1 for p in pods
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in tlabels.items())),
        "readyReplicas": sum(1 for p in pods if is_ready(p)),
        "availableReplicas": sum(1 for p in pods if is_available(p, min_ready, now)),
        "terminatingReplicas": terminating,
        "observedGeneration": owner["metadata"].get("generation", 1),
    }


def _next_available_check(pods: list[Obj], min_ready: int, now: datetime) -> float | None:
    """Seconds until the next ready Pod becomes available (minReadySeconds), if any."""
    waits = []
    for p in pods:
        c = condition(p, "Ready")
        if c and c.get("status") == "True" and not is_available(p, min_ready, now):
            since = parse_time(c.get("lastTransitionTime"))
            if since is not None:
                waits.append(max(0.1, min_ready - (now - since).total_seconds()))
    return min(waits) if waits else None


class ReplicaSetController:
    """Reconciles ReplicaSets; see the module docstring."""

    name = "replicaset"

    def __init__(self, api: ApiClient, factory: InformerFactory, recorder: EventRecorder, *,
                 workers: int = 4, expectation_timeout: float = 30.0) -> None:
        self.api = api
        self.recorder = recorder
        self.workers = workers
        self.expectations = Expectations(expectation_timeout)
        self.queue: WorkQueue[str] = WorkQueue(name="replicaset")
        self.replicasets = factory.informer("replicasets")
        self.pods = factory.informer("pods", indexers={OWNER_INDEX: index_by_owner_uid})
        self.replicasets.add_handler(on_add=self._enqueue,
                                     on_update=lambda _o, n: self._enqueue(n),
                                     on_delete=self._rs_deleted)
        self.pods.add_handler(on_add=self._pod_added, on_update=self._pod_updated,
                              on_delete=self._pod_deleted)

    # -- handlers ------------------------------------------------------------------------

    def _enqueue(self, rs: Obj) -> None:
        self.queue.add(object_key(rs))

    def _rs_deleted(self, rs: Obj) -> None:
        self.expectations.forget(object_key(rs))
        self.queue.add(object_key(rs))

    def _owner_key(self, pod: Obj) -> str | None:
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return None
        return f"{pod['metadata'].get('namespace')}/{ref.get('name')}"

    def _pod_added(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key:
            self.expectations.created(key)
            self.queue.add_after(key, POD_EVENT_DELAY)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        for p in (old, new):
            key = self._owner_key(p)
            if key:
                self.queue.add_after(key, POD_EVENT_DELAY)
        if (new.get("metadata") or {}).get("deletionTimestamp"):
            key = self._owner_key(new)
            if key:
                self.expectations.deleted(key, new["metadata"].get("uid", ""))

    def _pod_deleted(self, pod: Obj) -> None:
        key = self._owner_key(pod)
        if key:
            self.expectations.deleted(key, pod["metadata"].get("uid", ""))
            self.queue.add_after(key, POD_EVENT_DELAY)

    # -- reconcile -----------------------------------------------------------------------

    async def run(self) -> None:
        await self.replicasets.wait_synced()
        await self.pods.wait_synced()
        await run_workers(self.queue, self.reconcile, workers=self.workers)

    def shutdown(self) -> None:
        self.queue.shut_down()

    def owned_pods(self, rs: Obj) -> list[Obj]:
        """Active Pods this ReplicaSet controls, from the cache."""
        return [p for p in self.pods.store.by_index(OWNER_INDEX, rs["metadata"]["uid"])
                if owned_by(p, rs) and is_active(p)]

    def draining_pods(self, rs: Obj) -> int:
        """Pods this ReplicaSet controls that are terminating, from the cache."""
        return sum(1 for p in self.pods.store.by_index(OWNER_INDEX, rs["metadata"]["uid"])
                   if owned_by(p, rs) and is_draining(p))

    async def reconcile(self, key: str) -> float | None:
        ns, name = split_key(key)
        rs = self.replicasets.get(ns, name)
        if rs is None:
            self.expectations.forget(key)
            return None
        pods = self.owned_pods(rs)
        spec = rs.get("spec") or {}
        want = spec.get("replicas", 1)
        if not isinstance(want, int) or want < 0:
            raise PermanentError(f"replicaset {key}: spec.replicas must be a non-negative "
                                 f"integer, got {want!r}")
        if self.expectations.satisfied(key) and not rs["metadata"].get("deletionTimestamp"):
            diff = want - len(pods)
            if diff > 0:
                await self._create(key, rs, min(diff, BURST))
            elif diff < 0:
                await self._delete(key, rs, sorted(pods, key=deletion_rank)[:min(-diff, BURST)])
        now = datetime.now(UTC)
        pods = self.owned_pods(rs)
        status = replica_status(rs, pods, now, terminating=self.draining_pods(rs))
        if {k: (rs.get("status") or {}).get(k) for k in status} != status:
            try:
                await self.api.patch("replicasets", name, {"status": status}, namespace=ns,
                                     subresource="status")
            except errors.NotFound:
                return None
        return _next_available_check(pods, int(spec.get("minReadySeconds") or 0), now)

    async def _create(self, key: str, rs: Obj, count: int) -> None:
        self.expectations.expect(key, adds=count)
        ns = rs["metadata"].get("namespace")
        created: list[str] = []
        batch, remaining = 1, count
        failure: Exception | None = None
        while remaining > 0 and failure is None:
            n = min(batch, remaining)
            results = await asyncio.gather(
                *(self.api.create("pods", pod_from_template(rs), namespace=ns)
                  for _ in range(n)), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    failure = failure or r  # type: ignore[assignment]
                    self.expectations.created(key)  # it will never be observed
                else:
                    created.append(r["metadata"]["name"])
            remaining -= n
            batch *= 2
        # Creations skipped after a failure will not be observed either.
        for _ in range(remaining):
            self.expectations.created(key)
        if created:
            shown = ", ".join(created[:5]) + (f" and {len(created) - 5} more"
                                              if len(created) > 5 else "")
            self.recorder.record(rs, "Normal", "SuccessfulCreate", f"Created pod: {shown}")
        if failure is not None:
            self.recorder.record(rs, "Warning", "FailedCreate", f"Error creating: {failure}")
            if isinstance(failure, errors.Invalid | errors.Forbidden):
                raise PermanentError(f"replicaset {key}: {failure}")
            raise failure

    async def _delete(self, key: str, rs: Obj, victims: list[Obj]) -> None:
        self.expectations.expect(key, deletes={p["metadata"]["uid"] for p in victims})
        ns = rs["metadata"].get("namespace")
        results = await asyncio.gather(
            *(self.api.delete("pods", p["metadata"]["name"], namespace=ns) for p in victims),
            return_exceptions=True)
        deleted = []
        failure = None
        for pod, r in zip(victims, results, strict=True):
            if isinstance(r, errors.NotFound) or not isinstance(r, BaseException):
                if isinstance(r, errors.NotFound):
                    self.expectations.deleted(key, pod["metadata"]["uid"])
                deleted.append(pod["metadata"]["name"])
            else:
                self.expectations.deleted(key, pod["metadata"]["uid"])
                failure = failure or r
        if deleted:
            shown = ", ".join(deleted[:5]) + (f" and {len(deleted) - 5} more"
                                              if len(deleted) > 5 else "")
            self.recorder.record(rs, "Normal", "SuccessfulDelete", f"Deleted pod: {shown}")
        if failure is not None:
            raise failure
