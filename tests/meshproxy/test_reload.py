"""Hot reload: atomic swap, refusal of bad files, listeners added/removed/rebound, and
zero failed requests while the config is reloaded over and over under traffic.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rawclient import RawConn, build, request

from meshproxy.config import load_config
from meshproxy.proxy import Proxy


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # as editors and ConfigMap updates do: never half a file


def _cfg(port: int, route_cluster: str, eps_a: list[str], eps_b: list[str],
         extra_listener: str = "") -> str:
    a = ", ".join(f'"{e}"' for e in eps_a)
    b = ", ".join(f'"{e}"' for e in eps_b)
    return f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: {port}, routes: [{{name: all, cluster: {route_cluster}}}]}}
{extra_listener}
clusters:
  - {{name: a, endpoints: [{a}]}}
  - {{name: b, endpoints: [{b}]}}
"""


def _reloads(p: Proxy, result: str) -> float:
    for m in p.stats.registry.collect():
        if m.name == "meshproxy_config_reload":
            for s in m.samples:
                if s.name.endswith("_total") and s.labels["result"] == result:
                    return s.value
    raise AssertionError("no reload metric")


async def test_valid_reload_switches_routes_and_keeps_endpoints(
        tmp_path: Path, upstreams, free_port: int) -> None:
    """A new file is swapped in: the route now goes to the other cluster; an endpoint
    that stays keeps its Endpoint object (so its state survives)."""
    u1, u2 = await upstreams(2)
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [u1.address], [u2.address]))
    p = Proxy(load_config(path))
    await p.start()
    try:
        assert (await request(free_port)).headers["x-upstream"] == "up1"
        ep_before = p.clusters["b"].endpoints[0]
        _write(path, _cfg(free_port, "b", [u1.address], [u2.address]))
        assert await p.reload(path)
        assert (await request(free_port)).headers["x-upstream"] == "up2"
        assert p.clusters["b"].endpoints[0] is ep_before
        assert _reloads(p, "success") == 1
    finally:
        await p.close()


async def test_invalid_reload_is_refused_and_old_config_serves(
        tmp_path: Path, upstream, free_port: int, caplog) -> None:
    """A bad file is refused with the field path in the log, counted as a failure, and
    the previous config keeps serving."""
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [upstream.address], []))
    p = Proxy(load_config(path))
    await p.start()
    try:
        version = p.loaded.version
        _write(path, _cfg(free_port, "nope", [upstream.address], []))
        assert not await p.reload(path)
        assert "listeners[0].routes[0].cluster" in caplog.text
        assert p.loaded.version == version
        assert _reloads(p, "failure") == 1
        assert (await request(free_port)).status == 200
    finally:
        await p.close()


async def test_listeners_are_added_removed_and_rebound(
        tmp_path: Path, upstream, free_port: int) -> None:
    """A listener that appears is bound, one that moves is rebound on its new port,
    one that disappears stops accepting."""
    from support.net import free_port as another_port

    extra_port, moved_port = another_port(), another_port()
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [upstream.address], []))
    p = Proxy(load_config(path))
    await p.start()
    try:
        extra = (f"  - {{protocol: http, name: extra, port: {extra_port}, "
                 f"routes: [{{name: r, cluster: a}}]}}")
        _write(path, _cfg(free_port, "a", [upstream.address], [], extra))
        assert await p.reload(path)
        assert (await request(extra_port)).status == 200
        _write(path, _cfg(moved_port, "a", [upstream.address], [], extra))
        assert await p.reload(path)
        assert (await request(moved_port)).status == 200
        for _ in range(100):  # the old socket is closed by a background drain
            try:
                await (await RawConn.open(free_port)).close()
            except OSError:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("old port still accepts")
        _write(path, _cfg(moved_port, "a", [upstream.address], []))
        assert await p.reload(path)
        await asyncio.sleep(0.1)
        try:
            await (await RawConn.open(extra_port)).close()
            raise AssertionError("removed listener still accepts")
        except OSError:
            pass
    finally:
        await p.close()


async def test_bind_failure_refuses_reload(tmp_path: Path, upstream, free_port: int) -> None:
    """A reload whose new listener cannot bind is refused as a whole: nothing changes."""
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = blocker.sockets[0].getsockname()[1]
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [upstream.address], []))
    p = Proxy(load_config(path))
    await p.start()
    try:
        extra = f"  - {{protocol: tcp, name: t, port: {busy}, cluster: a}}"
        _write(path, _cfg(free_port, "b", [upstream.address], [upstream.address], extra))
        assert not await p.reload(path)
        assert set(p.listeners) == {"web"}
        assert p.listeners["web"].router.routes[0].cluster.name == "a"
        assert _reloads(p, "failure") == 1
    finally:
        await p.close()
        blocker.close()
        await blocker.wait_closed()


