"""The Deployment controller: ReplicaSets per template revision, rolled by readiness.

For each Deployment, ``reconcile(key)``:

1. finds the ReplicaSets it controls; the *new* one is labelled with the current
   template's ``pod-template-hash`` (:func:`~control.controllers.rollout.template_hash`),
   every other one is *old*;
2. creates the new ReplicaSet when the template changed (name ``{deployment}-{hash}``,
   annotation ``deployment.kubernetes.io/revision`` = highest revision + 1; a template
   equal to an old ReplicaSet's reuses it and gives it the next revision, which is how a
   rollback works);
3. moves replicas between them: ``RollingUpdate`` by
   :func:`~control.controllers.rollout.plan_rolling_update` with ``maxSurge`` and
   ``maxUnavailable``, counting *available* Pods read from the Pod cache (not from the
   ReplicaSets' status, which lags one write behind), so the total never exceeds
   ``replicas + maxSurge`` and the available Pods never drop below
   ``replicas - maxUnavailable`` by the controller's doing; ``Recreate`` scales every old
   ReplicaSet to zero, waits until their Pods are gone (Terminating ones too: they may
   still be running), then scales up the new one;
4. deletes old ReplicaSets that are scaled to zero beyond ``revisionHistoryLimit``
   (default 10), oldest revision first;
5. writes ``status`` (replicas, updated, ready, available, unavailable,
   ``observedGeneration``, conditions ``Available`` and ``Progressing``) when it changed;
   a rollout whose Pod counts have not moved for ``progressDeadlineSeconds`` gets
   ``Progressing=False`` with reason ``ProgressDeadlineExceeded`` (the rollout goes on).

A paused Deployment (``spec.paused``) is not rolled: only a scale change of a settled
Deployment is applied. What ``meshctl rollout`` does to a Deployment (undo, pause,
resume, history, status) is in ``rollout_ops.py``.

Neighbours: ``rollout.py`` (the arithmetic), ``replicaset.py`` (makes the Pods),
``rollout_ops.py`` (the user's side), ``podutil.py``, ``events.py``.
"""

from __future__ import annotations

import copy
import logging
import time
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
    is_active,
    is_available,
    is_draining,
    is_finished,
    is_ready,
    parse_time,
)
from control.controllers.replicaset import (
    OWNER_INDEX,
    POD_EVENT_DELAY,
    controller_ref,
    owned_by,
    owner_reference,
)
from control.controllers.rollout import (
    RSState,
    plan_rolling_update,
    surge_and_unavailable,
    template_hash,
)

Obj = dict[str, Any]
log = logging.getLogger(__name__)

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
DEFAULT_HISTORY = 10


def revision_of(obj: Obj) -> int:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION, "0")
    try:
        return int(value)
    except ValueError:
        return 0


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _strategy(d: Obj) -> tuple[str, int, int]:
    """(type, maxSurge, maxUnavailable) resolved against ``spec.replicas``."""
    spec = d.get("spec") or {}
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type", "RollingUpdate")
    if kind == "Recreate":
        return kind, 0, spec.get("replicas", 1)
    ru = strategy.get("rollingUpdate") or {}
    try:
        surge, unavailable = surge_and_unavailable(spec.get("replicas", 1),
                                                   ru.get("maxSurge"), ru.get("maxUnavailable"))
    except ValueError as e:
        raise PermanentError(f"deployment {object_key(d)}: spec.strategy.rollingUpdate: {e}"
                             ) from None
    return "RollingUpdate", surge, unavailable


def _set_condition(conds: list[Obj], type_: str, status: str, reason: str, message: str,
                   now: str, *, touch: bool = False) -> None:
    """Set a condition; ``lastUpdateTime`` moves when it changes or ``touch`` says the
    Deployment made progress (what the progress deadline is measured from)."""
    for c in conds:
        if c.get("type") == type_:
            if c.get("status") != status:
                c["lastTransitionTime"] = now
            if touch or (c.get("status"), c.get("reason"), c.get("message")) != (
                    status, reason, message):
                c["lastUpdateTime"] = now
            c.update(status=status, reason=reason, message=message)
            return
    conds.append({"type": type_, "status": status, "reason": reason, "message": message,
                  "lastUpdateTime": now, "lastTransitionTime": now})


