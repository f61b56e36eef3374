"""Instruments of the end-to-end benchmark (``e2e_bench.py``): what it sees the system do.

- :class:`PageStream` loads the demo's page through the edge at a fixed rate (open loop:
  request *i* goes out at ``t0 + i / rate`` whatever earlier answers do) and records,
  per page, its status and which catalog Pod served its catalog part (``served_by``);
- :class:`Watch` is fed by informers on the Pods and Endpoints and stamps, on this
  process's monotonic clock, when a catalog Pod turns Ready or not Ready and when its
  address enters or leaves the ``catalog`` Endpoints (a condition's
  ``lastTransitionTime`` has only 1 s resolution);
- :func:`app_process` finds a Pod's app process on the process runtime (the container
  directory's ``meta.json`` names Pod and container, ``pid`` the shim, whose child is
  the command), so the benchmark can SIGKILL it;
- :func:`sidecar_counters` sums the frontends' sidecar metrics about catalog (failed
  attempts, retries, outlier ejections) and the TrafficPolicy updates they applied.

Neighbours: ``e2e_bench.py`` drives the phases and writes the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtests.samples import Samples

Obj = dict[str, Any]

NS = "default"
CATALOG = "catalog"
CLUSTER = f"{NS}.{CATALOG}"  # the frontends' sidecar cluster following the Service
ROUTE = f"out-{CLUSTER}/{CATALOG}"  # its route, as the policy metrics label it


class BenchError(RuntimeError):
    """A wait ran out or the system misbehaved; the message says what was awaited."""


@dataclass
class Hit:
    """One page load through the edge."""

    sent: float            # scheduled send time (monotonic)
    done: float
    status: int            # 0: no answer (connection error, timeout)
    catalog_by: str | None  # the catalog Pod that answered the frontend
    catalog_ok: bool
    catalog_timeout: bool = False  # the frontend's own 3 s upstream timeout ran out
    frontend_answered: bool = False  # the body is a frontend's page (else edge or none)

    @property
    def catalog_failed(self) -> bool:
        """A frontend answered and its catalog part is an error, not items."""
        return self.frontend_answered and not self.catalog_ok


class PageStream:
    """Open-loop page loads through the edge at a fixed rate, one :class:`Hit` each.

    Requests are scheduled at fixed times and never wait for earlier answers, so a
    stall or a lost replica shows as failed or late pages instead of fewer pages.
    ``first_by`` keeps, per catalog Pod, when the first page it served came back."""

    def __init__(self, session: aiohttp.ClientSession, url: str, rate: float) -> None:
        self.session, self.url, self.rate = session, url, rate
        self.hits: list[Hit] = []
        self.first_by: dict[str, float] = {}
        self.seen = asyncio.Event()  # set on every answer: waiters re-check
        self._tasks: set[asyncio.Task] = set()

    async def run(self, until: Callable[[float], bool]) -> None:
        """Send until ``until(elapsed)`` is true, then wait for the answers in flight."""
        start, i = time.monotonic(), 0
        try:
            while not until(time.monotonic() - start):
                due = start + i / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                t = asyncio.create_task(self._one(due))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
                i += 1
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def latency(self) -> dict[str, float]:
        """Page latency from the scheduled send time (ms): a queue shows here."""
        s = Samples()
        s.extend(h.done - h.sent for h in self.hits)
        return s.summary(percentiles=(50, 99)) if len(s) else {"count": 0}

    async def _one(self, sent: float) -> None:
        status, by, ok, timeout, frontend = 0, None, False, False, False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError,
                                 AttributeError):
            async with self.session.get(self.url) as r:
                body = await r.read()
                status = r.status
            page = json.loads(body)
            frontend = str(page.get("served_by", "")).startswith("frontend-")
            cat = page.get("catalog")
            if isinstance(cat, dict):
                by = cat.get("served_by")
                ok = "items" in cat
            # The frontend puts its client's exception text where the answer would be.
            timeout = isinstance(cat, str) and cat.startswith("TimeoutError")
        done = time.monotonic()
        self.hits.append(Hit(sent, done, status, by, ok, timeout, frontend))
        if by is not None and by not in self.first_by:
            self.first_by[by] = done
        self.seen.set()


class Watch:
    """This process's view of the catalog Pods and Endpoints, stamped on arrival."""

    def __init__(self) -> None:
        self.pods: dict[str, Obj] = {}
        self.created: dict[str, float] = {}
        self.ready_since: dict[str, float] = {}     # pod -> when last seen turning Ready
        self.unready_since: dict[str, float] = {}   # pod -> when last seen turning not Ready
        self.addresses: set[str] = set()
        self.added_at: dict[str, float] = {}        # pod -> its address last appeared
        self.removed_at: dict[str, float] = {}      # pod -> its address last disappeared
        self.restarts: dict[str, int] = {}          # every Pod -> its containers' restarts
        self.changed = asyncio.Event()

    def on_pod(self, pod: Obj) -> None:
        name, now = pod["metadata"]["name"], time.monotonic()
        self.restarts[name] = restarts(pod)
        if pod["metadata"].get("labels", {}).get("app") != CATALOG:
            return
        self.created.setdefault(name, now)
        was = ready(self.pods.get(name))
        self.pods[name] = pod
        if ready(pod) and not was:
            self.ready_since[name] = now
        elif was and not ready(pod):
            self.unready_since[name] = now
        self.changed.set()

    def on_pod_gone(self, pod: Obj) -> None:
        self.pods.pop(pod["metadata"]["name"], None)
        self.changed.set()

    def on_endpoints(self, ep: Obj) -> None:
        if ep["metadata"]["name"] != CATALOG:
            return
        now = time.monotonic()
        names = {a.get("targetRef", {}).get("name", a.get("ip", "?"))
                 for s in ep.get("subsets") or [] for a in s.get("addresses") or []}
        for n in names - self.addresses:
            self.added_at[n] = now
        for n in self.addresses - names:
            self.removed_at[n] = now
        self.addresses = names
        self.changed.set()

    def live(self) -> list[str]:
        return sorted(n for n, p in self.pods.items()
                      if not p["metadata"].get("deletionTimestamp"))


