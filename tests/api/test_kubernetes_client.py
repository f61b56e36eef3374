"""The official Kubernetes Python client against this server (over TLS, with a bearer
token and the generated CA): create, get, list, watch, patch, scale and delete
Deployments, Pods and Services.

The client is synchronous; its calls run in a worker thread while the server runs in
the test's event loop.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from apitest import start_server
from kubernetes import client, watch
from kubernetes.client.rest import ApiException


@pytest.fixture
async def k8s(data_dir):
    async with start_server(data_dir, tls=True) as server:
        cfg = client.Configuration()
        cfg.host = server.url
        cfg.ssl_ca_cert = str(server.ca_file)
        cfg.verify_ssl = True
        cfg.api_key = {"BearerToken": server.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        api_client = client.ApiClient(cfg)
        try:
            yield api_client
        finally:
            await asyncio.to_thread(api_client.close)


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(
                    name="app", image="registry.local/web:1.0",
                    ports=[client.V1ContainerPort(container_port=8080)])]))))


def deployment_lifecycle(api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    created = apps.create_namespaced_deployment("default", _deployment("web", 2))
    assert created.metadata.uid
    assert created.spec.strategy.type == "RollingUpdate"
    got = apps.read_namespaced_deployment("web", "default")
    assert got.spec.replicas == 2
    listed = apps.list_namespaced_deployment("default", label_selector="app=web")
    assert [d.metadata.name for d in listed.items] == ["web"]
    patched = apps.patch_namespaced_deployment("web", "default",
                                               {"metadata": {"labels": {"tier": "fe"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "fe"}
    scale = apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 5}})
    assert scale.spec.replicas == 5
    assert apps.read_namespaced_deployment_scale("web", "default").spec.replicas == 5
    replaced_scale = apps.replace_namespaced_deployment_scale("web", "default", client.V1Scale(
        metadata=client.V1ObjectMeta(name="web"), spec=client.V1ScaleSpec(replicas=6)))
    assert replaced_scale.spec.replicas == 6
    body = apps.read_namespaced_deployment("web", "default")
    body.spec.replicas = 3
    replaced = apps.replace_namespaced_deployment("web", "default", body)
    assert replaced.spec.replicas == 3
    body.spec.replicas = 4  # body still carries the old resourceVersion
    with pytest.raises(ApiException) as conflict:
        apps.replace_namespaced_deployment("web", "default", body)
    assert conflict.value.status == 409
    apps.delete_namespaced_deployment("web", "default")
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("web", "default")
    assert missing.value.status == 404


def pod_and_service_lifecycle(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    svc = core.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    assert svc.spec.type == "ClusterIP"
    assert core.read_namespaced_service("web", "default").spec.ports[0].port == 80
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
    pod = core.create_namespaced_pod("default", client.V1Pod(
        metadata=client.V1ObjectMeta(name="web-1", labels={"app": "web"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="app",
                                                             image="registry.local/web:1")])))
    assert pod.status.phase == "Pending"
    core.patch_namespaced_pod_status("web-1", "default", {"status": {"phase": "Running"}})
    pods = core.list_namespaced_pod("default", field_selector="status.phase=Running")
    assert [p.metadata.name for p in pods.items] == ["web-1"]
    assert [s.metadata.name for s in core.list_service_for_all_namespaces().items] == ["web"]
    core.delete_namespaced_pod("web-1", "default")
    core.delete_namespaced_service("web", "default")
    assert core.list_namespaced_pod("default").items == []


def watch_pods(api_client: client.ApiClient, started: threading.Event) -> list[tuple]:
    core = client.CoreV1Api(api_client)
    seen = []
    w = watch.Watch()
    started.set()
    for event in w.stream(core.list_namespaced_pod, "default", timeout_seconds=20):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            w.stop()
    return seen


def make_pod_events(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod("default", client.V1Pod(
        metadata=client.V1ObjectMeta(name="watched"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="a", image="i:1")])))
    core.patch_namespaced_pod("watched", "default", {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("watched", "default")


async def test_deployment_create_get_list_patch_scale_replace_delete(k8s):
    await asyncio.to_thread(deployment_lifecycle, k8s)


async def test_pod_and_service_create_get_list_patch_delete(k8s):
    await asyncio.to_thread(pod_and_service_lifecycle, k8s)


async def test_watch_streams_pod_events_to_the_client(k8s):
    started = threading.Event()
    watcher = asyncio.create_task(asyncio.to_thread(watch_pods, k8s, started))
    await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0.5)  # let the watch request reach the server
    await asyncio.to_thread(make_pod_events, k8s)
    seen = await asyncio.wait_for(watcher, 30)
    assert seen == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]


async def test_client_errors_are_status_objects(k8s):
    """A 422 reaches the client as an ApiException whose body is a Status naming the
    field."""
    import json

    def bad() -> ApiException:
        apps = client.AppsV1Api(k8s)
        with pytest.raises(ApiException) as e:
            apps.create_namespaced_deployment("default", _deployment("web", -1))
        return e.value
    err = await asyncio.to_thread(bad)
    assert err.status == 422
    body = json.loads(err.body)
    assert body["details"]["causes"][0]["field"] == "spec.replicas"
