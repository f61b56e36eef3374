"""Discovery against the real API server (in-process, TLS, SQLite store in a temp dir):
endpoints written through the API reach the proxy's routing; the proxy keeps routing on
what it knew while the API server is down, reports staleness and re-syncs when it is
back; a compacted history (410) makes it relist; the cache file restores endpoints
after a proxy restart with the control plane down; a file reload keeps discovered
endpoints; a token without the ``proxy`` role is refused and counted."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rawclient import RawConn
from upstreams import Upstream

from control.api import ApiServer, ApiServerConfig
from control.api.auth import User
from meshproxy.config import parse_config
from meshproxy.discovery import DiscoveringProxy

pytestmark = pytest.mark.timeout(60)

PROXY_TOKEN = "proxy-token-for-discovery-tests"
VIEWER_TOKEN = "viewer-token-for-discovery-tests"
NS = "/api/v1/namespaces/default"
WAIT = 20.0  # generous: the machine is shared


class ManualClock:
    """Wall clock for staleness, advanced by the test."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ApiHandle:
    """The API server, restartable on the same data dir and port; an admin client."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: ApiServer | None = None
        self.port = 0
        self.session: aiohttp.ClientSession | None = None

    def config(self, port: int) -> ApiServerConfig:
        return ApiServerConfig(
            data_dir=self.data_dir, port=port, bookmark_interval=0.5,
            tokens={PROXY_TOKEN: User("sidecar", frozenset({"proxy"})),
                    VIEWER_TOKEN: User("someone", frozenset({"viewer"}))})

    async def start(self, port: int | None = None) -> ApiServer:
        server = ApiServer(self.config(self.port if port is None else port))
        await server.start()
        self.server = server
        if port is None:
            self.port = server.port
        if self.session is None:
            ctx = ssl.create_default_context(cafile=str(server.ca_file))
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        return server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def close(self) -> None:
        await self.stop()
        if self.session is not None:
            await self.session.close()

    async def call(self, method: str, path: str, body: Any = None,
                   server: ApiServer | None = None) -> Any:
        server = server or self.server
        assert server is not None
        assert self.session is not None
        async with self.session.request(
                method, server.url + path, json=body,
                headers={"Authorization": f"Bearer {server.admin_token}"}) as resp:
            data = await resp.json()
            assert resp.status < 300, data
            return data

    async def put_endpoints(self, name: str, ports: list[int], *,
                            server: ApiServer | None = None) -> None:
        """Create or replace the Endpoints ``name``: one subset per port (127.0.0.1)."""
        subsets = [{"addresses": [{"ip": "127.0.0.1"}],
                    "ports": [{"name": "http", "port": p, "protocol": "TCP"}]}
                   for p in ports]
        obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name},
               "subsets": subsets}
        server = server or self.server
        assert server is not None
        assert self.session is not None
        async with self.session.get(
                server.url + f"{NS}/endpoints/{name}",
                headers={"Authorization": f"Bearer {server.admin_token}"}) as resp:
            exists = resp.status == 200
        if exists:
            await self.call("PUT", f"{NS}/endpoints/{name}", obj, server)
        else:
            await self.call("POST", f"{NS}/endpoints", obj, server)

    async def create_service(self, name: str) -> None:
        await self.call("POST", f"{NS}/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[ApiHandle]:
    handle = ApiHandle(data_dir)
    await handle.start()
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def backends() -> AsyncIterator[list[Upstream]]:
    ups = [await Upstream(f"b{i}").start() for i in range(3)]
    yield ups
    for up in ups:
        await up.stop()


def proxy_yaml(api: ApiHandle, tmp_path: Path, *, token: str = PROXY_TOKEN,
               cache: bool = False, port: str = "http") -> str:
    assert api.server is not None
    token_file = tmp_path / "proxy.token"
    token_file.write_text(token + "\n")
    cache_line = f"\n  cache_file: {tmp_path / 'discovery.json'}" if cache else ""
    return f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: out, port: 0, routes: [{{name: all, cluster: catalog}}]}}
clusters:
  - {{name: catalog}}
discovery:
  server: {api.server.url}
  token_file: {token_file}
  ca_file: {api.server.ca_file}
  backoff: {{initial: 0.05, max: 0.3}}
  clusters: [{{cluster: catalog, service: catalog, port: {port}}}]{cache_line}
"""


async def start_proxy(text: str, clock: Callable[[], float] | None = None
                      ) -> DiscoveringProxy:
    kw = {"clock": clock} if clock is not None else {}
    proxy = DiscoveringProxy(parse_config(text), **kw)
    await proxy.start()
    return proxy


def ports_of(proxy: DiscoveringProxy) -> list[int]:
    return sorted(e.port for e in proxy.clusters["catalog"].endpoints)


