"""Traffic management end to end: real backends, the proxy in between (issue 4).

Each test starts a few in-process upstreams (:mod:`upstreams`) and a proxy from YAML,
sends real HTTP requests and checks what the policies promise: distributions per
balancing algorithm, retries hiding failures within their budget, health checks taking
endpoints out and back, deadlines failing fast and travelling upstream.
"""

from __future__ import annotations

import pytest
from load_kit import by_upstream, eventually, fire, listener_port
from proxy_kit import http_config
from rawclient import request

from meshproxy.balance.base import PickContext
from meshproxy.layers.guard import GuardedDirect
from meshproxy.stack import DEFAULT_LAYERS


def _cfg(ups, *, cluster: str = "", route: str = "") -> str:
    routes = f"[{{name: all, cluster: c {route}}}]"
    return http_config([u.address for u in ups], routes=routes, cluster_extra=cluster)


async def test_weighted_round_robin_respects_weights_exactly(upstreams, proxy_factory) -> None:
    """Smooth weighted round robin over real backends: 3:2:1 weights, 1,200 requests,
    exactly 600/400/200 (the algorithm is deterministic)."""
    ups = await upstreams(3)
    eps = ", ".join(f"{{address: '{u.address}', weight: {w}}}" for u, w in zip(ups, (3, 2, 1),
                                                                            strict=True))
    text = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [{{name: all, cluster: c}}]}}
clusters:
  - {{name: c, lb_policy: round_robin, endpoints: [{eps}]}}
