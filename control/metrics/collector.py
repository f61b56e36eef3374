"""The collector: polls the node agents and the sidecars, pushes samples to the API server.

It runs inside the controller manager (``control/controllers/manager.py``, controller
name ``metrics``), so it is leader-elected like every controller and needs no process
of its own. Every ``interval`` seconds (:meth:`MetricsCollector.collect_once`):

1. for each Node (from the shared informer) it reads the agent's ``/stats/summary``
   (``control/agent/remote.py``; the agent's bearer token is ``agent_token``, or read
   from ``agent_token_file``, the agent's ``DATA_DIR/agent-token``, at the first round
   after it exists, so the collector may start before the agent has written it):
   per-container cumulative CPU (core-nanoseconds) and working-set memory;
2. for each meshed Pod it scrapes the sidecar's admin ``/metrics`` at the Pod's
   ``status.podIP`` and the host port the agent published for the sidecar's admin port
   (``status.portMappings``, container ``meshproxy``, container port 15000);
3. it keeps the raw cumulative readings of the last ``window`` seconds per container and
   per sidecar (plus the newest one before that, so a rate spans at least the window
   even when rounds run late) and turns oldest-vs-newest into rates: CPU in millicores, requests per
   second, p99 from the histogram buckets' difference (``scrape.py``). A Pod seen for the
   first time has no rate yet: it is reported from its second reading on, as Kubernetes'
   metrics-server does;
4. it POSTs all Pod and Node samples in one body to
   ``/apis/metrics.k8s.io/v1beta1/samples`` (``control/api/metrics_api.py``), where they
   are kept in memory for the HPA controller, ``meshctl top`` and ``meshctl capacity``.

An agent or a sidecar that does not answer costs only its own samples (logged at debug
level, counted in ``failures``): the affected Pods read as *missing* after the API's TTL,
which the HPA handles conservatively. Sidecars are found from the Pods bound to the node
(the informer), not from the agent's summary, so the mesh figures keep flowing when the
agent's API is unreachable or its token unknown. Node usage is the sum of its Pods'
usage (the agent's summary carries no node-wide figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from control.agent import sidecar
from control.agent.remote import AgentClient, AgentError, AgentUnreachable, endpoint_of
from control.client import errors
from control.client.factory import InformerFactory
from control.client.rest import ApiClient
from control.metrics.scrape import SidecarScrape, mesh_between, parse_sidecar
from control.metrics.window import ContainerUsage, NodeSample, PodSample, push_body

Obj = dict[str, Any]
log = logging.getLogger(__name__)

SAMPLES_PATH = "/apis/metrics.k8s.io/v1beta1/samples"
DEFAULT_INTERVAL = 5.0   # s between collections (metrics-server: 15 s; the mesh reacts faster)
DEFAULT_WINDOW = 30.0    # s of readings each rate is measured over
SCRAPE_TIMEOUT = 5.0     # s per agent or sidecar request


@dataclass(frozen=True, slots=True)
class _CpuReading:
    at: float
    core_ns: float
    memory: int


def sidecar_admin(pod: Obj) -> tuple[str, int] | None:
    """(host, port) of a meshed Pod's sidecar admin endpoint, from its status."""
    status = pod.get("status") or {}
    host = status.get("podIP")
    for m in status.get("portMappings") or ():
        if m.get("container") == sidecar.NAME and \
                int(m.get("containerPort", 0)) == sidecar.ADMIN_CONTAINER_PORT and \
                m.get("hostPort") and host:
            return host, int(m["hostPort"])
    return None


