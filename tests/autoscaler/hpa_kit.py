"""A real API server for the autoscaler tests, and the parts nobody runs here.

Everything the controller talks to is real: the API server in this test's loop on a
SQLite file, its metrics API, the REST client, informers and the Event recorder. No
controller manager and no agent run: the helpers *play* them — they create the target's
Pods and report them Running/Ready through the ``status`` subresource (as an agent
does), and push metrics samples to ``/apis/metrics.k8s.io/v1beta1/samples`` (as the
collector does). ``frozen_hpa`` builds an :class:`HPAController` whose informers were
synced once and stopped, so ``reconcile`` sees exactly the seeded objects, on a manual
clock the test moves.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.api import ApiServer, ApiServerConfig, serve
from control.api.auth import User
from control.autoscaler.controller import HPAController
from control.client.config import ClientConfig
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.controllers.events import EventRecorder
from control.metrics.window import ContainerUsage, MeshSample, PodSample, push_body

Obj = dict[str, Any]
NS = "default"
TOKENS = {"viewer-token-0123456789": User("alice", frozenset({"viewer"})),
          "node1-token-0123456789ab": User("system:node:node-1", frozenset({"node"})),
          "proxy-token-0123456789ab": User("sidecar", frozenset({"proxy"}))}


@asynccontextmanager
async def api_server(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with serve(ApiServerConfig(data_dir=data_dir, port=0, tls=False,
                                     tokens=TOKENS)) as server:
        yield server


def client_config(server: ApiServer, token: str | None = None) -> ClientConfig:
    return ClientConfig(server=server.url, token=token or server.admin_token)


@dataclass
class Clock:
    """Seconds the test moves by hand (the normaliser's clock)."""

    t: float = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Seeder:
    """Plays the agent and the collector against the API."""

    api: ApiClient
    _last_push: float = field(default=0.0)

    async def deployment(self, name: str, replicas: int, *, cpu: str | None = "100m",
                         memory: str = "64Mi") -> Obj:
        requests = {"memory": memory, **({"cpu": cpu} if cpu else {})}
        labels = {"app": name}
        body = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": {
                             "containers": [{"name": "app", "image": "busybox:1",
                                             "resources": {"requests": requests}}]}}}}
        return await self.api.create("deployments", body, namespace=NS)

    async def pods(self, app: str, n: int, *, ready: bool = True, start: int = 0,
                   cpu: str | None = "100m") -> list[str]:
        names = []
        for i in range(start, start + n):
            name = f"{app}-{i}"
            requests = {"memory": "64Mi", **({"cpu": cpu} if cpu else {})}
            await self.api.create("pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
                "spec": {"nodeName": "node-1", "containers": [{
                    "name": "app", "image": "busybox:1",
                    "resources": {"requests": requests}}]}}, namespace=NS)
            await self.api.patch("pods", name, {"status": {
                "phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}},
                namespace=NS, subresource="status")
            names.append(name)
        return names

    async def hpa(self, name: str, *, metrics: list[Obj], min_replicas: int = 1,
                  max_replicas: int = 10, behavior: Obj | None = None) -> Obj:
        spec: Obj = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": name},
                     "minReplicas": min_replicas, "maxReplicas": max_replicas,
                     "metrics": metrics}
        if behavior:
            spec["behavior"] = behavior
        return await self.api.create("horizontalpodautoscalers", {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}, namespace=NS)

    async def push(self, usage: dict[str, float] | None = None, *,
                   mesh: dict[str, MeshSample] | None = None,
                   memory: dict[str, int] | None = None) -> None:
        """One sample per Pod: ``usage`` in CPU millicores, ``mesh`` the sidecar's view."""
        now = max(time.time(), self._last_push + 0.001)  # strictly increasing
        self._last_push = now
        names = sorted({*(usage or {}), *(mesh or {}), *(memory or {})})
        samples = []
        for n in names:
            containers = ()
            if (usage is not None and n in usage) or (memory is not None and n in memory):
                containers = (ContainerUsage("app", (usage or {}).get(n, 0.0),
                                             (memory or {}).get(n, 32 * 2**20)),)
            samples.append(PodSample(NS, n, now, 30.0, containers, "node-1",
                                     (mesh or {}).get(n)))
        await self.api.request("POST", "/apis/metrics.k8s.io/v1beta1/samples",
                               body=push_body(samples))

    async def scale_of(self, name: str) -> int:
        scale = await self.api.get_scale("deployments", name, namespace=NS)
        return int(scale["spec"]["replicas"])

    async def hpa_status(self, name: str) -> Obj:
        return (await self.api.get("horizontalpodautoscalers", name, namespace=NS))["status"]

    async def events(self, reason: str | None = None) -> list[str]:
        items, _ = await self.api.list_all("events", namespace=NS)
        items.sort(key=lambda e: e["metadata"]["creationTimestamp"])
        return [e["message"] for e in items if reason is None or e["reason"] == reason]


def condition(status: Obj, ctype: str) -> tuple[str, str, str]:
    c = next(c for c in status["conditions"] if c["type"] == ctype)
    return c["status"], c["reason"], c["message"]


@asynccontextmanager
async def frozen_hpa(server: ApiServer, clock: Clock) -> AsyncIterator[
        tuple[HPAController, EventRecorder]]:
    api = ApiClient(client_config(server))
    factory = InformerFactory(api)
    recorder = EventRecorder(api, "horizontal-pod-autoscaler")
    controller = HPAController(api, factory, recorder, clock=clock)
    factory.start()
    await factory.wait_synced(timeout=30)
    await factory.stop()
    recorder.start()
    try:
        yield controller, recorder
    finally:
        await recorder.stop()
        await api.close()