"""
    p = await proxy_factory(text)
    replies = await fire(listener_port(p), 1200, conns=6)
    assert all(r.status == 200 for r in replies)
    assert by_upstream(replies) == {"up1": 600, "up2": 400, "up3": 200}


@pytest.mark.parametrize("policy", ["random", "weighted_random", "least_request"])
async def test_randomised_policies_spread_by_weight(policy, upstreams, proxy_factory) -> None:
    """Random and weighted random over three backends weighted 2:1:1: each backend's
    share is within 6 points of its weight's share over 1,200 requests (random ignores
    weights: an equal split). Least request (P2C) is given equal weights: it balances
    load, and its weighting (weight / (active + 1)) is not proportional by design."""
    ups = await upstreams(3)
    weights = (1, 1, 1) if policy == "least_request" else (2, 1, 1)
    eps = ", ".join(f"{{address: '{u.address}', weight: {w}}}" for u, w in zip(ups, weights,
                                                                            strict=True))
    text = f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: [{{name: all, cluster: c}}]}}
clusters:
  - {{name: c, lb_policy: {policy}, endpoints: [{eps}]}}
"""
    p = await proxy_factory(text)
    replies = await fire(listener_port(p), 1200, conns=6)
    assert all(r.status == 200 for r in replies)
    counts = by_upstream(replies)
    want = {"up1": 1 / 3, "up2": 1 / 3, "up3": 1 / 3} if policy != "weighted_random" else \
        {"up1": 0.5, "up2": 0.25, "up3": 0.25}
    for name, share in want.items():
        assert abs(counts[name] / 1200 - share) < 0.06, (policy, counts)


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
async def test_latency_aware_policies_avoid_a_slowed_backend(policy, upstreams,
                                                             proxy_factory) -> None:
    """One of three backends answers 50 ms late: under concurrent load least request
    (fewer requests in flight there) and peak EWMA (higher latency estimate) send it
    clearly less than its third (under a fifth when the machine is quiet; the bound
    leaves room for a loaded CI machine, where every backend is slow); round robin
    would give it exactly a third."""
    ups = await upstreams(3)
    ups[2].delay = 0.05
    p = await proxy_factory(_cfg(ups, cluster=f", lb_policy: {policy}"))
    replies = await fire(listener_port(p), 600, conns=12)
    assert all(r.status == 200 for r in replies)
    slow_share = by_upstream(replies)["up3"] / 600
    assert slow_share < 0.27, (policy, by_upstream(replies))


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
async def test_consistent_hash_is_sticky_and_moves_about_one_nth(policy, upstreams,
                                                                 proxy_factory) -> None:
    """Hashing on a header: every key goes to one backend every time; when one of four
    backends leaves (a reload), only the keys it held move (about 1/4), the others stay."""
    ups = await upstreams(4)
    lb = f"load_balancer: {{policy: {policy}, hash_on: {{source: header, name: x-user}}}}"
    if policy == "maglev":
        lb = lb[:-1] + ", maglev: {table_size: 1021}}"
    p = await proxy_factory(_cfg(ups, cluster=", " + lb))
    port = listener_port(p)
    keys = [f"user-{i}" for i in range(200)]

    async def placement() -> dict[str, str]:
        replies = await fire(port, len(keys) * 2, conns=4,
                             per_request=lambda i: {"x-user": keys[i % len(keys)]})
        seen: dict[str, set[str]] = {}
        for i, r in enumerate(replies):
            seen.setdefault(keys[i % len(keys)], set()).add(r.headers["x-upstream"])
        assert all(len(v) == 1 for v in seen.values()), "a key went to two backends"
        return {k: v.pop() for k, v in seen.items()}

    name_of = {u.port: u.name for u in ups}

    def table_placement() -> dict[str, str]:
        """Where the cluster's balancer puts each key (its table, no request)."""
        ctx = PickContext(0.0)
        out = {}
        for k in keys:
            ctx.hash_key = k.encode()
            ep = cluster.balancer.pick(ctx, ())
            assert ep is not None
            out[k] = name_of[ep.port]
        return out

    cluster = p.clusters["c"]
    before = await placement()
    assert before == table_placement()
    cluster.set_endpoints([("127.0.0.1", u.port, 1) for u in ups[:3]])
    after = await placement()
    assert after == table_placement()  # requests follow the rebuilt table exactly
    moved = [k for k in keys if before[k] != after[k]]
    others = [k for k in moved if before[k] != "up4"]
    if policy == "ring_hash":
        assert others == []  # a ring moves only the removed backend's keys
    # Maglev's rebuild may move a few more: how many depends on the four addresses'
    # permutations (random ports here; over 5,000 random port sets the median was 1 key
    # of 200, the 99th percentile 9, the worst 49), so the bound on that is pinned with
    # fixed addresses in balance/test_consistent_hash.py, and here only that requests
    # follow the table.
    assert all(after[k] != "up4" for k in keys)
    assert 0.1 < sum(before[k] == "up4" for k in keys) / len(keys) < 0.4  # its share


async def test_retries_hide_a_failing_backend(upstreams, proxy_factory) -> None:
    """One of three backends answers 503 to everything: with 3 attempts every client
    request succeeds, and the attempts counter shows the retries that did it. (The
    budget is raised to 50%: a third of all requests need a retry here, more than the
    default 20% allows, which is the point of a budget.)"""
    ups = await upstreams(3)
    ups[1].status_override = 503
    p = await proxy_factory(_cfg(ups, route=", retry: {attempts: 3}, retry_budget: "
                                            "{budget_percent: 50, min_retry_concurrency: 8}"))
    replies = await fire(listener_port(p), 300, conns=4)
    assert [r.status for r in replies] == [200] * 300
    budget = p.route_states[("web", "all")].budget.statistics()
    assert budget.retries_total >= 90  # about a third of the requests met up2 first
    assert budget.refused_total == 0


async def test_non_idempotent_requests_are_not_retried(upstreams, proxy_factory) -> None:
    """POST to a backend that answers 503: the 503 comes back, no second attempt."""
    ups = await upstreams(2)
    for u in ups:
        u.status_override = 503
    p = await proxy_factory(_cfg(ups, route=", retry: {attempts: 3}"))
    reply = await request(listener_port(p), "POST", "/echo", body=b"x" * 10)
    assert reply.status == 503
    assert sum(len(u.requests) for u in ups) == 1
    assert p.route_states[("web", "all")].budget.statistics().retries_total == 0