class DeploymentController:
    """Reconciles Deployments; see the module docstring."""

    name = "deployment"

    def __init__(self, api: ApiClient, factory: InformerFactory, recorder: EventRecorder, *,
                 workers: int = 2) -> None:
        self.api = api
        self.recorder = recorder
        self.workers = workers
        self.queue: WorkQueue[str] = WorkQueue(name="deployment")
        self.deployments = factory.informer("deployments")
        self.replicasets = factory.informer("replicasets",
                                            indexers={OWNER_INDEX: index_by_owner_uid})
        self.pods = factory.informer("pods", indexers={OWNER_INDEX: index_by_owner_uid})
        self.deployments.add_handler(on_add=self._enqueue,
                                     on_update=lambda _o, n: self._enqueue(n),
                                     on_delete=self._enqueue)
        self.replicasets.add_handler(on_add=self._rs_changed,
                                     on_update=lambda _o, n: self._rs_changed(n),
                                     on_delete=self._rs_changed)
        self.pods.add_handler(on_add=self._pod_changed,
                              on_update=lambda _o, n: self._pod_changed(n),
                              on_delete=self._pod_changed)

    def _enqueue(self, d: Obj) -> None:
        self.queue.add(object_key(d))

    def _rs_changed(self, rs: Obj, delay: float = 0.0) -> None:
        ref = controller_ref(rs)
        if ref and ref.get("kind") == "Deployment":
            self.queue.add_after(f"{rs['metadata'].get('namespace')}/{ref.get('name')}",
                                 delay)

    def _pod_changed(self, pod: Obj) -> None:
        # Readiness drives the rollout: a Pod's change wakes its ReplicaSet's Deployment.
        ref = controller_ref(pod)
        if not ref or ref.get("kind") != "ReplicaSet":
            return
        ns = pod["metadata"].get("namespace")
        rs = self.replicasets.get(ns, ref.get("name", ""))
        if rs is not None:
            self._rs_changed(rs, POD_EVENT_DELAY)  # batched, see replicaset.py

    async def run(self) -> None:
        for inf in (self.deployments, self.replicasets, self.pods):
            await inf.wait_synced()
        await run_workers(self.queue, self.reconcile, workers=self.workers)

    def shutdown(self) -> None:
        self.queue.shut_down()

    # -- reconcile -----------------------------------------------------------------------

    def _pods_of(self, rs: Obj, memo: dict[str, list[Obj]]) -> list[Obj]:
        """Active Pods of ``rs`` from the cache, computed once per reconcile (``memo``):
        with thousands of Pods the scan is the controller's main cost."""
        uid = rs["metadata"]["uid"]
        if uid not in memo:
            memo[uid] = [p for p in self.pods.store.by_index(OWNER_INDEX, uid)
                         if owned_by(p, rs) and is_active(p)]
        return memo[uid]

    def _state(self, rs: Obj, min_ready: int, now: datetime, memo: dict[str, list[Obj]]
               ) -> RSState:
        pods = self._pods_of(rs, memo)
        return RSState(rs["metadata"]["name"], (rs.get("spec") or {}).get("replicas", 0),
                       sum(1 for p in pods if is_available(p, min_ready, now)),
                       rs["metadata"].get("creationTimestamp", ""))

    async def reconcile(self, key: str) -> float | None:
        ns, name = split_key(key)
        d = self.deployments.get(ns, name)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return None  # the garbage collector removes its ReplicaSets
        spec = d.get("spec") or {}
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 0:
            raise PermanentError(f"deployment {key}: spec.replicas must be a non-negative "
                                 f"integer, got {replicas!r}")
        kind, surge, unavailable = _strategy(d)
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = datetime.now(UTC)
        memo: dict[str, list[Obj]] = {}
        owned = [rs for rs in self.replicasets.store.by_index(OWNER_INDEX, d["metadata"]["uid"])
                 if owned_by(rs, d)]
        template = spec.get("template") or {}
        h = template_hash(template)
        new = next((rs for rs in owned
                    if ((rs["metadata"].get("labels") or {}).get(HASH_LABEL)) == h), None)
        olds = [rs for rs in owned if rs is not new]
        top = max((revision_of(rs) for rs in owned), default=0)

        if spec.get("paused"):
            if new is not None and not any((o.get("spec") or {}).get("replicas") for o in olds):
                await self._scale(d, new, replicas)
            return await self._write_status(d, new, olds, min_ready, unavailable, now, memo)

        if new is None:
            if kind == "Recreate" and self._old_pods_remain(olds, memo):
                await self._scale_olds_to_zero(d, olds)
                return await self._write_status(d, new, olds, min_ready, unavailable, now,
                                                memo)
            start = replicas if kind == "Recreate" or not olds else 0
            new = await self._create_rs(d, template, h, top + 1, start)
            if new is None:
                return 1.0  # the informer has not shown it yet: look again shortly
        elif revision_of(new) < top:
            new = await self._set_revision(new, top + 1)  # back to an older template
        await self._set_deployment_revision(d, revision_of(new))

        if kind == "Recreate":
            if self._old_pods_remain(olds, memo):
                await self._scale_olds_to_zero(d, olds)
            else:
                await self._scale(d, new, replicas)
        else:
            plan = plan_rolling_update(
                replicas, surge, unavailable, self._state(new, min_ready, now, memo),
                [self._state(o, min_ready, now, memo) for o in olds
                 if (o.get("spec") or {}).get("replicas", 0) > 0])
            by_name = {rs["metadata"]["name"]: rs for rs in owned}
            by_name[new["metadata"]["name"]] = new
            # Scale down before up: the plan already keeps both within bounds, and
            # freeing old Pods first leaves room when nodes are full.
            for rs_name, count in sorted(plan.items(), key=lambda kv: kv[0] == new[
                    "metadata"]["name"]):
                await self._scale(d, by_name[rs_name], count)
        await self._cleanup(d, olds, spec.get("revisionHistoryLimit", DEFAULT_HISTORY), memo)
        return await self._write_status(d, new, olds, min_ready, unavailable, now, memo)

    def _old_pods_remain(self, olds: list[Obj], memo: dict[str, list[Obj]]) -> bool:
        """Recreate's wait (Kubernetes' ``oldPodsRunning``): an old ReplicaSet still
        wants Pods, or one of its Pods has not finished, Terminating ones included (their
        processes run until the agent has stopped them)."""
        return any((o.get("spec") or {}).get("replicas", 0) > 0 or self._pods_of(o, memo)
                   or any(owned_by(p, o) and not is_finished(p)
                          for p in self.pods.store.by_index(OWNER_INDEX,
                                                            o["metadata"]["uid"]))
                   for o in olds)

    async def _scale_olds_to_zero(self, d: Obj, olds: list[Obj]) -> None:
        for o in olds:
            await self._scale(d, o, 0)

    async def _scale(self, d: Obj, rs: Obj, count: int) -> None:
        current = (rs.get("spec") or {}).get("replicas", 0)
        if current == count:
            return
        md = rs["metadata"]
        try:
            await self.api.patch("replicasets", md["name"],
                                 {"metadata": {"resourceVersion": md["resourceVersion"]},
                                  "spec": {"replicas": count}}, namespace=md.get("namespace"))
        except errors.Conflict:
            raise  # the cache was stale: retried with back-off after the informer catches up
        verb = "up" if count > current else "down"
        self.recorder.record(d, "Normal", "ScalingReplicaSet",
                             f"Scaled {verb} replica set {md['name']} from {current} to {count}")

    async def _create_rs(self, d: Obj, template: Obj, h: str, revision: int,
                         replicas: int) -> Obj | None:
        md = d["metadata"]
        tpl = copy.deepcopy(template)
        tpl.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = h
        selector = copy.deepcopy((d.get("spec") or {}).get("selector") or {})
        selector.setdefault("matchLabels", {})[HASH_LABEL] = h
        spec = d.get("spec") or {}
        rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
              "metadata": {"name": f"{md['name']}-{h}", "namespace": md.get("namespace"),
                           "labels": {**(tpl["metadata"].get("labels") or {})},
                           "annotations": {REVISION: str(revision)},
                           "ownerReferences": [owner_reference(d)]},
              "spec": {"replicas": replicas, "selector": selector, "template": tpl,
                       "minReadySeconds": spec.get("minReadySeconds", 0)}}
        try:
            created = await self.api.create("replicasets", rs, namespace=md.get("namespace"))
        except errors.AlreadyExists:
            return None
        except errors.Invalid as e:
            self.recorder.record(d, "Warning", "FailedCreate", f"Error creating replica set: {e}")
            raise PermanentError(f"deployment {object_key(d)}: {e}") from None
        self.recorder.record(d, "Normal", "ScalingReplicaSet",
                             f"Scaled up replica set {created['metadata']['name']} to {replicas}")
        return created

    async def _set_revision(self, rs: Obj, revision: int) -> Obj:
        md = rs["metadata"]
        return await self.api.patch(
            "replicasets", md["name"],
            {"metadata": {"resourceVersion": md["resourceVersion"],
                          "annotations": {REVISION: str(revision)}}},
            namespace=md.get("namespace"))

    async def _set_deployment_revision(self, d: Obj, revision: int) -> None:
        if revision_of(d) == revision:
            return
        md = d["metadata"]
        await self.api.patch("deployments", md["name"],
                             {"metadata": {"annotations": {REVISION: str(revision)}}},
                             namespace=md.get("namespace"))

    async def _cleanup(self, d: Obj, olds: list[Obj], limit: int,
                       memo: dict[str, list[Obj]]) -> None:
        idle = [o for o in olds if (o.get("spec") or {}).get("replicas", 0) == 0
                and not self._pods_of(o, memo)]
        idle.sort(key=revision_of)
        for o in idle[:max(0, len(idle) - max(0, int(limit)))]:
            try:
                await self.api.delete("replicasets", o["metadata"]["name"],
                                      namespace=o["metadata"].get("namespace"))
            except errors.NotFound:
                pass

    async def _write_status(self, d: Obj, new: Obj | None, olds: list[Obj], min_ready: int,
                            max_unavailable: int, now: datetime,
                            memo: dict[str, list[Obj]]) -> float | None:
        """Write the status if it changed; returns seconds until the progress deadline
        must be checked again (None when no rollout is under way)."""
        spec = d.get("spec") or {}
        replicas = spec.get("replicas", 1)
        new_pods = self._pods_of(new, memo) if new is not None else []
        all_pods = new_pods + [p for o in olds for p in self._pods_of(o, memo)]
        available = sum(1 for p in all_pods if is_available(p, min_ready, now))
        updated = len(new_pods)
        old = copy.deepcopy(d.get("status") or {})
        status: Obj = {
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": len(all_pods),
            "updatedReplicas": updated,
            "readyReplicas": sum(1 for p in all_pods if is_ready(p)),
            "availableReplicas": available,
            "unavailableReplicas": max(0, replicas - available),
            "terminatingReplicas": sum(
                1 for rs in ([new] if new is not None else []) + olds
                for p in self.pods.store.by_index(OWNER_INDEX, rs["metadata"]["uid"])
                if owned_by(p, rs) and is_draining(p)),
        }
        conds = copy.deepcopy(old.get("conditions") or [])
        stamp = _stamp()
        if available >= replicas - max_unavailable:
            _set_condition(conds, "Available", "True", "MinimumReplicasAvailable",
                           "Deployment has minimum availability.", stamp)
        else:
            _set_condition(conds, "Available", "False", "MinimumReplicasUnavailable",
                           "Deployment does not have minimum availability.", stamp)
        new_name = new["metadata"]["name"] if new is not None else ""
        recheck: float | None = None
        if spec.get("paused"):
            _set_condition(conds, "Progressing", "Unknown", "DeploymentPaused",
                           "Deployment is paused", stamp)
        elif (new is not None and updated == replicas and len(all_pods) == replicas
              and sum(1 for p in new_pods if is_available(p, min_ready, now)) == replicas):
            _set_condition(conds, "Progressing", "True", "NewReplicaSetAvailable",
                           f'ReplicaSet "{new_name}" has successfully progressed.', stamp)
        else:
            recheck = self._progress(d, old, status, conds, new_name, now, stamp)
        status["conditions"] = conds
        if {k: old.get(k) for k in status} != status:
            md = d["metadata"]
            try:
                await self.api.patch("deployments", md["name"], {"status": status},
                                     namespace=md.get("namespace"), subresource="status")
            except errors.NotFound:
                return None
        return recheck

    @staticmethod
    def _progress(d: Obj, old: Obj, status: Obj, conds: list[Obj], new_name: str,
                  now: datetime, stamp: str) -> float | None:
        """Progressing during a rollout: True while Pod counts move; False with
        ``ProgressDeadlineExceeded`` once they have not moved for
        ``progressDeadlineSeconds``. Returns seconds until the deadline."""
        deadline = (d.get("spec") or {}).get("progressDeadlineSeconds")
        prev = next((c for c in conds if c.get("type") == "Progressing"), None)
        moved = any(old.get(k) != status[k] for k in
                    ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"))
        message = f'ReplicaSet "{new_name}" is progressing.'
        since = parse_time((prev or {}).get("lastUpdateTime"))
        fresh = (moved or prev is None or since is None
                 or prev.get("reason") not in ("ReplicaSetUpdated", "ProgressDeadlineExceeded")
                 or (prev.get("reason") == "ReplicaSetUpdated"
                     and prev.get("message") != message))
        if fresh:
            _set_condition(conds, "Progressing", "True", "ReplicaSetUpdated", message, stamp,
                           touch=True)
            return float(deadline) if isinstance(deadline, int) else None
        if prev is not None and prev.get("reason") == "ProgressDeadlineExceeded":
            return None  # stays until the Pods move again
        if not isinstance(deadline, int):
            return None
        assert since is not None
        waited = (now - since).total_seconds()
        if waited < deadline:
            return max(0.5, deadline - waited)
        _set_condition(conds, "Progressing", "False", "ProgressDeadlineExceeded",
                       f'ReplicaSet "{new_name}" has timed out progressing.', stamp)
        return None
