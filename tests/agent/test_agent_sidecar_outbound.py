"""The sidecar's outbound side: a meshed Pod declaring ``mesh.io/upstreams`` gets an
outbound listener per upstream whose cluster follows the Service through discovery
(real API server in-process, real SQLite store, ``proxy`` token); the app reaches the
upstream Service's endpoints through it, told where by ``MESH_UPSTREAM_<SERVICE>``.
Also the annotation's parsing and its refusals, and the generated config's validity."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml
from agent_kit import HTTPD, PROCESS_MARK, container, http_get, pod, wait_until
from aiohttp import web

from control.agent import sidecar
from control.agent.agent import Agent
from control.agent.clock import SystemClock
from control.agent.spec import PodSpecError, parse_pod
from control.api import ApiServer, ApiServerConfig
from control.api.auth import User
from meshproxy.config.load import parse_config

pytestmark = pytest.mark.timeout(90)

PROXY_TOKEN = "proxy-token-for-sidecar-tests"
MESH = sidecar.MeshSettings("https://127.0.0.1:6443", "/etc/mesh/proxy.token",
                            "/var/lib/mesh/ca.crt")

# The app fetches http://$MESH_UPSTREAM_CATALOG/ (its sidecar's outbound listener) until
# it answers, keeps the answer in www/catalog.txt, and serves www on $(PORT). Only the
# fetch loop goes to the background (braces): "a && b && (loop) &" would background the
# mkdir too, and httpd could start before www exists.
CALLER = ("mkdir -p www && echo hello > www/index.html && "
          "{ (until busybox wget -q -O got.txt http://$MESH_UPSTREAM_CATALOG/; do "
          "sleep 0.2; done; mv got.txt www/catalog.txt) & } && "
          "exec busybox httpd -f -p $(PORT) -h www")


def _meshed(script: str, upstreams: str, **annotations: str) -> dict:
    p = pod("shop", container("app", script, ports=[{"containerPort": 8080}]), grace=1)
    p["metadata"]["annotations"] = {sidecar.INJECT: "true", sidecar.UPSTREAMS: upstreams,
                                    **annotations}
    return p


@pytest.mark.parametrize("runtime", [pytest.param("process", marks=PROCESS_MARK)],
                         indirect=True)
async def test_meshed_pod_reaches_upstream_service_through_its_outbound_listener(
        runtime, host_ports, tmp_path: Path) -> None:
    """The catalog Service's Endpoints (written through the API) point at a real HTTP
    server; the shop Pod's app calls ``$MESH_UPSTREAM_CATALOG`` and gets the catalog's
    answer through its sidecar, which found the endpoint by discovery."""
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="catalog says hi\n")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    catalog_port = runner.addresses[0][1]

    api = ApiServer(ApiServerConfig(data_dir=tmp_path / "api", port=0, bookmark_interval=0.5,
                                    tokens={PROXY_TOKEN: User("sidecars",
                                                              frozenset({"proxy"}))}))
    (tmp_path / "api").mkdir()
    await api.start()
    token_file = tmp_path / "proxy.token"
    token_file.write_text(PROXY_TOKEN + "\n")
    mesh = sidecar.MeshSettings(api.url, str(token_file), str(api.ca_file))
    statuses: dict[str, dict] = {}

    async def sink(obj, status):
        statuses[obj["metadata"]["name"]] = status

    agent = Agent(node=runtime.node, node_ip="127.0.0.1", runtime=runtime, ports=host_ports,
                  clock=SystemClock(), state_dir=tmp_path / "agent", status_sink=sink,
                  mesh=mesh)
    try:
        admin = {"Authorization": f"Bearer {api.admin_token}"}
        ctx = ssl.create_default_context(cafile=str(api.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                         headers=admin) as s:
            base = api.url + "/api/v1/namespaces/default"
            for path, body in (
                    ("/services", {"apiVersion": "v1", "kind": "Service",
                                   "metadata": {"name": "catalog"},
                                   "spec": {"selector": {"app": "catalog"},
                                            "ports": [{"name": "http", "port": 80}]}}),
                    ("/endpoints", {"apiVersion": "v1", "kind": "Endpoints",
                                    "metadata": {"name": "catalog"},
                                    "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                                                 "ports": [{"name": "http",
                                                            "port": catalog_port}]}]})):
                async with s.post(base + path, json=body) as resp:
                    assert resp.status == 201, await resp.text()

        shop = _meshed(CALLER, "catalog:1")
        # A port free on the Pod's own loopback address (host_ports' range starts at the
        # free_port fixture, so that one is taken by the Pod's own ports).
        address = sidecar.outbound_address(parse_pod(shop))
        with socket.socket() as probe:
            probe.bind((address, 0))
            local_port = probe.getsockname()[1]
        shop["metadata"]["annotations"][sidecar.UPSTREAMS] = f"catalog:{local_port}"
        await agent.set_pods([shop])

        def ready() -> dict | None:
            st = statuses.get("shop")
            conds = {c["type"]: c["status"] for c in (st or {}).get("conditions", [])}
            return st if conds.get("Ready") == "True" else None

        try:
            st = await wait_until(ready, timeout=60, what="the meshed Pod Ready")
        except TimeoutError:
            raise AssertionError(f"not Ready: {statuses.get('shop')}\n"
                                 f"{await _logs(runtime)}") from None
        inbound = next(m for m in st["portMappings"] if m["containerPort"] == 8080)
        url = f"http://127.0.0.1:{inbound['hostPort']}/catalog.txt"

        async def fetched() -> bytes | None:
            status, body = await asyncio.to_thread(http_get, url)
            return body if status == 200 else None

        try:
            body = await wait_until(fetched, timeout=60,
                                    what="the app's call through its outbound listener")
        except TimeoutError:
            raise AssertionError(f"no answer through the sidecar\n{await _logs(runtime)}"
                                 ) from None
        assert body == b"catalog says hi\n"
    finally:
        await agent.close(stop_pods=True)
        await api.stop()
        await runner.cleanup()


async def _logs(runtime) -> str:
    """Every container's last log lines, for a failure message."""
    out = []
    for info in await runtime.list():
        text = (await runtime.logs(info.id, tail=30)).decode(errors="replace")
        out.append(f"--- {info.labels} {info.state} ---\n{text}")
    return "\n".join(out)


