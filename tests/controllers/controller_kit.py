"""A real cluster for controller tests: the API server on SQLite, in-process, and helpers
that play the parts nobody runs here.

There are no agents in these tests. :class:`Cluster` *plays the nodes*: it registers Node
objects, heartbeats them (a status write with a fresh ``lastHeartbeatTime``, as the agent
does) and reports Pods Running and Ready through the ``status`` subresource with the
agent's conventions (``podIP`` = the node address, ``portMappings``). Everything else is
real: the API server, its store file, its garbage collector, the REST client, informers,
and the controllers under test.

``running(cluster, config)`` runs a :class:`ControllerManager` in the test's loop for the
duration of an ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from control.api import ApiServer, ApiServerConfig
from control.client.config import ClientConfig
from control.client.rest import ApiClient
from control.controllers.manager import ControllerManager, ManagerConfig

Obj = dict[str, Any]
T = TypeVar("T")


def now_stamp() -> str:
    # Microseconds, so two heartbeats within one second still differ.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pod_template(labels: dict[str, str], *, cpu: str = "100m", memory: str = "64Mi",
                 image: str = "busybox:1", port: int | None = 8080,
                 extra_spec: Obj | None = None) -> Obj:
    container: Obj = {"name": "app", "image": image,
                      "resources": {"requests": {"cpu": cpu, "memory": memory}}}
    if port:
        container["ports"] = [{"name": "http", "containerPort": port}]
    return {"metadata": {"labels": dict(labels)},
            "spec": {"containers": [container], **(extra_spec or {})}}


def deployment(name: str, replicas: int, *, labels: dict[str, str] | None = None,
               strategy: Obj | None = None, **template_kw: Any) -> Obj:
    labels = labels or {"app": name}
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": pod_template(labels, **template_kw)}
    if strategy:
        spec["strategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


class Cluster:
    """The API server plus an admin client; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: ApiServer | None = None
        self.api: ApiClient | None = None
        self._host_ports: dict[str, int] = {}

    async def __aenter__(self) -> Cluster:
        self.server = ApiServer(ApiServerConfig(data_dir=self.data_dir, port=0,
                                                bookmark_interval=0.5))
        await self.server.start()
        self.api = ApiClient(self.client_config())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.api is not None:
            await self.api.close()
        if self.server is not None:
            await self.server.stop()

    def client_config(self) -> ClientConfig:
        assert self.server is not None
        return ClientConfig(server=self.server.url, token=self.server.admin_token,
                            ca_file=str(self.server.ca_file))

    @property
    def client(self) -> ApiClient:
        assert self.api is not None
        return self.api

    # -- playing the nodes -------------------------------------------------------------

    async def add_node(self, name: str, *, cpu: str = "4", memory: str = "8Gi",
                       pods: str = "110", labels: dict[str, str] | None = None,
                       taints: list[Obj] | None = None, ready: bool = True,
                       address: str = "127.0.0.1") -> Obj:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                      **(labels or {})}},
                "spec": {"taints": taints} if taints else {},
                "status": {"capacity": {"cpu": cpu, "memory": memory, "pods": pods},
                           "allocatable": {"cpu": cpu, "memory": memory, "pods": pods},
                           "addresses": [{"type": "InternalIP", "address": address}],
                           "conditions": [self._ready_condition(ready)]}}
        return await self.client.create("nodes", node)

    @staticmethod
    def _ready_condition(ready: bool) -> Obj:
        stamp = now_stamp()
        return {"type": "Ready", "status": "True" if ready else "False",
                "reason": "AgentReady" if ready else "RuntimeUnavailable",
                "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}

    async def heartbeat(self, name: str, *, ready: bool = True) -> None:
        node = await self.client.get("nodes", name)
        conds = [c for c in node["status"].get("conditions") or () if c["type"] != "Ready"]
        conds.append(self._ready_condition(ready))
        await self.client.patch("nodes", name, {"status": {"conditions": conds}},
                                subresource="status")

    async def set_pod_ready(self, pod: Obj | str, ready: bool = True) -> Obj:
        """Report the Pod Running (and Ready or not) as its node's agent would."""
        name = pod if isinstance(pod, str) else pod["metadata"]["name"]
        current = await self.client.get("pods", name, namespace="default")
        mappings = []
        for c in current["spec"]["containers"]:
            for p in c.get("ports") or ():
                port = self._host_ports.setdefault(
                    current["metadata"]["uid"] + str(p["containerPort"]),
                    30000 + len(self._host_ports))
                mappings.append({"containerPort": p["containerPort"], "hostPort": port,
                                 "protocol": p.get("protocol", "TCP")})
        status = copy.deepcopy(current.get("status") or {})
        conds = [c for c in status.get("conditions") or () if c["type"] != "Ready"]
        conds.append({"type": "Ready", "status": "True" if ready else "False",
                      "lastTransitionTime": now_stamp()})
        status.update(phase="Running", podIP="127.0.0.1", hostIP="127.0.0.1",
                      conditions=conds, portMappings=mappings)
        return await self.client.patch("pods", name, {"status": status},
                                       namespace="default", subresource="status")

    # -- reading -----------------------------------------------------------------------

    async def pods(self, label_selector: str | None = None) -> list[Obj]:
        items, _ = await self.client.list_all("pods", namespace="default",
                                              label_selector=label_selector)
        return items

    async def events(self, reason: str | None = None) -> list[Obj]:
        items, _ = await self.client.list_all("events", namespace="default")
        return [e for e in items if reason is None or e.get("reason") == reason]


async def wait_for(check: Callable[[], Awaitable[T]], *, timeout: float = 30.0,
                   interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds
    (generous: the machine is shared; nothing here asserts wall-clock time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def fast_config(**kw: Any) -> ManagerConfig:
    """A manager for tests: no election unless asked, quick node monitor."""
    kw.setdefault("leader_elect", False)
    kw.setdefault("node_monitor_period", 0.1)
    kw.setdefault("resync_period", None)
    return ManagerConfig(**kw)


@contextlib.asynccontextmanager
async def running(cluster: Cluster, config: ManagerConfig | None = None
                  ) -> AsyncIterator[ControllerManager]:
    """Run a controller manager in this loop until the block ends."""
    manager = ControllerManager(cluster.client_config(), config or fast_config())
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop), name="test-manager")
    waiter = asyncio.create_task(manager.leading.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30,
                                 return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        task.result()
        raise AssertionError("the controller manager ended before it started leading")
    try:
        yield manager
    finally:
        stop.set()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def auto_ready(cluster: Cluster, *, only: Callable[[Obj], bool] | None = None,
                     finalize: bool = True) -> AsyncIterator[None]:
    """Play the agents: every bound, not-yet-ready Pod (that ``only`` accepts) is
    reported Running and Ready shortly after it is bound, and (``finalize``) every bound
    Pod marked for deletion is deleted with ``gracePeriodSeconds=0`` right away, as its
    agent does once it has stopped the containers (a graceful delete otherwise leaves it
    Terminating, as Kubernetes does without a kubelet)."""
    from control.client.informer import Informer
    from control.controllers.nodelifecycle import force_delete_pod

    done: set[str] = set()
    finalized: set[str] = set()
    informer = Informer(cluster.client, "pods", namespace="default")
    wake = asyncio.Event()
    informer.add_handler(on_add=lambda _p: wake.set(), on_update=lambda _o, _n: wake.set())

    async def loop() -> None:
        while True:
            await wake.wait()
            wake.clear()
            for pod in informer.list():
                uid = pod["metadata"]["uid"]
                if pod["metadata"].get("deletionTimestamp") and finalize \
                        and pod["spec"].get("nodeName") and uid not in finalized:
                    finalized.add(uid)
                    with contextlib.suppress(Exception):  # gone meanwhile
                        await force_delete_pod(cluster.client, pod)
                    continue
                if (uid in done or not pod["spec"].get("nodeName")
                        or pod["metadata"].get("deletionTimestamp")
                        or (only is not None and not only(pod))):
                    continue
                done.add(uid)
                with contextlib.suppress(Exception):  # deleted meanwhile
                    await cluster.set_pod_ready(pod)
    async with informer:
        task = asyncio.create_task(loop(), name="auto-ready")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def heartbeats(cluster: Cluster, alive: set[str], *, period: float = 0.2
                     ) -> AsyncIterator[set[str]]:
    """Play the agents' heartbeats: every ``period`` seconds each node named in ``alive``
    (a set the test may change meanwhile) posts a fresh Ready status."""
    async def loop() -> None:
        while True:
            for name in sorted(alive):
                with contextlib.suppress(Exception):  # a node the test deleted
                    await cluster.heartbeat(name)
            await asyncio.sleep(period)
    task = asyncio.create_task(loop(), name="heartbeats")
    try:
        yield alive
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class RecordingClient(ApiClient):
    """The real REST client, noting every write it sends: ``(verb, path, body)``.

    Not a double: each request still goes to the API server. It lets a controller test
    assert the exact actions one reconcile took, as sample-controller's tests do.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.actions: list[tuple[str, str, Any]] = []

    async def request(self, method: str, url: str, **kw: Any) -> Any:
        if method != "GET":
            self.actions.append((method, url, copy.deepcopy(kw.get("body"))))
        return await super().request(method, url, **kw)

    def writes(self, *, without_events: bool = True) -> list[tuple[str, str]]:
        """(verb, path) of the writes, Events left out (they are written asynchronously)."""
        return [(m, u) for m, u, _ in self.actions
                if not (without_events and "/events" in u)]

    def bodies(self, method: str, suffix: str) -> list[Any]:
        return [b for m, u, b in self.actions if m == method and u.endswith(suffix)]
