"""The metrics API on the real API server: what the collector pushes is served in the
shape of Kubernetes' metrics.k8s.io/v1beta1 (plus the mesh's figures), readable by
admin and viewer only, writable by admin and by a node for its own Pods; bad pushes are
refused whole with the field named; a Pod silent for longer than the TTL is missing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from metrics_kit import ROLE, api_server, call

from control.api import ApiServer
from control.metrics.window import (
    DEFAULT_TTL,
    ContainerUsage,
    MeshSample,
    NodeSample,
    PodSample,
    push_body,
)

PODS = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"
PUSH = "/apis/metrics.k8s.io/v1beta1/samples"


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with api_server(data_dir) as s:
        yield s


def sample(name: str, *, at: float | None = None, cpu: float = 250.0,
           mesh: MeshSample | None = None) -> PodSample:
    return PodSample("default", name, time.time() if at is None else at, 30.0,
                     (ContainerUsage("app", cpu, 64 * 2**20),), "node-1", mesh)


async def test_pushed_samples_are_served_in_the_metrics_api_shape(server: ApiServer) -> None:
    """Usage per container in millicores and Ki like Kubernetes; the mesh object for meshed
    Pods; Node usage; discovery lists both resources."""
    body = push_body([sample("web-0", mesh=MeshSample(12.5, 0.12, 3.0, 375)),
                      sample("web-1", cpu=100.4)],
                     [NodeSample("node-1", time.time(), 30.0, 350.4, 128 * 2**20)])
    status, out = await call(server, "POST", PUSH, server.admin_token, body)
    assert status == 201, out
    status, pods = await call(server, "GET", PODS, ROLE["viewer"])
    assert status == 200
    assert pods["kind"] == "PodMetricsList"
    web0, web1 = pods["items"]
    assert web0["metadata"] == {"name": "web-0", "namespace": "default",
                                "creationTimestamp": web0["timestamp"]}
    assert web0["containers"] == [{"name": "app", "usage": {"cpu": "250m",
                                                            "memory": "65536Ki"}}]
    assert web0["window"] == "30s"
    assert web0["mesh"] == {"requestsPerSecond": 12.5, "latencyP99Seconds": 0.12,
                            "inFlight": 3.0, "requests": 375}
    assert "mesh" not in web1
    assert web1["containers"][0]["usage"]["cpu"] == "101m"
    status, node = await call(server, "GET", "/apis/metrics.k8s.io/v1beta1/nodes/node-1",
                              ROLE["viewer"])
    assert status == 200
    assert node["usage"] == {"cpu": "351m", "memory": "131072Ki"}
    status, disc = await call(server, "GET", "/apis/metrics.k8s.io/v1beta1", ROLE["viewer"])
    assert [r["name"] for r in disc["resources"]] == ["pods", "nodes"]


async def test_reading_and_pushing_follow_the_roles(server: ApiServer) -> None:
    """No token: 401. A proxy may neither read nor push; a viewer may read but not push; a
    node may push only for Pods bound to it (checked in the store)."""
    body = push_body([sample("web-0")])
    assert (await call(server, "GET", PODS, None))[0] == 401
    assert (await call(server, "GET", PODS, ROLE["proxy"]))[0] == 403
    assert (await call(server, "POST", PUSH, ROLE["viewer"], body))[0] == 403
    status, out = await call(server, "POST", PUSH, ROLE["node-1"], body)
    assert status == 403
    assert "not bound to node 'node-1'" in out["message"]
    assert (await call(server, "GET", PODS, server.admin_token))[1]["items"] == []
    await call(server, "POST", "/api/v1/namespaces/default/pods", server.admin_token, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "x"}]}})
    assert (await call(server, "POST", PUSH, ROLE["node-1"], body))[0] == 201
    status, out = await call(server, "POST", PUSH, ROLE["node-1"], push_body(
        [], [NodeSample("node-2", time.time(), 30.0, 1.0, 1)]))
    assert status == 403
    assert "may not report node 'node-2'" in out["message"]


async def test_a_bad_push_is_refused_whole_and_names_the_field(server: ApiServer) -> None:
    """One malformed sample refuses the whole body: nothing of it is kept."""
    body = push_body([sample("web-0"), sample("web-1")])
    body["pods"][1]["containers"][0]["cpuMillicores"] = -5
    status, out = await call(server, "POST", PUSH, server.admin_token, body)
    assert status == 422
    assert "pods[1].containers[0].cpuMillicores must be a finite number >= 0" in out["message"]
    assert (await call(server, "GET", PODS, server.admin_token))[1]["items"] == []
    status, out = await call(server, "POST", PUSH, server.admin_token, {"pods": "nope"})
    assert status == 422
    assert "body.pods must be a list" in out["message"]


async def test_a_silent_pod_is_missing_but_its_history_is_kept(server: ApiServer) -> None:
    """A sample older than the TTL is not current (the HPA must see the Pod as missing),
    yet stays in the history the capacity report reads."""
    ttl = DEFAULT_TTL  # the server runs with the default window
    now = time.time()
    await call(server, "POST", PUSH, server.admin_token,
               push_body([sample("old", at=now - ttl - 5), sample("new", at=now)]))
    status, pods = await call(server, "GET", PODS, ROLE["viewer"])
    assert [p["metadata"]["name"] for p in pods["items"]] == ["new"]
    status, pods = await call(server, "GET", PODS + "?history=true", ROLE["viewer"])
    assert [(p["metadata"]["name"], p["stale"], len(p["history"])) for p in pods["items"]] \
        == [("new", False, 1), ("old", True, 1)]
    status, out = await call(server, "GET", PODS + "/old", ROLE["viewer"])
    assert status == 404
    assert "no sample in the last" in out["message"]