def test_upstreams_annotation_parses_services_ports_and_namespaces() -> None:
    """``[ns/]service[:port]:localport``: namespace defaults to the Pod's, the port is a
    name or a number; each upstream's variable names the Pod's own loopback address."""
    p = parse_pod(_meshed(HTTPD, "catalog:8081, shop-cart:http:8082,pay/payment:443:8083"))
    assert sidecar.upstreams(p) == (
        sidecar.Upstream("default", "catalog", None, 8081),
        sidecar.Upstream("default", "shop-cart", "http", 8082),
        sidecar.Upstream("pay", "payment", 443, 8083))
    meshed = sidecar.inject(p, mesh=MESH)
    address = sidecar.outbound_address(p)
    assert address.startswith("127.")
    assert not address.startswith("127.0.0.")
    env = dict(meshed.container("app").env)
    assert env["MESH_UPSTREAM_CATALOG"] == f"{address}:8081"
    assert env["MESH_UPSTREAM_SHOP_CART"] == f"{address}:8082"
    assert env[sidecar.OUTBOUND_ADDRESS_ENV] == address
    command = meshed.container(sidecar.NAME).command
    assert command[command.index("--token-file") + 1] == MESH.token_file
    assert "pay/payment:443:8083" in command
    fixed = parse_pod(_meshed(HTTPD, "catalog:8081",
                              **{sidecar.OUTBOUND_ADDRESS: "127.0.0.1"}))
    assert sidecar.outbound_address(fixed) == "127.0.0.1"


@pytest.mark.parametrize(("upstreams", "annotations", "mesh", "match"), [
    ("catalog", {}, MESH, "not \\[namespace/\\]service"),
    ("catalog:99999", {}, MESH, "localport 1-65535"),
    ("Catalog:8081", {}, MESH, "not a DNS-1123 label"),
    ("catalog:8081,cart:8081", {}, MESH, "declared twice"),
    ("catalog:8081", {}, None, "--proxy-token-file"),
    ("catalog:8081", {sidecar.OUTBOUND_ADDRESS: "10.0.0.1"}, MESH, "not a loopback"),
])
def test_bad_upstream_declarations_are_refused_with_the_field(upstreams, annotations, mesh,
                                                             match) -> None:
    """Each refusal is a PodSpecError naming the annotation and what is wrong."""
    p = parse_pod(_meshed(HTTPD, upstreams, **annotations))
    with pytest.raises(PodSpecError, match=match):
        sidecar.inject(p, mesh=mesh)


def test_outbound_config_is_valid_for_meshproxy_and_follows_each_service() -> None:
    """The generated sidecar config passes meshproxy's validation: one outbound listener
    per upstream on the Pod's address, each cluster following its Service's port."""
    ups = [sidecar.Upstream("default", "catalog", None, 8081),
           sidecar.Upstream("pay", "payment", "grpc", 8083)]
    cfg = sidecar.proxy_config(inbound=15006, admin=15000, app=8080, upstreams=ups,
                               outbound_address="127.9.9.9", mesh=MESH,
                               cache_file="/tmp/x/discovery.json")
    loaded = parse_config(yaml.safe_dump(cfg)).config
    out = {lst.name: (lst.address, lst.port) for lst in loaded.listeners}
    assert out["out-default.catalog"] == ("127.9.9.9", 8081)
    assert out["out-pay.payment"] == ("127.9.9.9", 8083)
    assert loaded.discovery is not None
    follows = {f.cluster: (f.service, f.port) for f in loaded.discovery.clusters}
    assert follows == {"default.catalog": ("default/catalog", None),
                       "pay.payment": ("pay/payment", "grpc")}
    assert loaded.discovery.token_file == MESH.token_file
    assert loaded.discovery.ca_file == MESH.ca_file
    assert loaded.discovery.cache_file == "/tmp/x/discovery.json"


def test_agent_refuses_proxy_token_without_server_or_file(capsys, tmp_path: Path) -> None:
    """``--proxy-token-file`` needs ``--server`` (the sidecars discover from it) and an
    existing file; both refusals exit 2 with the reason, before anything starts."""
    from control.agent.main import main
    token = tmp_path / "proxy.token"
    token.write_text(PROXY_TOKEN + "\n")
    assert main(["--proxy-token-file", str(token), "--pod-manifest-path", "/x"]) == 2
    assert "--proxy-token-file needs --server" in capsys.readouterr().err
    assert main(["--proxy-token-file", str(tmp_path / "missing"), "--server",
                 "https://127.0.0.1:6443", "--api-token-file", str(token),
                 "--data-dir", "/nonexistent-never-created"]) == 2
    assert "no such file" in capsys.readouterr().err
