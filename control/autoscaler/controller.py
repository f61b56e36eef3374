"""The HorizontalPodAutoscaler controller: reads metrics, writes ``scale`` and HPA status.

sample-controller style: HPA add/update events enqueue the HPA's key, and every key is
requeued after ``sync_period`` (Kubernetes' ``--horizontal-pod-autoscaler-sync-period``,
15 s), because metrics change without any object changing. ``reconcile(key)``:

1. reads the target's ``scale`` subresource (current replicas and its label selector);
   a count outside ``minReplicas..maxReplicas`` is brought inside at once, before and
   without metrics or behaviours (Kubernetes' order); else the target's Pods come from
   the Pod informer (ready vs not ready);
2. reads the Pods' current values from the metrics API (``source.py``) and, for every
   metric of the spec, a proposal (``evaluate.py`` → ``algorithm.propose``); the largest
   wins. Invalid metrics are skipped, but if any was invalid a scale *down* is not done
   (Kubernetes' rule: do not shrink on partial information); if all are invalid the
   count stays and ``ScalingActive=False`` says why;
3. passes the recommendation through the HPA's :class:`~control.autoscaler.algorithm.
   Normalizer` (stabilisation windows, rate policies, min/max), kept in memory per HPA
   as Kubernetes does (a restarted controller starts a fresh window);
4. writes the new count through ``scale`` when it differs, records an Event with the
   numbers behind the decision (``SuccessfulRescale``; ``DesiredReplicasHeld``, once per
   held recommendation, when the metrics asked for a change that stabilisation, a policy
   or a bound held back), and writes
   ``status`` (currentReplicas, desiredReplicas, currentMetrics, lastScaleTime,
   conditions AbleToScale / ScalingActive / ScalingLimited) only when it changed.

Time for the normaliser comes from ``clock`` (monotonic seconds; tests pass a manual
one). Neighbours: ``algorithm.py``, ``evaluate.py``, ``source.py``; the manager registers
this controller as ``horizontalpodautoscaler``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from control.api.selectors import LabelSelector
from control.autoscaler.algorithm import (
    DEFAULT_DOWN,
    DEFAULT_TOLERANCE,
    DEFAULT_UP,
    Decision,
    Normalizer,
    Policy,
    Rules,
)
from control.autoscaler.evaluate import Evaluation, PodSet, evaluate, pod_requests
from control.autoscaler.source import ApiMetricsSource, MetricsSource
from control.client import errors
from control.client.cache import index_by_namespace, object_key, split_key
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.client.workers import run_workers
from control.client.workqueue import WorkQueue
from control.controllers.events import EventRecorder

Obj = dict[str, Any]
log = logging.getLogger(__name__)

NS_INDEX = "namespace"
DEFAULT_SYNC_PERIOD = 15.0
TARGET_RESOURCES = {"Deployment": "deployments", "ReplicaSet": "replicasets"}


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rules_from(spec: Obj | None, default: Rules) -> Rules:
    """``behavior.scaleUp`` / ``scaleDown`` → :class:`Rules`, Kubernetes' defaults for
    whatever is left out."""
    if not spec:
        return default
    policies = tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                     for p in spec.get("policies") or ()) or default.policies
    window = spec.get("stabilizationWindowSeconds")
    return Rules(float(default.stabilization_window if window is None else window),
                 policies, spec.get("selectPolicy", default.select))


def pod_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ())


@dataclass
class _State:
    rules: tuple[Rules, Rules]
    normalizer: Normalizer
    held: tuple[int, int] | None = None   # (current, recommended) last said to be held


class HPAController:
    """See the module docstring."""

    name = "horizontalpodautoscaler"

    def __init__(self, api: ApiClient, factory: InformerFactory, recorder: EventRecorder, *,
                 metrics: MetricsSource | None = None, sync_period: float = DEFAULT_SYNC_PERIOD,
                 tolerance: float = DEFAULT_TOLERANCE,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, workers: int = 2) -> None:
        self.api = api
        self.recorder = recorder
        self.metrics = metrics if metrics is not None else ApiMetricsSource(api)
        self.sync_period = sync_period
        self.tolerance = tolerance
        self.clock = clock
        self.wall_clock = wall_clock
        self.workers = workers
        self.queue: WorkQueue[str] = WorkQueue(name="horizontalpodautoscaler")
        self.hpas = factory.informer("horizontalpodautoscalers")
        self.pods = factory.informer("pods", indexers={NS_INDEX: index_by_namespace})
        self.hpas.add_handler(on_add=lambda o: self.queue.add(object_key(o)),
                              on_update=self._hpa_updated,
                              on_delete=lambda o: self.queue.add(object_key(o)))
        self._state: dict[str, _State] = {}

    def _hpa_updated(self, old: Obj, new: Obj) -> None:
        # Our own status writes come back as updates; only a spec change needs a pass now.
        if old.get("spec") != new.get("spec"):
            self.queue.add(object_key(new))

    async def run(self) -> None:
        await self.hpas.wait_synced()
        await self.pods.wait_synced()
        await run_workers(self.queue, self.reconcile, workers=self.workers)

    def shutdown(self) -> None:
        self.queue.shut_down()

    def normalizer(self, key: str, hpa: Obj) -> Normalizer:
        behavior = (hpa.get("spec") or {}).get("behavior") or {}
        rules = (rules_from(behavior.get("scaleUp"), DEFAULT_UP),
                 rules_from(behavior.get("scaleDown"), DEFAULT_DOWN))
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = _State(rules, Normalizer(*rules))
        elif state.rules != rules:  # behaviour edited: new rules, same history
            state.normalizer.up, state.normalizer.down = rules
            state.rules = rules
        return state.normalizer

    async def reconcile(self, key: str) -> float | None:
        ns, name = split_key(key)
        hpa = self.hpas.get(ns, name)
        if hpa is None or (hpa.get("metadata") or {}).get("deletionTimestamp"):
            self._state.pop(key, None)
            return None
        hpa = {**hpa, "kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2"}
        await self._sync(key, ns or "", hpa)
        return self.sync_period

    async def _sync(self, key: str, ns: str, hpa: Obj) -> None:
        spec = hpa["spec"]
        ref = spec["scaleTargetRef"]
        conditions: dict[str, tuple[str, str, str]] = {}
        status: Obj = {"currentMetrics": [], "desiredReplicas": 0, "currentReplicas": 0}
        resource = TARGET_RESOURCES.get(ref.get("kind", ""))
        if resource is None:
            msg = f"the HPA controller can scale Deployments and ReplicaSets, not {ref['kind']}"
            conditions["AbleToScale"] = ("False", "FailedGetScale", msg)
            self.recorder.record(hpa, "Warning", "FailedGetScale", msg)
            return await self._write_status(hpa, status, conditions)
        try:
            scale = await self.api.get_scale(resource, ref["name"], namespace=ns)
        except errors.NotFound:
            msg = f"the target {ref['kind']}/{ref['name']} does not exist"
            conditions["AbleToScale"] = ("False", "FailedGetScale", msg)
            self.recorder.record(hpa, "Warning", "FailedGetScale", msg)
            return await self._write_status(hpa, status, conditions)
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        status.update(currentReplicas=current, desiredReplicas=current)
        lo, hi = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        if current == 0 and lo > 0:
            conditions["AbleToScale"] = ("True", "ReadyForNewScale", "the target is ready "
                                         "for a new scale")
            conditions["ScalingActive"] = ("False", "ScalingDisabled", "scaling is disabled "
                                           "since the replica count of the target is zero")
            return await self._write_status(hpa, status, conditions)

        if not lo <= current <= hi:
            # Kubernetes' order: a target outside the bounds is brought inside them first,
            # without metrics or behaviours.
            bound, which = (hi, "maxReplicas") if current > hi else (lo, "minReplicas")
            words = f"current {current} is {'above' if current > hi else 'below'} " \
                    f"{which} {bound}"
            status["desiredReplicas"] = bound
            await self._rescale(hpa, key, resource=resource, ns=ns, current=current,
                                replicas=bound, words=words, status=status,
                                conditions=conditions)
            conditions["ScalingLimited"] = _limited(Decision(bound, words,
                                                             f"clamped to {which} {bound}"))
            return await self._write_status(hpa, status, conditions)

        pods = self._pods(ns, (scale.get("status") or {}).get("selector") or "")
        try:
            values = await self.metrics.pod_values(ns)
        except errors.ClientError as e:
            values = {}
            log.info("metrics for %s unavailable: %s", key, e)
        evals = [evaluate(m, current, pods, values, tolerance=self.tolerance)
                 for m in spec.get("metrics") or ()]
        valid = [e for e in evals if e.proposal is not None]
        invalid = [e for e in evals if e.proposal is None]
        status["currentMetrics"] = [e.current for e in valid if e.current is not None]
        if not valid:
            first = invalid[0] if invalid else None
            reason = first.error_reason if first else "FailedGetResourceMetric"
            why = "; ".join(e.summary() for e in invalid) or "the HPA has no metrics"
            conditions["AbleToScale"] = ("True", "ReadyForNewScale",
                                         "the target is ready for a new scale")
            conditions["ScalingActive"] = ("False", reason,
                                           f"the HPA was unable to compute the replica "
                                           f"count: {why}")
            self.recorder.record(hpa, "Warning", reason, f"replicas unchanged at {current}: "
                                 f"{why}")
            return await self._write_status(hpa, status, conditions)

        best, desired = max(((e, e.proposal.replicas) for e in valid if e.proposal),
                            key=lambda pair: pair[1])
        held_for_invalid = bool(invalid) and desired < current
        if held_for_invalid:
            desired = current
        decision = self.normalizer(key, hpa).decide(self.clock(), current, desired, lo, hi)
        words = self._explain(current, decision, valid, invalid, held_for_invalid)
        status["desiredReplicas"] = decision.replicas
        if decision.replicas != current:
            await self._rescale(hpa, key, resource=resource, ns=ns, current=current,
                                replicas=decision.replicas, words=words, status=status,
                                conditions=conditions)
        else:
            stabilised = "stabilised" in decision.reason
            conditions["AbleToScale"] = (
                ("True", "ScaleDownStabilized", "recent recommendations were higher than "
                 "the current one, applying the highest recent recommendation")
                if stabilised and desired < current else
                ("True", "ReadyForNewScale", "recommended size matches current size"))
            state = self._state[key]
            if desired != current and state.held != (current, desired):
                # Said once per held (current, recommendation), not at every 15 s pass.
                state.held = (current, desired)
                self.recorder.record(hpa, "Normal", "DesiredReplicasHeld",
                                     f"Size stays {current}; {words}")
            elif desired == current:
                state.held = None
        best_desc = best.description
        conditions["ScalingActive"] = ("True", "ValidMetricFound", "the HPA was able to "
                                       f"successfully calculate a replica count from "
                                       f"{best_desc}")
        conditions["ScalingLimited"] = _limited(decision)
        await self._write_status(hpa, status, conditions)

    async def _rescale(self, hpa: Obj, key: str, *, resource: str, ns: str, current: int,
                       replicas: int, words: str, status: Obj,
                       conditions: dict[str, tuple[str, str, str]]) -> None:
        """Write the new count through ``scale``; Event and conditions either way."""
        ref = hpa["spec"]["scaleTargetRef"]
        try:
            await self.api.scale(resource, ref["name"], replicas, namespace=ns)
        except errors.ClientError as e:
            msg = f"failed to rescale {ref['kind']}/{ref['name']}: {e}"
            conditions["AbleToScale"] = ("False", "FailedUpdateScale", msg)
            self.recorder.record(hpa, "Warning", "FailedRescale", msg)
            await self._write_status(hpa, status, conditions)
            raise
        self.normalizer(key, hpa).record_scale(self.clock(), replicas - current)
        self._state[key].held = None
        status["lastScaleTime"] = _stamp(self.wall_clock())
        conditions["AbleToScale"] = ("True", "SucceededRescale", "the HPA controller was able "
                                     f"to update the target scale to {replicas}")
        self.recorder.record(hpa, "Normal", "SuccessfulRescale",
                             f"New size: {replicas}; {words}")

    def _pods(self, ns: str, selector_text: str) -> PodSet:
        selector = LabelSelector.parse(selector_text)
        ready, unready, requests = [], [], {"cpu": {}, "memory": {}}
        for pod in self.pods.store.by_index(NS_INDEX, ns):
            md = pod.get("metadata") or {}
            if md.get("deletionTimestamp") or \
                    (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                continue
            if selector.empty or not selector.matches(md.get("labels") or {}):
                continue
            (ready if pod_ready(pod) else unready).append(md["name"])
            for res, value in pod_requests(pod).items():
                requests[res][md["name"]] = value
        return PodSet(sorted(ready), sorted(unready), requests)

    @staticmethod
    def _explain(current: int, decision: Decision, valid: list[Evaluation],
                 invalid: list[Evaluation], held: bool) -> str:
        parts = [f"current {current}"]
        parts += [e.summary() for e in valid]
        parts += [e.summary() for e in invalid]
        if held:
            parts.append("not scaling down while a metric is missing")
        parts.append(decision.reason)
        return "; ".join(parts)

    async def _write_status(self, hpa: Obj, status: Obj,
                            conditions: dict[str, tuple[str, str, str]]) -> None:
        old = hpa.get("status") or {}
        old_conds = {c.get("type"): c for c in old.get("conditions") or ()}
        now = _stamp(self.wall_clock())
        conds = []
        for ctype in ("AbleToScale", "ScalingActive", "ScalingLimited"):
            if ctype not in conditions:
                if ctype in old_conds:  # not re-evaluated this pass: keep what it said
                    conds.append(old_conds[ctype])
                continue
            st, reason, message = conditions[ctype]
            prev = old_conds.get(ctype) or {}
            since = prev.get("lastTransitionTime") if prev.get("status") == st else None
            conds.append({"type": ctype, "status": st, "reason": reason, "message": message,
                          "lastTransitionTime": since or now})
        new = {**status, "conditions": conds}
        if "lastScaleTime" not in new and old.get("lastScaleTime"):
            new["lastScaleTime"] = old["lastScaleTime"]
        gen = (hpa.get("metadata") or {}).get("generation")
        if gen is not None:
            new["observedGeneration"] = gen
        if all(old.get(k) == v for k, v in new.items()):
            return
        md = hpa["metadata"]
        await self.api.patch("horizontalpodautoscalers", md["name"], {"status": new},
                             namespace=md.get("namespace"), subresource="status")


def _limited(decision: Decision) -> tuple[str, str, str]:
    why = decision.limited_by
    if why is None:
        return ("False", "DesiredWithinRange", "the desired count is within the acceptable "
                                               "range")
    if why.startswith("clamped to maxReplicas"):
        return ("True", "TooManyReplicas", f"the desired replica count is more than the "
                                           f"maximum replica count ({why})")
    if why.startswith("clamped to minReplicas"):
        return ("True", "TooFewReplicas", f"the desired replica count is less than the "
                                          f"minimum replica count ({why})")
    if why.startswith("scale-up"):
        return ("True", "ScaleUpLimit", f"the desired replica count is increasing faster "
                                        f"than the maximum scale rate ({why})")
    return ("True", "ScaleDownLimit", f"the desired replica count is decreasing faster "
                                      f"than the maximum scale rate ({why})")
