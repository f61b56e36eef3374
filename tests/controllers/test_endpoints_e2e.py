"""The endpoints controller end to end: a Service's Endpoints follow its Pods' readiness
through the real API server. The test plays the node: it reports Pods Running/Ready with
the agent's ``podIP`` and ``portMappings`` through the status subresource."""

from __future__ import annotations

import asyncio
import logging

from controller_kit import Cluster, auto_ready, deployment, fast_config, running, wait_for

log = logging.getLogger(__name__)

SERVICE = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def _names(ep: dict, field: str) -> list[str]:
    return sorted(a["targetRef"]["name"] for s in ep.get("subsets") or ()
                  for a in s.get(field) or ())


async def test_endpoints_follow_pod_readiness(cluster: Cluster) -> None:
    """Ready Pods are listed under addresses with their published host port, a Pod that
    turns not ready moves to notReadyAddresses, and deleting the Service removes its
    Endpoints. The delay from each status write to the Endpoints change is measured
    and logged (not asserted: the machine is shared)."""
    await cluster.add_node("n0")
    api = cluster.client
    async with running(cluster, fast_config(controllers=("scheduler", "replicaset",
                                                         "deployment", "endpoints"))):
        await api.create("services", SERVICE)
        await api.create("deployments", deployment("web", 2))

        async def bound() -> list[dict]:
            pods = await cluster.pods("app=web")
            return pods if len(pods) == 2 and all(p["spec"].get("nodeName")
                                                  for p in pods) else []
        a, b = sorted(await wait_for(bound, what="2 bound pods"),
                      key=lambda p: p["metadata"]["name"])
        a_name, b_name = a["metadata"]["name"], b["metadata"]["name"]
        loop = asyncio.get_running_loop()

        async def endpoints_are(ready: list[str], not_ready: list[str]) -> dict | None:
            try:
                ep = await api.get("endpoints", "web", namespace="default")
            except Exception:
                return None
            ok = _names(ep, "addresses") == ready and _names(ep, "notReadyAddresses") == \
                not_ready
            return ep if ok else None

        start = loop.time()
        pod_a = await cluster.set_pod_ready(a_name)
        ep = await wait_for(lambda: endpoints_are([a_name], []), interval=0.01,
                            what="a ready")
        log.info("endpoints followed a ready pod in %.3fs", loop.time() - start)
        port = pod_a["status"]["portMappings"][0]["hostPort"]
        assert ep["subsets"][0]["ports"] == [{"name": "http", "port": port,
                                              "protocol": "TCP"}]
        assert ep["subsets"][0]["addresses"][0]["ip"] == "127.0.0.1"
        assert ep["subsets"][0]["addresses"][0]["nodeName"] == "n0"

        await cluster.set_pod_ready(b_name)
        await wait_for(lambda: endpoints_are(sorted([a_name, b_name]), []), interval=0.01,
                       what="both ready")
        start = loop.time()
        await cluster.set_pod_ready(a_name, ready=False)
        await wait_for(lambda: endpoints_are([b_name], [a_name]), interval=0.01,
                       what="a not ready")
        log.info("endpoints followed a not-ready pod in %.3fs", loop.time() - start)

        await api.delete("services", "web", namespace="default")

        async def gone() -> bool:
            items, _ = await api.list_all("endpoints", namespace="default")
            return all(i["metadata"]["name"] != "web" for i in items)
        await wait_for(gone, what="endpoints collected with their service")


async def test_two_release_tracks_behind_one_service(cluster: Cluster) -> None:
    """The canary case: a stable and a canary Deployment whose Pods share ``app=web``
    but differ in ``track``. Each keeps exactly its own replica count (no fight over
    Pods: ownership is by owner reference, not by labels) and the Service's Endpoints
    list the ready Pods of both tracks."""
    await cluster.add_node("n0")
    api = cluster.client
    async with running(cluster, fast_config(controllers=("scheduler", "replicaset",
                                                         "deployment", "endpoints"))), \
            auto_ready(cluster):
        await api.create("services", SERVICE)
        stable = deployment("web-stable", 3, labels={"app": "web", "track": "stable"})
        canary = deployment("web-canary", 1, labels={"app": "web", "track": "canary"})
        await api.create("deployments", stable)
        await api.create("deployments", canary)

        async def both_tracks_listed() -> dict | None:
            try:
                ep = await api.get("endpoints", "web", namespace="default")
            except Exception:
                return None
            return ep if len(_names(ep, "addresses")) == 4 else None
        ep = await wait_for(both_tracks_listed, what="4 ready endpoints")
        names = _names(ep, "addresses")
        assert sum(1 for n in names if n.startswith("web-stable-")) == 3
        assert sum(1 for n in names if n.startswith("web-canary-")) == 1
        await asyncio.sleep(0.5)  # a fight between the two would show as churn here
        assert len(await cluster.pods("app=web,track=stable")) == 3
        assert len(await cluster.pods("app=web,track=canary")) == 1
