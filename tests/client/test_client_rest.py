"""The REST client against the real API server (in-process, HTTPS, SQLite store):
verbs, paging, merge patch, subresources, watch, and the typed errors built from the
server's Status bodies."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiohttp import web
from client_kit import VIEWER_TOKEN, ServerHandle, client_config

from control.api import ApiServer
from control.client import errors
from control.client.config import ClientConfig
from control.client.rest import ApiClient, wait_ready


def service(name: str, port: int = 80, ns: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}


def deployment(name: str, replicas: int = 1) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


async def test_create_get_replace_patch_delete_round_trip(api: ApiClient) -> None:
    """Each verb reaches the server and returns its object; replace or a conditional
    delete with a stale resourceVersion is a Conflict; merge patch with None removes a
    key."""
    created = await api.create("services", service("web"))
    assert created["metadata"]["uid"]
    got = await api.get("svc", "web")
    assert got["spec"]["ports"][0]["targetPort"] == 80, "server defaults are visible"
    got["metadata"]["labels"]["tier"] = "front"
    replaced = await api.replace("services", got)
    assert replaced["metadata"]["labels"] == {"app": "web", "tier": "front"}
    with pytest.raises(errors.Conflict) as info:
        await api.replace("services", got)  # got's resourceVersion is now stale
    assert info.value.code == 409
    patched = await api.patch("services", "web", {"metadata": {"labels": {"tier": None}}})
    assert patched["metadata"]["labels"] == {"app": "web"}
    with pytest.raises(errors.Conflict):  # a delete conditional on a stale version
        await api.delete("services", "web", resource_version=got["metadata"]["resourceVersion"])
    await api.delete("services", "web",
                     resource_version=patched["metadata"]["resourceVersion"])
    with pytest.raises(errors.NotFound, match='services "web" not found'):
        await api.get("services", "web")


async def test_list_all_follows_continue_tokens_and_filters_by_label(api: ApiClient) -> None:
    """list_all with a page size of 3 returns all 7 objects (in 3 pages) plus a
    resourceVersion; label selectors are passed through."""
    for i in range(7):
        await api.create("services", service(f"s{i}"))
    page = await api.list("services", namespace="default", limit=3)
    assert len(page["items"]) == 3
    assert page["metadata"].get("continue")
    items, rv = await api.list_all("services", namespace="default", page_size=3)
    assert sorted(o["metadata"]["name"] for o in items) == [f"s{i}" for i in range(7)]
    assert int(rv) > 0
    assert all(o["kind"] == "Service" and o["apiVersion"] == "v1" for o in items)
    only, _ = await api.list_all("services", label_selector="app=s3")
    assert [o["metadata"]["name"] for o in only] == ["s3"]


async def test_scale_subresource_and_its_errors(api: ApiClient) -> None:
    """scale() sets spec.replicas through the scale subresource; get_scale reads it;
    a negative count is refused before anything is sent."""
    await api.create("deployments", deployment("web", 1))
    await api.scale("deploy", "web", 4)
    assert (await api.get_scale("deploy", "web"))["spec"]["replicas"] == 4
    assert (await api.get("deploy", "web"))["spec"]["replicas"] == 4
    with pytest.raises(ValueError, match="replicas must be >= 0"):
        await api.scale("deploy", "web", -1)


async def test_server_refusals_become_typed_errors_with_the_servers_message(
        api: ApiClient, apiserver: ApiServer) -> None:
    """AlreadyExists, Invalid (with field causes), Unauthorized and Forbidden carry the
    server's reason and message."""
    await api.create("services", service("web"))
    with pytest.raises(errors.AlreadyExists, match="already exists"):
        await api.create("services", service("web"))
    bad = service("Not_A_Name")
    bad["spec"]["ports"] = [{"port": 70000}]
    with pytest.raises(errors.Invalid) as info:
        await api.create("services", bad)
    fields = {c.get("field") for c in info.value.causes}
    assert {"metadata.name", "spec.ports[0].port"} <= fields
    cfg = client_config(apiserver)
    async with ApiClient(ClientConfig(server=cfg.server, token="wrong",
                                      ca_file=cfg.ca_file)) as stranger:
        with pytest.raises(errors.Unauthorized):
            await stranger.list("services")
    async with ApiClient(client_config(apiserver, VIEWER_TOKEN)) as viewer:
        assert (await viewer.get("services", "web"))["metadata"]["name"] == "web"
        with pytest.raises(errors.Forbidden, match="cannot create"):
            await viewer.create("services", service("other"))