async def until(cond: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def served_by(proxy: DiscoveringProxy, n: int = 6) -> set[str]:
    """Which backends answered ``n`` requests through the proxy (all must be 200)."""
    port = proxy.listeners["out"].port
    seen = set()
    conn = await RawConn.open(port)
    try:
        for _ in range(n):
            await conn.send(b"GET /echo HTTP/1.1\r\nHost: catalog\r\n\r\n")
            reply = await conn.read_reply()
            assert reply.status == 200, (reply.status, reply.reason)
            seen.add(reply.headers["x-upstream"])
    finally:
        await conn.close()
    return seen


def sample(proxy: DiscoveringProxy, name: str, **labels: str) -> float:
    value = proxy.stats.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_endpoints_added_and_removed_through_the_api_reach_routing(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """Endpoints written through the API become the cluster's endpoints (the watch event
    is applied in place): requests go to exactly the listed backends, and an endpoint
    that stays keeps its Endpoint object across updates."""
    b0, b1, b2 = backends
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port])
    proxy = await start_proxy(proxy_yaml(api, tmp_path))
    try:
        await until(lambda: ports_of(proxy) == [b0.port], "first endpoint")
        assert await served_by(proxy) == {"b0"}
        kept = proxy.clusters["catalog"].endpoints[0]

        await api.put_endpoints("catalog", [b0.port, b1.port])
        await until(lambda: ports_of(proxy) == sorted([b0.port, b1.port]), "added endpoint")
        assert await served_by(proxy) == {"b0", "b1"}
        assert any(e is kept for e in proxy.clusters["catalog"].endpoints)

        await api.put_endpoints("catalog", [b1.port, b2.port])
        await until(lambda: ports_of(proxy) == sorted([b1.port, b2.port]), "replaced")
        assert await served_by(proxy) == {"b1", "b2"}

        await api.call("DELETE", f"{NS}/endpoints/catalog")
        await until(lambda: ports_of(proxy) == [], "endpoints deleted")
        assert sample(proxy, "meshproxy_discovery_endpoint_updates_total",
                      cluster="catalog") >= 4
        disc = proxy.discovery
        assert disc is not None
        await until(lambda: all(w.live for w in disc.watches), "watches open")
        proxy.flush_metrics()
        assert sample(proxy, "meshproxy_discovery_staleness_seconds") == 0.0
    finally:
        await proxy.close()


async def test_api_down_keeps_last_endpoints_grows_staleness_and_resyncs(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """With the API server stopped, requests keep flowing to the last known endpoints,
    failed reconnects are counted and staleness grows with the clock; once the server
    is back (changes made meanwhile by another server on the same store), the proxy
    re-syncs to them and staleness returns to 0."""
    b0, b1, _ = backends
    clock = ManualClock()
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port])
    proxy = await start_proxy(proxy_yaml(api, tmp_path), clock)
    try:
        await until(lambda: ports_of(proxy) == [b0.port], "first sync")
        disc = proxy.discovery
        assert disc is not None
        await until(lambda: all(w.live for w in disc.watches), "watches open")
        assert disc.staleness() == 0.0

        await api.stop()
        await until(lambda: sample(proxy, "meshproxy_discovery_errors_total",
                                   resource="endpoints", reason="connect") >= 2,
                    "failed reconnects counted")
        clock.now += 30
        assert disc.staleness() >= 30
        proxy.flush_metrics()
        assert sample(proxy, "meshproxy_discovery_staleness_seconds") >= 30
        assert await served_by(proxy) == {"b0"}

        other = await api.start(port=0)  # same store, another port: the proxy can't see it
        await api.put_endpoints("catalog", [b1.port], server=other)
        await api.stop()
        assert ports_of(proxy) == [b0.port]

        await api.start()  # back on the proxy's port
        await until(lambda: ports_of(proxy) == [b1.port], "re-sync after restart")
        await until(lambda: disc.staleness() == 0.0, "in sync again")
        assert await served_by(proxy) == {"b1"}
    finally:
        await proxy.close()


async def test_compacted_history_makes_the_proxy_relist(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """When the proxy's resourceVersion was compacted while it was disconnected, the
    watch answers 410 Gone; the proxy lists again (counted as a sync, the 410 as an error
    with reason ``gone``) and ends on the server's current endpoints."""
    b0, b1, b2 = backends
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port])
    proxy = await start_proxy(proxy_yaml(api, tmp_path))
    try:
        await until(lambda: ports_of(proxy) == [b0.port], "first sync")
        lists = sample(proxy, "meshproxy_discovery_syncs_total", resource="endpoints")
        await api.stop()
        other = await api.start(port=0)
        await api.put_endpoints("catalog", [b1.port, b2.port], server=other)
        assert other.store is not None
        await other.store.compact(await other.store.current_revision())
        await api.stop()
        await api.start()
        await until(lambda: ports_of(proxy) == sorted([b1.port, b2.port]), "relisted set")
        assert sample(proxy, "meshproxy_discovery_errors_total",
                      resource="endpoints", reason="gone") >= 1
        assert sample(proxy, "meshproxy_discovery_syncs_total",
                      resource="endpoints") > lists
        assert await served_by(proxy) == {"b1", "b2"}
    finally:
        await proxy.close()