async def test_dead_cluster_retries_stay_within_the_budget(upstreams, proxy_factory) -> None:
    """Every backend answers 503 and the route allows 5 attempts: without a budget that
    is 5x the load. With a 10% budget and a floor of 1 retry/s over a 10 s window,
    retries stay within 10% of the requests plus the floor (measured at the backends)."""
    ups = await upstreams(3)
    for u in ups:
        u.status_override = 503
    route = (", retry: {attempts: 5, backoff: {base_s: 0.001, max_s: 0.002}}, retry_budget: "
             "{budget_percent: 10, min_retries_per_second: 1, min_retry_concurrency: 1}")
    p = await proxy_factory(_cfg(ups, route=route))
    n = 400
    replies = await fire(listener_port(p), n, conns=8)
    assert all(r.status == 503 for r in replies)
    upstream_requests = sum(len(u.requests) for u in ups)
    retries = upstream_requests - n
    assert 0 < retries <= 0.10 * n + 10, retries
    stats = p.route_states[("web", "all")].budget.statistics()
    assert stats.retries_total == retries
    assert stats.refused_total > 0


async def test_bodies_beyond_the_replay_bound_are_not_retried(upstreams,
                                                              proxy_factory) -> None:
    """A PUT (idempotent) with a body over max_replay_body_bytes meets a 503: not
    retried, since the body was not kept; a small one is retried."""
    ups = await upstreams(2)
    ups[0].status_override = 503
    ups[1].status_override = 503
    p = await proxy_factory(_cfg(ups, route=", retry: {attempts: 2, max_replay_body_bytes: 100}"))
    port = listener_port(p)
    await request(port, "PUT", "/echo", body=b"y" * 1000)
    assert sum(len(u.requests) for u in ups) == 1
    await request(port, "PUT", "/echo", body=b"y" * 10)
    assert sum(len(u.requests) for u in ups) == 3


async def test_health_check_takes_an_endpoint_out_and_back(upstreams, proxy_factory) -> None:
    """HTTP health checks every 50 ms: a backend whose /healthz starts failing is
    taken out after 2 failed probes (traffic goes only to the other), and comes back
    after 2 good ones (traffic returns); /clusters and the gauge show it."""
    ups = await upstreams(2)
    hc = ("health_check: {path: /status/200, interval_s: 0.05, interval_jitter_s: 0.01, "
          "initial_jitter_s: 0.01, timeout_s: 0.04, unhealthy_threshold: 2, "
          "healthy_threshold: 2}")
    p = await proxy_factory(_cfg(ups, cluster=", " + hc))
    port = listener_port(p)
    ep2 = p.clusters["c"].endpoints[1]
    ups[1].status_override = 500

    await eventually(lambda: not ep2.healthy)
    counts = by_upstream(await fire(port, 100, conns=2))
    assert counts == {"up1": 100}
    snap = p.clusters["c"].snapshot()
    assert [h["healthy"] for h in snap["health_checks"]] == [True, False]
    p.flush_metrics()
    assert p.stats.registry.get_sample_value(
        "meshproxy_upstream_endpoint_healthy", {"cluster": "c", "endpoint": ups[1].address}) == 0
    ups[1].status_override = None
    await eventually(lambda: ep2.healthy)
    counts = by_upstream(await fire(port, 100, conns=2))
    assert counts == {"up1": 50, "up2": 50}


async def test_panic_threshold_spreads_over_all_and_is_counted(upstreams,
                                                               proxy_factory) -> None:
    """With 1 of 3 endpoints healthy (below the 50% panic threshold) the balancer uses
    all three, and meshproxy_lb_panic_total counts those picks."""
    ups = await upstreams(3)
    p = await proxy_factory(_cfg(ups, cluster=", lb_policy: round_robin"))
    eps = p.clusters["c"].endpoints
    eps[0].healthy = eps[1].healthy = False
    replies = await fire(listener_port(p), 30, conns=1)
    assert set(by_upstream(replies)) == {"up1", "up2", "up3"}
    p.flush_metrics()
    assert p.stats.registry.get_sample_value("meshproxy_lb_panic_total", {"cluster": "c"}) >= 30