async def test_reload_that_retunes_per_endpoint_breakers_is_applied(
        tmp_path: Path, upstream, free_port: int) -> None:
    """Changing a cluster's ``endpoint_breaker`` settings is an ordinary reload: applied
    and counted as a success, the route still served (it used to fail half way with an
    AttributeError that nothing counted)."""
    path = tmp_path / "proxy.yaml"
    plain = f'{{name: a, endpoints: ["{upstream.address}"]}}'
    text = _cfg(free_port, "a", [upstream.address], []).replace(
        plain, plain[:-1] + ", endpoint_breaker: {consecutive_failures: 5}}")
    assert "endpoint_breaker" in text
    _write(path, text)
    p = Proxy(load_config(path))
    await p.start()
    try:
        assert (await request(free_port)).status == 200  # makes the endpoint's breaker
        _write(path, text.replace("consecutive_failures: 5", "consecutive_failures: 2"))
        assert await p.reload(path)
        assert _reloads(p, "success") == 1
        assert _reloads(p, "failure") == 0
        group = p.resilience.clusters["a"].endpoint_breakers
        assert group is not None
        assert group.config.consecutive_failures == 2
        assert (await request(free_port)).status == 200
    finally:
        await p.close()


async def test_a_fault_while_applying_a_reload_is_a_counted_failure(
        tmp_path: Path, upstream, free_port: int, caplog) -> None:
    """An unexpected error while applying a valid file (a bug of ours, stood in for by
    a resilience step that raises for the new config only) refuses the reload like a
    bad file: logged with its traceback, counted as a failure, the old config serving."""
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [upstream.address], [upstream.address]))
    p = Proxy(load_config(path))
    await p.start()
    real = p._apply_resilience

    def failing(cfg, clusters):  # type: ignore[no-untyped-def]
        if cfg is not p.loaded.config:
            raise RuntimeError("injected fault")
        return real(cfg, clusters)

    p._apply_resilience = failing  # type: ignore[method-assign]
    try:
        version = p.loaded.version
        _write(path, _cfg(free_port, "b", [upstream.address], [upstream.address]))
        assert not await p.reload(path)
        assert "injected fault" in caplog.text
        assert p.loaded.version == version
        assert _reloads(p, "failure") == 1
        assert p.listeners["web"].router.routes[0].cluster.name == "a"
        assert (await request(free_port)).status == 200
    finally:
        await p.close()


async def test_reloads_under_traffic_fail_no_request(
        tmp_path: Path, upstreams, free_port: int) -> None:
    """Thirty reloads (every third one invalid) while clients keep sending requests on
    keep-alive and fresh connections, some slow enough to straddle a swap: zero failed
    requests, and each valid reload is in force right after it."""
    u1, u2 = await upstreams(2)
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [u1.address], [u2.address]))
    p = Proxy(load_config(path))
    await p.start()
    failures: list[str] = []
    done = 0
    stop = asyncio.Event()

    async def client(keepalive: bool, target: str) -> None:
        nonlocal done
        conn = await RawConn.open(free_port) if keepalive else None
        while not stop.is_set():
            try:
                if conn is None:
                    r = await request(free_port, "GET", target)
                else:
                    await conn.send(build("GET", target))
                    r = await conn.read_reply()
                if r.status != 200:
                    failures.append(f"{r.status} {r.reason}")
                done += 1
            except (OSError, TimeoutError) as e:
                failures.append(repr(e))
        if conn is not None:
            await conn.close()

    clients = [asyncio.create_task(client(ka, t)) for ka, t in
               [(True, "/echo"), (False, "/echo"), (True, "/slow/0.05"), (True, "/chunked/5")]]
    try:
        for i in range(30):
            if i % 3 == 2:
                _write(path, _cfg(free_port, "missing", [u1.address], [u2.address]))
                assert not await p.reload(path)
            else:
                target = "a" if i % 2 else "b"
                _write(path, _cfg(free_port, target, [u1.address], [u2.address]) + f"# {i}\n")
                assert await p.reload(path)
                r = await request(free_port)
                assert r.headers["x-upstream"] == ("up1" if target == "a" else "up2")
            await asyncio.sleep(0.03)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await p.close()
    assert failures == []
    assert done > 30
    assert _reloads(p, "success") == 20
    assert _reloads(p, "failure") == 10


async def test_listener_changes_protocol_on_same_port(tmp_path: Path, upstream,
                                                      free_port: int) -> None:
    """A listener that turns from http into tcp on the same port is rebound: after the
    reload the port speaks plain TCP to the cluster (the HTTP request passes through
    unparsed, so no X-Forwarded-For is added)."""
    path = tmp_path / "proxy.yaml"
    _write(path, _cfg(free_port, "a", [upstream.address], []))
    p = Proxy(load_config(path))
    await p.start()
    try:
        r = await request(free_port)
        assert "x-forwarded-for" in {k.lower() for k, _ in r.json()["headers"]}
        http_line = (f"{{protocol: http, name: web, port: {free_port}, "
                     f"routes: [{{name: all, cluster: a}}]}}")
        tcp = _cfg(free_port, "a", [upstream.address], []).replace(
            http_line, f"{{protocol: tcp, name: web, port: {free_port}, cluster: a}}")
        assert tcp != _cfg(free_port, "a", [upstream.address], [])
        _write(path, tcp)
        assert await p.reload(path)
        for _ in range(100):  # the http socket drains away in the background
            r = await request(free_port)
            if "x-forwarded-for" not in {k.lower() for k, _ in r.json()["headers"]}:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("still proxied at L7")
        assert p.listeners["web"].kind == "tcp"
    finally:
        await p.close()
