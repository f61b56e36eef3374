"""A TrafficPolicy's degradation switch (``spec.degrade``) merged into the proxy config:
it becomes a ``service`` switch named ``<namespace>.<service>`` targeting the cluster
that follows the Service; a file switch of that name wins; dropping it from the policy
removes it; a re-apply that leaves it as it was keeps its trip state and an admin flip,
while a changed switch takes the newly declared state. The wire path (API server ->
watch -> proxy) is tested in test_discovery_switches_e2e.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from rawclient import RawConn

from meshproxy.config import Loaded, parse_config
from meshproxy.config.policy import ServicePolicy, service_switch_name
from meshproxy.discovery.policy import PolicyRefused, merge, parse_policy
from meshproxy.proxy import Proxy
from meshproxy.resilience.degrade import StaticResponse, Verdict

BASE = """
admin: {enabled: false}
listeners:
  - protocol: http
    name: out
    port: 0
    routes:
      - {name: recs, cluster: recommendations}
      - {name: other, match: {prefix: /x}, cluster: local}
clusters:
  - {name: recommendations}
  - {name: local, endpoints: [127.0.0.1:1]}
discovery:
  server: https://127.0.0.1:1
  token_file: /nonexistent/token
  clusters: [{cluster: recommendations, service: shop/recommendations}]
"""

FILE_SWITCH = """
resilience:
  switches:
    - {name: shop.recommendations, level: service, target: recommendations, mode: "off"}
"""

DEGRADE = {"mode": "auto",
           "auto": {"metric": "error_ratio", "threshold": 0.5, "minimum_requests": 4,
                    "window": 10, "cooldown": 30},
           "action": {"kind": "static", "status": 200, "body": '{"recommended": []}',
                      "headers": {"content-type": "application/json"}}}


def policy(degrade: dict | None = None, **extra: object) -> ServicePolicy:
    """A TrafficPolicy of shop/recommendations as the proxy parses it."""
    spec: dict = {"service": "recommendations", **extra}
    if degrade is not None:
        spec["degrade"] = degrade
    return parse_policy({"metadata": {"name": "recs", "namespace": "shop"}, "spec": spec})


def test_policy_switch_becomes_a_service_switch_on_the_following_cluster():
    """``spec.degrade`` appears in ``resilience.switches`` as a service-level switch
    named ``<namespace>.<service>`` whose target is the cluster following the Service,
    with the policy's mode, rule and action; clusters not governed get none."""
    cfg = parse_config(BASE).config
    merged = merge(cfg, {"recommendations": policy(DEGRADE)})
    (sw,) = merged.resilience.switches
    assert sw.name == "shop.recommendations" == service_switch_name("shop", "recommendations")
    assert (sw.level, sw.target, sw.mode) == ("service", "recommendations", "auto")
    assert sw.auto is not None
    assert sw.auto.minimum_requests == 4
    assert isinstance(sw.action, StaticResponse)
    assert sw.action.body == '{"recommended": []}'
    assert cfg.resilience.switches == ()  # the file's config is not modified


def test_file_switch_of_the_same_name_wins_over_the_policy():
    """The file is the local override: its switch named like the policy's stays as the
    file wrote it, and the policy's is not added beside it."""
    cfg = parse_config(BASE + FILE_SWITCH).config
    merged = merge(cfg, {"recommendations": policy({**DEGRADE, "mode": "on"})})
    (sw,) = merged.resilience.switches
    assert sw == cfg.resilience.switches[0]
    assert sw.mode == "off"
    assert sw.action.kind == "fail_fast"


def test_policy_without_degrade_leaves_no_switch():
    """A policy that drops ``degrade`` (or never had one) adds no switch, whatever the
    previous merge produced; the other sections still apply."""
    cfg = parse_config(BASE).config
    assert merge(cfg, {"recommendations": policy(DEGRADE)}).resilience.switches
    merged = merge(cfg, {"recommendations": policy(cluster={"lb_policy": "least_request"})})
    assert merged.resilience.switches == ()
    assert merged.cluster("recommendations").load_balancer.policy == "least_request"


def test_two_clusters_following_one_service_cannot_share_its_switch():
    """A switch targets one cluster: the policy is refused naming both clusters, unless
    the file declares a switch of that name (then the file's is the one in force)."""
    text = BASE.replace(
        "  - {name: local, endpoints: [127.0.0.1:1]}",
        "  - {name: local, endpoints: [127.0.0.1:1]}\n  - {name: recs-2}").replace(
        "clusters: [{cluster: recommendations, service: shop/recommendations}]",
        "clusters: [{cluster: recommendations, service: shop/recommendations},\n"
        "             {cluster: recs-2, service: shop/recommendations}]")
    cfg = parse_config(text).config
    both = {"recommendations": policy(DEGRADE), "recs-2": policy(DEGRADE)}
    with pytest.raises(PolicyRefused) as ei:
        merge(cfg, both)
    [(where, msg)] = ei.value.problems
    assert where == "resilience.switches[shop.recommendations]"
    assert "recommendations, recs-2" in msg
    overridden = parse_config(text + FILE_SWITCH).config
    assert merge(overridden, both).resilience.switches == overridden.resilience.switches


def test_switch_name_too_long_for_a_switch_is_refused_with_the_reason():
    ns, svc = "n" * 30, "s" * 33
    with pytest.raises(ValueError, match="longer than 63"):
        service_switch_name(ns, svc)
    cfg = parse_config(BASE.replace("shop/recommendations", f"{ns}/{svc}")).config
    with pytest.raises(PolicyRefused, match="longer than 63"):
        merge(cfg, {"recommendations": policy(DEGRADE)})