class MetricsCollector:
    """See the module docstring. ``run()`` loops; ``collect_once(now)`` is one round."""

    name = "metrics"

    def __init__(self, api: ApiClient, factory: InformerFactory, *,
                 agent_token: str | None = None, agent_token_file: Path | None = None,
                 interval: float = DEFAULT_INTERVAL,
                 window: float = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.time) -> None:
        if interval <= 0 or window <= 0:
            raise ValueError(f"interval and window must be > 0, got {interval}, {window}")
        self.api = api
        self.agent_token = agent_token
        self.agent_token_file = agent_token_file
        self.interval = interval
        self.window = window
        self.clock = clock
        self.nodes = factory.informer("nodes")
        self.pods = factory.informer("pods")
        self._cpu: dict[tuple[str, str], deque[_CpuReading]] = {}   # (pod uid, container)
        self._mesh: dict[str, deque[SidecarScrape]] = {}            # pod uid
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self.failures = 0   # agents/sidecars that did not answer, for tests and logs

    async def run(self) -> None:
        await self.nodes.wait_synced()
        await self.pods.wait_synced()
        try:
            while not self._stop.is_set():
                try:
                    await self.collect_once()
                except errors.ClientError as e:
                    log.warning("pushing metrics samples failed: %s", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
        finally:
            await self.close()

    def shutdown(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def collect_once(self, now: float | None = None) -> tuple[list[PodSample],
                                                                     list[NodeSample]]:
        """Read every agent and sidecar, push what has a rate; returns what was pushed."""
        now = self.clock() if now is None else now
        if self.agent_token is None and self.agent_token_file is not None:
            self.agent_token = self._read_token(self.agent_token_file)
        pods_by_uid = {(p.get("metadata") or {}).get("uid"): p for p in self.pods.list()}
        results = await asyncio.gather(*(self._node_round(n, now, pods_by_uid)
                                         for n in self.nodes.list()))
        pod_samples = [s for node_pods, _ in results for s in node_pods]
        node_samples = [n for _, n in results if n is not None]
        self._forget(set(pods_by_uid))
        if pod_samples or node_samples:
            await self.api.request("POST", SAMPLES_PATH, body=push_body(pod_samples,
                                                                         node_samples))
        return pod_samples, node_samples

    async def _node_round(self, node: Obj, now: float, pods_by_uid: dict[Any, Obj]
                          ) -> tuple[list[PodSample], NodeSample | None]:
        node_name = node["metadata"]["name"]
        entries: dict[str, Obj] = {}   # pod uid -> the agent's summary entry
        try:
            url = endpoint_of(node)
            async with AgentClient(url, self.agent_token, timeout=SCRAPE_TIMEOUT) as agent:
                summary = await agent.stats()
            for e in summary.get("pods") or ():
                uid = ((e.get("podRef") or {}).get("uid")) if isinstance(e, dict) else None
                if uid:
                    entries[uid] = e
        except ValueError:
            pass  # the Node does not advertise its agent API (yet): sidecars only
        except (AgentError, AgentUnreachable) as e:
            self.failures += 1
            log.debug("no stats from node %s: %s", node_name, e)
        # The Pods bound here (for their sidecars, which need no agent) and any the agent
        # runs that the informer has not seen yet (for their usage).
        bound = {uid: p for uid, p in pods_by_uid.items()
                 if (p.get("spec") or {}).get("nodeName") == node_name}
        uids = sorted({*entries, *bound})
        samples = await asyncio.gather(*(
            self._pod_sample(uid, entries.get(uid), bound.get(uid), node_name, now)
            for uid in uids))
        out = [s for s in samples if s is not None]
        with_usage = [s for s in out if s.containers]
        if not with_usage:
            return out, None
        return out, NodeSample(node_name, now, self.window,
                               sum(s.cpu_millis for s in with_usage),
                               sum(s.memory_bytes for s in with_usage))

    async def _pod_sample(self, uid: str, entry: Obj | None, pod: Obj | None, node: str,
                          now: float) -> PodSample | None:
        if entry is not None:
            ref = entry.get("podRef") or {}
            ns, name = ref.get("namespace"), ref.get("name")
        else:
            md = (pod or {}).get("metadata") or {}
            ns, name = md.get("namespace"), md.get("name")
        if not (ns and name):
            return None
        containers = []
        span = 0.0
        for c in (entry or {}).get("containers") or ():
            try:
                reading = _CpuReading(now, float(c["cpu"]["usageCoreNanoSeconds"]),
                                      int(c["memory"]["workingSetBytes"]))
            except (KeyError, TypeError, ValueError):
                continue
            q = self._remember(self._cpu, (uid, c.get("name", "")), reading, now)
            oldest = q[0]
            if oldest.at >= now or reading.core_ns < oldest.core_ns:
                continue  # first reading, or the container restarted: no rate yet
            span = max(span, now - oldest.at)
            millis = (reading.core_ns - oldest.core_ns) / (now - oldest.at) / 1e6
            containers.append(ContainerUsage(c.get("name", ""), millis, reading.memory))
        mesh = None
        admin = sidecar_admin(pod) if pod is not None else None
        if admin is not None:
            scrape = await self._scrape(admin, now)
            if scrape is not None:
                q = self._remember(self._mesh, uid, scrape, now)
                mesh = mesh_between(q[0], scrape)
                span = max(span, now - q[0].at)
        if not containers and mesh is None:
            return None
        return PodSample(namespace=ns, name=name, timestamp=now, window=span or self.window,
                         containers=tuple(containers), node=node, mesh=mesh)

    def _remember(self, table: dict[Any, deque], key: Any, reading: Any, now: float) -> deque:
        """Append ``reading``; keep as the oldest the newest reading at or before the
        window's start, so a rate always spans at least the window when earlier readings
        exist (slow or failed rounds stretch the span instead of losing the rate)."""
        q = table.setdefault(key, deque())
        q.append(reading)
        while len(q) > 1 and q[1].at <= now - self.window:
            q.popleft()
        return q

    async def _scrape(self, admin: tuple[str, int], now: float) -> SidecarScrape | None:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT))
        host, port = admin
        try:
            async with self._http.get(f"http://{host}:{port}/metrics") as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                text = await resp.text()
            return parse_sidecar(text, now)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            self.failures += 1
            log.debug("no metrics from sidecar %s:%s: %s", host, port, e)
            return None

    @staticmethod
    def _read_token(path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except OSError:
            return None  # the agent has not written it yet: try again next round

    def _forget(self, live_uids: set[Any]) -> None:
        """Drop the readings of Pods that no longer exist."""
        for key in [k for k in self._cpu if k[0] not in live_uids]:
            del self._cpu[key]
        for uid in [u for u in self._mesh if u not in live_uids]:
            del self._mesh[uid]
