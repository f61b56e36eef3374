"""The endpoints controller end to end: a Service's Endpoints follow its Pods' readiness
through the real API server. The test plays the node: it reports Pods Running/Ready with
the agent's ``podIP`` and ``portMappings`` through the status subresource."""

from __future__ import annotations

import asyncio
import logging

from controller_kit import Cluster, deployment, fast_config, running, wait_for

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