async def test_cache_file_restores_endpoints_after_restart_with_api_down(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """A proxy with ``cache_file`` writes what it learnt; a new proxy started while the
    API server is down routes on it at once (endpoints before any sync, the cached
    TrafficPolicy right after start), and reports it as stale."""
    b0, b1, _ = backends
    clock = ManualClock()
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port, b1.port])
    await api.call("POST", TP, policy({"cluster": {"load_balancer": {"policy": "random"}}}))
    text = proxy_yaml(api, tmp_path, cache=True)
    first = await start_proxy(text, clock)
    cache_file = tmp_path / "discovery.json"

    def cached_policy() -> bool:
        try:
            return "random" in cache_file.read_text()
        except OSError:
            return False

    try:
        await until(lambda: ports_of(first) == sorted([b0.port, b1.port]), "first sync")
        await until(cached_policy, "cache written with the policy")
    finally:
        await first.close()
    await api.stop()
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".discovery.json.")]
    assert not leftovers, "no temp file left behind"

    clock.now += 120
    second = await start_proxy(text, clock)
    try:
        assert ports_of(second) == sorted([b0.port, b1.port])  # before any sync
        # 40 requests: the cached policy (random) may already be in force, and 6 random
        # picks all land on one of two endpoints 1 time in 32.
        assert await served_by(second, n=40) == {"b0", "b1"}
        await until(lambda: second.clusters["catalog"].config.load_balancer.policy
                    == "random", "cached policy applied")
        assert second.discovery is not None
        assert second.discovery.staleness() >= 120
    finally:
        await second.close()


async def test_file_reload_keeps_discovered_endpoints_in_place(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """Reloading the file (which lists no endpoints for the followed cluster) keeps the
    discovered endpoints, the same objects, and applies the file's other settings."""
    b0, *_ = backends
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port])
    text = proxy_yaml(api, tmp_path)
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    proxy = await start_proxy(text)
    try:
        await until(lambda: ports_of(proxy) == [b0.port], "first sync")
        before = proxy.clusters["catalog"].endpoints[0]
        path.write_text(text.replace("- {name: catalog}",
                                     "- {name: catalog, connect_timeout: 2.5}"))
        assert await proxy.reload(path) is True
        cluster = proxy.clusters["catalog"]
        assert cluster.config.connect_timeout == 2.5
        assert cluster.endpoints[0] is before
        assert await served_by(proxy) == {"b0"}
    finally:
        await proxy.close()


async def test_unknown_token_is_refused_counted_and_changes_nothing(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """An unknown token is answered 401: counted under reason ``http_401``; the cluster
    stays empty (nothing is applied) and staleness grows."""
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [backends[0].port])
    clock = ManualClock()
    proxy = await start_proxy(proxy_yaml(api, tmp_path, token="not-a-known-token-at-all"),
                              clock)
    try:
        await until(lambda: sample(proxy, "meshproxy_discovery_errors_total",
                                   resource="endpoints", reason="http_401") >= 1,
                    "401 counted")
        assert ports_of(proxy) == []
        clock.now += 5
        assert proxy.discovery is not None
        assert proxy.discovery.staleness() >= 5
    finally:
        await proxy.close()


TP = "/apis/mesh.io/v1alpha1/namespaces/default/trafficpolicies"


def policy(spec: dict) -> dict:
    return {"apiVersion": "mesh.io/v1alpha1", "kind": "TrafficPolicy",
            "metadata": {"name": "catalog-policy"}, "spec": {"service": "catalog", **spec}}


