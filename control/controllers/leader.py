"""Leader election through the API: one controller manager acts, the others wait.

The store has a TTL lock (``Store.try_acquire_lock``) but the API server does not expose
it, and it serves neither ``coordination.k8s.io/v1`` Lease nor ConfigMap. So this is
Kubernetes' own older scheme (client-go's ``EndpointsLock``): the leader record lives in
the annotation ``control-plane.alpha.kubernetes.io/leader`` of an Endpoints object
(default ``kube-system/mesh-controller-manager``), and every change to it is a
compare-and-swap on the object's ``resourceVersion`` through an ordinary PUT, so two
candidates can never both win one round.

The record is client-go's ``LeaderElectionRecord`` (holderIdentity, leaseDurationSeconds,
acquireTime, renewTime, leaderTransitions). As in client-go, a candidate does not compare
``renewTime`` with its own wall clock: it notes *when it observed* the record change, on
its own monotonic clock, and takes over only when the record has not changed for the
lease duration. The leader renews every ``retry_period`` and gives up (stops acting)
when it has not renewed for ``renew_deadline``, which is shorter than the lease, so the
old leader has stopped before anyone else may start. A leader that stops cleanly
releases the lock (empty holder) so the next one takes over at once.

Neighbours: ``manager.py`` runs the controllers only while :meth:`LeaderElector.hold`
runs. The Endpoints controller never touches this object: there is no Service of its
name.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from control.client import errors
from control.client.clock import Clock, LoopClock, sleep
from control.client.rest import ApiClient

Obj = dict[str, Any]
log = logging.getLogger(__name__)

LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


@dataclass(frozen=True, slots=True)
class LeaderElectionConfig:
    """client-go's defaults: lease 15 s, renew deadline 10 s, retry every 2 s."""

    lock_name: str = "mesh-controller-manager"
    namespace: str = "kube-system"
    lease_duration: float = 15.0   # s a record must stay unchanged before a takeover
    renew_deadline: float = 10.0   # s the leader keeps acting without a successful renew
    retry_period: float = 2.0      # s between attempts to acquire or renew

    def __post_init__(self) -> None:
        if self.retry_period <= 0:
            raise ValueError(f"retry_period must be > 0, got {self.retry_period}")
        if self.renew_deadline <= self.retry_period:
            raise ValueError(f"renew_deadline ({self.renew_deadline}s) must be greater than "
                             f"retry_period ({self.retry_period}s)")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(f"lease_duration ({self.lease_duration}s) must be greater than "
                             f"renew_deadline ({self.renew_deadline}s)")


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_record(obj: Obj) -> Obj:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(LEADER_ANNOTATION)
    if not raw:
        return {}
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class LeaderElector:
    """One candidate. ``acquire`` until leader, then ``hold`` while acting."""

    def __init__(self, api: ApiClient, identity: str,
                 config: LeaderElectionConfig | None = None, *,
                 clock: Clock | None = None) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        self.api = api
        self.identity = identity
        self.config = config or LeaderElectionConfig()
        self._clock = clock or LoopClock()
        self._observed: Obj | None = None
        self._observed_at = 0.0
        self.is_leader = False
        self.transitions_seen = 0

    async def _ensure_namespace(self) -> None:
        try:
            await self.api.create("namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": self.config.namespace}})
        except errors.AlreadyExists:
            pass

    async def try_acquire_or_renew(self) -> bool:
        """One round: True when this candidate holds the lease afterwards."""
        cfg = self.config
        now = self._clock.now()
        new_record = {"holderIdentity": self.identity,
                      "leaseDurationSeconds": int(max(1, round(cfg.lease_duration))),
                      "acquireTime": _micro_time(), "renewTime": _micro_time(),
                      "leaderTransitions": 0}
        try:
            obj = await self.api.get("endpoints", cfg.lock_name, namespace=cfg.namespace)
        except errors.NotFound:
            body = {"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": cfg.lock_name, "namespace": cfg.namespace,
                                 "annotations": {LEADER_ANNOTATION: json.dumps(new_record)}}}
            try:
                try:
                    await self.api.create("endpoints", body, namespace=cfg.namespace)
                except errors.NotFound:  # the namespace is missing: make it, then again
                    await self._ensure_namespace()
                    await self.api.create("endpoints", body, namespace=cfg.namespace)
            except errors.AlreadyExists:
                return False  # another candidate created it first
            self._observe(new_record, now)
            return True
        record = read_record(obj)
        if record != self._observed:
            self._observe(record, now)
        holder = record.get("holderIdentity") or ""
        lease = float(record.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + lease:
            return False  # someone else holds a lease that has not run out
        if holder == self.identity:
            new_record["acquireTime"] = record.get("acquireTime", new_record["acquireTime"])
            new_record["leaderTransitions"] = int(record.get("leaderTransitions") or 0)
        else:
            new_record["leaderTransitions"] = int(record.get("leaderTransitions") or 0) + 1
        md = dict(obj["metadata"])
        md["annotations"] = {**(md.get("annotations") or {}),
                             LEADER_ANNOTATION: json.dumps(new_record)}
        try:
            await self.api.replace("endpoints", {**obj, "metadata": md},
                                   namespace=cfg.namespace)
        except errors.Conflict:
            return False  # someone else wrote first this round
        self._observe(new_record, now)
        return True

    def _observe(self, record: Obj, now: float) -> None:
        self._observed = record
        self._observed_at = now

    async def acquire(self, stop: asyncio.Event | None = None) -> bool:
        """Try every ``retry_period`` until leader (True) or ``stop`` is set (False)."""
        while stop is None or not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    self.is_leader = True
                    log.info("%s became leader of %s/%s", self.identity, self.config.namespace,
                             self.config.lock_name)
                    return True
            except errors.ClientError as e:
                log.info("leader election: %s", e)
            await sleep(self._clock, self.config.retry_period)
        return False

    async def hold(self) -> None:
        """Renew every ``retry_period``; return when a renew has not succeeded for
        ``renew_deadline`` (leadership is lost: the caller must stop acting)."""
        last = self._clock.now()
        while True:
            await sleep(self._clock, self.config.retry_period)
            ok = False
            try:
                ok = await self.try_acquire_or_renew()
            except errors.ClientError as e:
                log.warning("leader election: renew failed: %s", e)
            now = self._clock.now()
            if ok:
                last = now
            elif now - last >= self.config.renew_deadline:
                self.is_leader = False
                log.error("%s lost leadership (no renew for %.1fs)", self.identity, now - last)
                return

    async def release(self) -> None:
        """Give the lease up (only if still ours) so another candidate takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        cfg = self.config
        try:
            obj = await self.api.get("endpoints", cfg.lock_name, namespace=cfg.namespace)
            record = read_record(obj)
            if record.get("holderIdentity") != self.identity:
                return
            record.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time())
            md = dict(obj["metadata"])
            md["annotations"] = {**(md.get("annotations") or {}),
                                 LEADER_ANNOTATION: json.dumps(record)}
            await self.api.replace("endpoints", {**obj, "metadata": md},
                                   namespace=cfg.namespace)
        except errors.ClientError as e:
            log.warning("leader election: release failed (the lease will expire): %s", e)
