"""The agent's link to the API server: its Node, the Pods bound to it, status, Events.

What a kubelet does against kube-apiserver, over :class:`control.client.rest.ApiClient`
with a ``node`` token (the API server lets node ``N`` see only its own Node and the
Pods whose ``spec.nodeName`` is ``N``):

- **registration**: create the Node (capacity and allocatable read from the machine,
  labels, addresses, the runtime in use, the agent API port in
  ``status.daemonEndpoints``); when it already exists, take it over (labels merged,
  status replaced);
- **heartbeat**: every ``heartbeat`` seconds the Node's status is patched with fresh
  conditions (Ready from the runtime answering, MemoryPressure, DiskPressure), each
  with ``lastHeartbeatTime``: the node lifecycle controller's signal;
- **pods**: an :class:`~control.client.informer.Informer` on Pods with
  ``fieldSelector=spec.nodeName=<node>``; whenever it changes (and every resync) the
  whole cached set is handed to :meth:`Agent.set_pods` (level-triggered);
- **status**: the agent's status sink merges ``status`` into the Pod through the
  ``status`` subresource, only while the cached Pod still has the same uid (a Pod
  deleted and recreated under the same name is a different Pod);
- **finalize**: once the agent has stopped a Pod marked for deletion, the finalize sink
  deletes it with ``gracePeriodSeconds=0`` and a uid precondition (the node role may do
  that for Pods bound to its node only);
- **events**: the event sink creates ``Event`` objects about the Pod (reason, message,
  type, source ``mesh-agent`` on this node).

Losing the API server is not fatal: the informer reconnects with back-off, the agent
keeps running what it has, and failed writes are retried on the next change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from control import __version__
from control.agent.agent import Agent
from control.agent.clock import Clock, SystemClock
from control.agent.node import NodeConditions, node_object, read_machine
from control.agent.pod_worker import EventType
from control.agent.runtime.base import ContainerRuntimeError, Runtime
from control.client import errors
from control.client.informer import Informer
from control.client.rest import ApiClient

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class ApiSync:
    """Registers and heartbeats one Node and feeds its Agent from the API server."""

    def __init__(self, api: ApiClient, *, node: str, address: str, runtime: Runtime,
                 data_dir: Path, labels: dict[str, str] | None = None,
                 heartbeat: float = 10.0, agent_port: int | None = None,
                 resync: float = 30.0, clock: Clock | None = None) -> None:
        self.api = api
        self.node = node
        self.address = address
        self.runtime = runtime
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.labels = dict(labels or {})
        self.heartbeat = heartbeat
        self.agent_port = agent_port
        self.clock = clock or SystemClock()
        self._conditions = NodeConditions()
        self.pods = Informer(api, "pods", field_selector=f"spec.nodeName={node}",
                             resync_period=resync)
        self._changed = asyncio.Event()
        self.heartbeats = 0  # counted for observability and tests

    # -- the Node ------------------------------------------------------------------

    async def _node_object(self) -> Obj:
        try:
            version = await self.runtime.version()
            ok, message = True, ""
        except ContainerRuntimeError as e:
            version, ok, message = self.runtime.name, False, str(e)
        machine = await asyncio.to_thread(read_machine, str(self.data_dir))
        conditions = self._conditions.render(machine, runtime_ok=ok, runtime_message=message,
                                             now=self.clock.wall())
        obj = node_object(self.node, address=self.address, labels=self.labels, m=machine,
                          conditions=conditions, runtime_version=f"{self.runtime.name}://"
                          f"{version}", agent_version=__version__)
        if self.agent_port is not None:
            obj["status"]["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self.agent_port}}
        return obj

    async def register(self) -> None:
        """Create this Node, or take over the existing one."""
        obj = await self._node_object()
        try:
            await self.api.create("nodes", obj)
            log.info("registered node %s", self.node)
        except errors.AlreadyExists:
            current = await self.api.get("nodes", self.node)
            labels = {**((current.get("metadata") or {}).get("labels") or {}),
                      **obj["metadata"]["labels"]}
            await self.api.patch("nodes", self.node, {"metadata": {"labels": labels}})
            log.info("node %s already registered: taking it over", self.node)
        # Status is written through its subresource (a create may drop it).
        await self.api.patch("nodes", self.node, {"status": obj["status"]},
                             subresource="status")
        self.heartbeats += 1

    async def heartbeat_once(self) -> None:
        obj = await self._node_object()
        await self.api.patch("nodes", self.node, {"status": obj["status"]},
                             subresource="status")
        self.heartbeats += 1

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.clock.sleep(self.heartbeat)
            try:
                await self.heartbeat_once()
            except errors.NotFound:
                log.warning("node %s was deleted: registering again", self.node)
                with contextlib.suppress(errors.ClientError):
                    await self.register()
            except errors.ClientError as e:
                log.warning("heartbeat failed: %s", e)

    # -- Pod status and Events (the Agent's sinks) ------------------------------------

    async def write_status(self, obj: Obj, status: Obj) -> None:
        meta = obj.get("metadata") or {}
        ns, name, uid = meta.get("namespace", "default"), meta.get("name"), meta.get("uid")
        current = self.pods.get(ns, name)
        if current is None or (current.get("metadata") or {}).get("uid") != uid:
            return  # deleted, or replaced by another Pod of the same name
        try:
            await self.api.patch("pods", name, {"status": status}, namespace=ns,
                                 subresource="status")
        except errors.NotFound:
            pass

    async def finalize_pod(self, obj: Obj) -> bool:
        """The end of a graceful delete: this Pod's containers are gone, so delete it
        with ``gracePeriodSeconds=0`` (the kubelet's final delete), for exactly this
        Pod (uid precondition: a new Pod of the same name is not touched)."""
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace", "default"), meta.get("name", "")
        try:
            await self.api.delete("pods", name, namespace=ns, uid=meta.get("uid"),
                                  grace_period_seconds=0)
        except (errors.NotFound, errors.Conflict):
            pass  # already gone, or replaced by another Pod of that name
        except errors.ClientError as e:
            log.warning("pod %s/%s: final delete failed (retrying): %s", ns, name, e)
            return False
        return True

    async def record_event(self, obj: Obj, kind: EventType, reason: str,
                           message: str) -> None:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace", "default")
        stamp = self.clock.wall().strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                         "namespace": ns},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns,
                               "name": meta.get("name"), "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "mesh-agent", "host": self.node},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.api.create("events", event, namespace=ns)
        except errors.ClientError as e:
            log.warning("event %s for %s/%s not recorded: %s", reason, ns,
                        meta.get("name"), e)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, agent: Agent, stop: asyncio.Event) -> None:
        """Register, then keep the agent's Pods in step with the API until ``stop``."""
        while not stop.is_set():
            try:
                await self.register()
                break
            except errors.ClientError as e:
                log.warning("registering node %s failed (retrying): %s", self.node, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)
        if stop.is_set():
            return
        changed = self._changed
        self.pods.add_handler(on_add=lambda _: changed.set(),
                              on_update=lambda _a, _b: changed.set(),
                              on_delete=lambda _: changed.set())
        self.pods.start()
        beat = asyncio.create_task(self._heartbeat_loop(), name="node heartbeat")
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                waiter = asyncio.create_task(changed.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
                if stop.is_set():
                    break
                changed.clear()
                if self.pods.has_synced:
                    await agent.set_pods(self.pods.list())
        finally:
            for t in (beat, stopper):
                t.cancel()
            await asyncio.gather(beat, stopper, return_exceptions=True)
            await self.pods.stop()