async def test_traffic_policy_applies_under_file_overrides_and_bad_one_is_refused(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """A TrafficPolicy of the followed Service is merged into its cluster: fields the
    file does not set come from the policy (load balancer), fields the file sets stay
    (breaker). A policy the proxy cannot accept — written straight into the store, as
    an API server of another version might have accepted it — is refused, counted and
    logged; the policy in force keeps serving. A later good policy applies again."""
    b0, *_ = backends
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port])
    await api.call("POST", TP, policy({
        "cluster": {"load_balancer": {"policy": "least_request"},
                    "breaker": {"consecutive_failures": 3}}}))
    text = proxy_yaml(api, tmp_path).replace(
        "- {name: catalog}", "- {name: catalog, breaker: {consecutive_failures: 7}}")
    proxy = await start_proxy(text)

    def lb() -> str:
        return proxy.clusters["catalog"].config.load_balancer.policy

    try:
        await until(lambda: lb() == "least_request", "policy applied")
        cluster = proxy.clusters["catalog"].config
        assert cluster.breaker is not None
        assert cluster.breaker.consecutive_failures == 7  # the file wins
        assert sample(proxy, "meshproxy_discovery_policy_updates_total",
                      result="applied") == 1
        await until(lambda: ports_of(proxy) == [b0.port], "endpoints")

        # An invalid spec, bypassing the API server's validation (see the docstring).
        assert api.server is not None
        store = api.server.store
        assert store is not None
        key = "/registry/mesh.io/trafficpolicies/default/catalog-policy"
        kv = await store.get(key)
        assert kv is not None
        obj = json.loads(kv.value)
        obj["spec"]["cluster"]["load_balancer"] = {"policy": "no-such-balancer"}
        await store.update(key, json.dumps(obj).encode(), expected_revision=kv.mod_revision)
        await until(lambda: sample(proxy, "meshproxy_discovery_policy_updates_total",
                                   result="refused") == 1, "bad policy refused")
        assert lb() == "least_request"
        assert await served_by(proxy) == {"b0"}

        await api.call("PUT", f"{TP}/catalog-policy", {
            **policy({"cluster": {"load_balancer": {"policy": "peak_ewma"}}}),
            "metadata": {"name": "catalog-policy",
                         "resourceVersion": str(kv.mod_revision + 1)}})
        await until(lambda: lb() == "peak_ewma", "good policy applied again")
        assert sample(proxy, "meshproxy_discovery_policy_updates_total",
                      result="applied") == 2
        # The file's breaker stays; the policy no longer sets one anyway.
        assert proxy.clusters["catalog"].config.breaker.consecutive_failures == 7
    finally:
        await proxy.close()


async def test_reload_that_adds_a_followed_cluster_restarts_watches_and_keeps_others(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """A file reload that changes the discovery section (a second cluster following
    another Service) restarts the watches: the new cluster gets its endpoints, the old
    one keeps its Endpoint objects throughout."""
    b0, b1, _ = backends
    await api.create_service("catalog")
    await api.put_endpoints("catalog", [b0.port])
    await api.create_service("cart")
    await api.put_endpoints("cart", [b1.port])
    text = proxy_yaml(api, tmp_path)
    path = tmp_path / "proxy.yaml"
    proxy = await start_proxy(text)
    try:
        await until(lambda: ports_of(proxy) == [b0.port], "first sync")
        kept = proxy.clusters["catalog"].endpoints[0]
        grown = (text.replace("- {name: catalog}", "- {name: catalog}\n  - {name: cart}")
                 .replace("clusters: [{cluster: catalog, service: catalog, port: http}]",
                          "clusters: [{cluster: catalog, service: catalog, port: http}, "
                          "{cluster: cart, service: default/cart}]"))
        path.write_text(grown)
        assert await proxy.reload(path) is True
        assert proxy.clusters["catalog"].endpoints[0] is kept
        await until(lambda: [e.port for e in proxy.clusters["cart"].endpoints] == [b1.port],
                    "the new cluster's endpoints")
        assert proxy.clusters["catalog"].endpoints[0] is kept
    finally:
        await proxy.close()


async def test_no_request_fails_while_discovery_changes_the_endpoint_set(
        api: ApiHandle, backends: list[Upstream], tmp_path: Path) -> None:
    """Clients keep sending (keep-alive) while the Endpoints flip between overlapping
    sets of live backends: every request is answered 200, and traffic follows the sets."""
    b0, b1, b2 = backends
    sets = [[b0.port, b1.port], [b1.port, b2.port], [b2.port, b0.port]]
    await api.create_service("catalog")
    await api.put_endpoints("catalog", sets[0])
    proxy = await start_proxy(proxy_yaml(api, tmp_path))
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        conn = await RawConn.open(proxy.listeners["out"].port)
        try:
            while not stop.is_set():
                await conn.send(b"GET /echo HTTP/1.1\r\nHost: catalog\r\n\r\n")
                statuses.append((await conn.read_reply()).status)
        finally:
            await conn.close()

    try:
        await until(lambda: ports_of(proxy) == sorted(sets[0]), "first sync")
        clients = [asyncio.create_task(client()) for _ in range(3)]
        try:
            for i in range(1, 7):
                wanted = sets[i % 3]
                await api.put_endpoints("catalog", wanted)
                await until(lambda w=wanted: ports_of(proxy) == sorted(w), f"set {i}")
                seen = len(statuses)
                await until(lambda s=seen: len(statuses) >= s + 20, "traffic on the set")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert len(statuses) >= 120
        assert set(statuses) == {200}
        assert {b.name for b in backends if b.requests} == {"b0", "b1", "b2"}
    finally:
        await proxy.close()