async def test_deadline_header_fails_fast_and_travels_upstream(upstreams,
                                                               proxy_factory) -> None:
    """With deadline propagation: a request arriving with 0 ms left is answered 504
    deadline_expired without reaching the backend; one with 5 s left reaches it with at
    most 5000 ms in the header (ours replaced the caller's); one arriving with 50 ms
    against a backend that takes 2 s gives up after its own 50 ms, not the route's 15 s."""
    ups = await upstreams(1)
    p = await proxy_factory(_cfg(ups, route=", deadline: {}"))
    port = listener_port(p)
    r = await request(port, headers={"x-mesh-timeout-ms": "0"})
    assert (r.status, r.reason) == (504, "deadline_expired")
    assert ups[0].requests == []
    r = await request(port, headers={"x-mesh-timeout-ms": "5000"})
    assert r.status == 200
    sent = [v for k, v in ups[0].requests[0]["raw_headers"] if k.lower() == "x-mesh-timeout-ms"]
    assert len(sent) == 1
    assert 4000 < int(sent[0]) <= 5000
    r = await request(port, "GET", "/slow/2", headers={"x-mesh-timeout-ms": "50"})
    assert (r.status, r.reason) == (504, "route_timeout")
    r = await request(port, headers={"x-mesh-timeout-ms": "-1"})
    assert (r.status, r.reason) == (400, "bad_deadline_header")


async def test_hedging_answers_from_the_fast_backend(upstreams, proxy_factory) -> None:
    """A GET that would go to a backend taking 1 s is hedged after 20 ms to the other
    one, whose answer wins; the hedge counts against the budget."""
    ups = await upstreams(2)
    ups[0].delay = 1.0
    p = await proxy_factory(_cfg(ups, route=", hedge: {delay: fixed, delay_s: 0.02}"))
    port = listener_port(p)
    replies = [await request(port) for _ in range(4)]
    assert all(r.status == 200 and r.headers["x-upstream"] == "up2" for r in replies)
    assert p.route_states[("web", "all")].budget.statistics().hedges_total >= 1


async def test_routes_without_policies_keep_the_fused_fast_path(upstreams,
                                                                proxy_factory) -> None:
    """A route with no policy section (and a cluster with none) has only the default
    layers and runs fused; adding any section takes it off the fast path."""
    ups = await upstreams(1)
    routes = ("[{name: plain, match: {prefix: /plain}, cluster: c}, "
              "{name: guarded, cluster: c, retry: {attempts: 2}}]")
    p = await proxy_factory(http_config([ups[0].address], routes=routes))
    router = p.listeners["web"].router
    plain, guarded = router.routes
    assert plain.direct is not None
    assert guarded.direct is None
    assert type(guarded.handler).__name__ == "Rescue"
    # the fused route answers (through try_direct once a pooled connection is idle)
    for _ in range(3):
        assert (await request(listener_port(p), "GET", "/plain")).status == 200
    # admission layers (a breaker, a rate limit) keep it, checked synchronously in front
    text = http_config([ups[0].address], cluster_extra=", breaker: {consecutive_failures: 3}",
                       routes="[{name: all, cluster: c, rate_limit: {rate: 1000}}]")
    q = await proxy_factory(text)
    direct = q.listeners["web"].router.routes[0].direct
    assert isinstance(direct, GuardedDirect)
    assert direct.breaker is q.resilience.clusters["c"].breaker
    assert direct.limiter is q.resilience.rate_limiters["web/all"]
    # a per-attempt concern (outlier detection) needs the task: off the fast path
    text = http_config([ups[0].address], cluster_extra=", outlier: {}")
    q = await proxy_factory(text)
    assert q.listeners["web"].router.routes[0].direct is None
    assert DEFAULT_LAYERS[0].__name__ == "Rescue"