def test_policy_cluster_fallback_must_name_a_cluster_of_this_proxy():
    """A cluster fallback names a cluster of the proxy's own config: one this proxy does
    not have is refused with the field, like the same switch in a file."""
    cfg = parse_config(BASE).config
    bad = {**DEGRADE, "action": {"kind": "cluster", "cluster": "recs-lite"}}
    with pytest.raises(PolicyRefused) as ei:
        merge(cfg, {"recommendations": policy(bad)})
    assert ("resilience.switches[0].action.cluster", "no cluster named 'recs-lite'") \
        in ei.value.problems
    good = {**DEGRADE, "action": {"kind": "cluster", "cluster": "local"}}
    (sw,) = merge(cfg, {"recommendations": policy(good)}).resilience.switches
    assert sw.action.kind == "cluster"


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    """A real proxy (listener on port 0) started with the policy's switch merged in."""
    loaded = parse_config(BASE)
    p = Proxy(Loaded(merge(loaded.config, {"recommendations": policy(DEGRADE)}),
                     loaded.version, loaded.loaded_at, loaded.source))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def reapply(proxy: Proxy, sp: ServicePolicy) -> None:
    loaded = parse_config(BASE)
    await proxy.apply(Loaded(merge(loaded.config, {"recommendations": sp}),
                             loaded.version, loaded.loaded_at, loaded.source))


def trip(proxy: Proxy) -> None:
    """Feed the auto rule failures until it trips (the rule needs 4 calls, half bad)."""
    sw = proxy.resilience.switches.get("shop.recommendations")
    now = proxy.loop.time()
    for _ in range(4):
        sw.observe(sw.check(now), False, 0.01, now)
    assert sw.state == "tripped"


async def test_trip_state_survives_a_reapply_of_an_unchanged_switch(proxy: Proxy):
    """A policy re-applied with the same switch (parsed anew, another section changed)
    keeps the very Switch object: still tripped, its degraded count kept."""
    trip(proxy)
    sw = proxy.resilience.switches.get("shop.recommendations")
    assert sw.check(proxy.loop.time()) == Verdict.DEGRADE
    await reapply(proxy, policy(DEGRADE, cluster={"lb_policy": "least_request"}))
    assert proxy.config.cluster("recommendations").load_balancer.policy == "least_request"
    again = proxy.resilience.switches.get("shop.recommendations")
    assert again is sw
    assert again.state == "tripped"
    assert again.degraded_total == 1


async def test_admin_flip_holds_until_the_control_plane_changes_the_switch(proxy: Proxy):
    """An admin-API flip on this proxy is a local, temporary override: it survives a
    re-apply that leaves the policy's switch unchanged; when the policy changes the
    switch, the newly declared state applies (mode and source from the config)."""
    proxy.resilience.switches.flip("shop.recommendations", "on")
    await reapply(proxy, policy(DEGRADE))
    sw = proxy.resilience.switches.get("shop.recommendations")
    assert (sw.mode, sw.mode_source) == ("on", "admin")
    await reapply(proxy, policy({**DEGRADE, "mode": "off"}))
    sw = proxy.resilience.switches.get("shop.recommendations")
    assert (sw.mode, sw.mode_source) == ("off", "config")


async def get(proxy: Proxy) -> tuple[int, str | None]:
    """(status, x-mesh-switch header) of one request through the ``out`` listener."""
    conn = await RawConn.open(proxy.listeners["out"].port)
    try:
        await conn.send(b"GET /recs HTTP/1.1\r\nHost: recs\r\n\r\n")
        reply = await conn.read_reply()
    finally:
        await conn.close()
    return reply.status, reply.headers.get("x-mesh-switch")


async def test_removing_the_policy_switch_removes_it_from_the_running_proxy(proxy: Proxy):
    """While the policy's switch is on, the route answers its static fallback; once the
    policy drops ``degrade`` the registry and the admin listing lose the switch and the
    route goes to the (here empty) cluster again."""
    proxy.resilience.switches.flip("shop.recommendations", "on")
    assert await get(proxy) == (200, "shop.recommendations")
    await reapply(proxy, policy())
    assert len(proxy.resilience.switches) == 0
    assert proxy.resilience_snapshot()["switches"] == []
    status, switch = await get(proxy)
    assert (status, switch) == (503, None)  # no endpoints: the cluster, not a fallback


def test_bad_degrade_section_is_refused_naming_the_field_without_the_union_tag():
    """A policy's switch the schema rejects is refused by the proxy with the field path
    as written in the spec (``action.status``: the union's ``kind`` tag is a key, not a
    level of the path)."""
    with pytest.raises(PolicyRefused) as ei:
        policy({**DEGRADE, "action": {"kind": "static", "status": 99}})
    [(where, msg)] = ei.value.problems
    assert where == "trafficpolicy shop/recs: spec.degrade.action.status"
    assert msg == "Expected `int` >= 100"


def test_policy_switch_for_a_cluster_that_follows_no_service_is_refused():
    """The switch is named after the Service a cluster follows; a cluster that follows
    none (no ``discovery`` section) cannot take a policy's switch, and says so."""
    text = BASE.split("discovery:")[0].replace("- {name: recommendations}",
                                               "- {name: recommendations, endpoints: "
                                               "[127.0.0.1:2]}")
    cfg = parse_config(text).config
    with pytest.raises(PolicyRefused) as ei:
        merge(cfg, {"recommendations": policy(DEGRADE)})
    [(where, msg)] = ei.value.problems
    assert where == "clusters[recommendations]"
    assert "follows a Service" in msg