def ready(pod: Obj | None) -> bool:
    if not pod:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


async def until(check: Callable[[], Any], events: list[asyncio.Event], timeout: float,
                what: str) -> Any:
    """Wait until ``check()`` is truthy (re-checked when any event fires, or every
    0.1 s); return its value or raise :class:`BenchError` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        for e in events:
            e.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=min(left, 0.1))
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
    return value


def app_process(agent_dir: Path, pod: str, container: str = "app") -> int:
    """The pid of ``container``'s command in ``pod`` on the process runtime: the child
    of the shim whose pid file belongs to the live container of that name."""
    for meta_path in sorted((agent_dir / "process").glob("containers/*/meta.json")):
        d = meta_path.parent
        if (d / "exit").exists() or not (d / "pid").exists():
            continue
        labels = json.loads(meta_path.read_text()).get("labels", {})
        if labels.get("mesh.pod.name") != pod or labels.get("mesh.container.name") != container:
            continue
        shim = json.loads((d / "pid").read_text())["pid"]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_bytes()
                    if int(stat[stat.rfind(b")") + 2:].split()[1]) == shim:
                        return int(entry)
    raise BenchError(f"no running {container!r} process of Pod {pod} under {agent_dir}")


async def sidecar_counters(session: aiohttp.ClientSession, admin_ports: list[int]) -> dict:
    """Sum over the frontends' sidecars: catalog attempts failed, retries, ejections,
    policy updates applied."""
    out = {"catalog_attempts_5xx": 0.0, "catalog_attempt_errors": 0.0,
           "catalog_retries": 0.0, "catalog_ejections": 0.0, "policies_applied": 0.0}
    for port in admin_ports:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                lb = s.labels
                if s.name == "meshproxy_upstream_requests_total" and lb.get(
                        "cluster") == CLUSTER and lb.get("code_class") == "5xx":
                    out["catalog_attempts_5xx"] += s.value
                elif s.name == "meshproxy_upstream_errors_total" and lb.get("cluster") == CLUSTER:
                    out["catalog_attempt_errors"] += s.value
                elif s.name == "meshproxy_route_retries_total" and lb.get("route") == ROUTE:
                    out["catalog_retries"] += s.value
                elif (s.name == "meshproxy_outlier_ejections_total"
                      and lb.get("cluster") == CLUSTER):
                    out["catalog_ejections"] += s.value
                elif (s.name == "meshproxy_discovery_policy_updates_total"
                      and lb.get("result") == "applied"):
                    out["policies_applied"] += s.value
    return out


def by_status(hits: list[Hit]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hits:
        if h.status != 200:
            key = str(h.status or "no answer")
            out[key] = out.get(key, 0) + 1
    return out


def restarts(pod: Obj) -> int:
    return sum(int(c.get("restartCount", 0))
               for c in pod.get("status", {}).get("containerStatuses") or [])