async def test_tls_is_verified_against_the_ca(apiserver: ApiServer) -> None:
    """Without the server's CA the TLS handshake fails (ConnectionFailed); with the
    insecure flag it is skipped."""
    async with ApiClient(ClientConfig(server=apiserver.url, token=apiserver.admin_token)
                         ) as no_ca:
        with pytest.raises(errors.ConnectionFailed) as info:
            await no_ca.list("namespaces")
        assert isinstance(info.value.__cause__, ssl.SSLError | OSError)
    async with ApiClient(ClientConfig(server=apiserver.url, token=apiserver.admin_token,
                                      insecure=True)) as insecure:
        assert (await insecure.list("namespaces"))["kind"] == "NamespaceList"


async def test_watch_streams_events_from_a_resource_version(api: ApiClient) -> None:
    """A watch from a list's resourceVersion sees later changes in order, with types."""
    _, rv = await api.list_all("services", namespace="default")
    async with api.watch("services", namespace="default", resource_version=rv,
                         timeout_seconds=30) as stream:
        await api.create("services", service("a"))
        await api.patch("services", "a", {"metadata": {"labels": {"x": "1"}}})
        await api.delete("services", "a")
        seen = []
        async for ev in stream:
            if ev.type != "BOOKMARK":
                seen.append((ev.type, ev.object["metadata"]["name"]))
            if len(seen) == 3:
                break
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


async def test_watch_from_a_compacted_revision_raises_gone(
        api: ApiClient, server_handle: ServerHandle) -> None:
    """After the store is compacted, a watch from an older resourceVersion is Gone
    (410), the signal for informers to relist."""
    first = await api.create("services", service("a"))
    old_rv = first["metadata"]["resourceVersion"]
    for i in range(3):
        await api.patch("services", "a", {"metadata": {"labels": {"n": str(i)}}})
    await server_handle.stop()
    server = await server_handle.start()  # fresh watch cache: resumes go to the store
    assert server.store is not None
    await server.store.compact(await server.store.current_revision())
    with pytest.raises(errors.Gone):
        async with api.watch("services", resource_version=old_rv, timeout_seconds=5) as w:
            await asyncio.wait_for(anext(aiter(w)), 10)


async def test_wait_ready_returns_for_a_live_server_and_fails_clearly_otherwise(
        api: ApiClient, free_port: int) -> None:
    """wait_ready polls /readyz: immediate for a running server; for a closed port it
    gives up after its timeout with a ConnectionFailed naming the server."""
    await wait_ready(api, timeout=10)
    async with ApiClient(ClientConfig(server=f"http://127.0.0.1:{free_port}")) as nobody:
        with pytest.raises(errors.ConnectionFailed, match=f"127.0.0.1:{free_port}"):
            await wait_ready(nobody, timeout=0.3)


async def test_watch_events_split_across_network_chunks_are_reassembled(
        free_port: int) -> None:
    """Framing: events whose bytes arrive in arbitrary pieces (one split mid-line, two in
    one piece, one larger than 64 KiB) decode intact and in order. The real server
    cannot be made to split its writes, so this uses a minimal aiohttp endpoint that
    writes one fixed byte stream in odd-sized pieces; it is a framing fixture, not a
    stand-in for the API."""
    big = "x" * 100_000
    lines = [json.dumps({"type": "ADDED", "object": {"metadata": {"name": n,
                                                                  "resourceVersion": str(i)},
                                                     "data": big if n == "big" else ""}})
             for i, n in enumerate(["a", "b", "big", "c"], start=1)]
    stream = ("\n".join(lines) + "\n").encode()
    pieces = [stream[:7], stream[7:len(lines[0]) + len(lines[1]) + 2 + 3],
              stream[len(lines[0]) + len(lines[1]) + 2 + 3:-5], stream[-5:]]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for piece in pieces:
            await resp.write(piece)
            await asyncio.sleep(0.01)
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default/pods", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", free_port).start()
    try:
        client = ApiClient(ClientConfig(server=f"http://127.0.0.1:{free_port}"))
        async with client, client.watch("pods", namespace="default") as w:
            got = [(ev.object["metadata"]["name"], len(ev.object["data"])) async for ev in w]
    finally:
        await runner.cleanup()
    assert got == [("a", 0), ("b", 0), ("big", 100_000), ("c", 0)]
