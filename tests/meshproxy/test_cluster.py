"""Cluster endpoint updates in place: what discovery will rely on."""

from __future__ import annotations

import asyncio

import pytest

from meshproxy.cluster import Cluster
from meshproxy.config import ClusterConfig
from meshproxy.errors import NoHealthyUpstream
from meshproxy.metrics import Stats
from meshproxy.schema import parse


def _cluster(eps: list[str]) -> Cluster:
    cfg = parse({"name": "c", "endpoints": eps}, ClusterConfig)
    return Cluster(cfg, loop=asyncio.get_running_loop(), stats=Stats())


async def test_set_endpoints_keeps_objects_for_addresses_that_stay() -> None:
    """An address that stays keeps its Endpoint (state survives) and takes the new
    weight; a new one is added; a removed one leaves the balancer and its pool closes."""
    c = _cluster(["10.0.0.1:80", "10.0.0.2:80"])
    a, b = c.endpoints
    a.active_requests = 3
    pool_b = c.pools[b.key]
    c.set_endpoints([("10.0.0.1", 80, 5), ("10.0.0.3", 80, 1)])
    assert c.endpoints[0] is a
    assert a.weight == 5
    assert a.active_requests == 3
    assert [e.address for e in c.endpoints] == ["10.0.0.1:80", "10.0.0.3:80"]
    assert pool_b.closing
    assert b.key not in c.pools
    from meshproxy.balance import PickContext
    picked = {c.pick(PickContext(0.0)).address for _ in range(12)}
    assert picked == {"10.0.0.1:80", "10.0.0.3:80"}


async def test_bad_endpoint_update_changes_nothing() -> None:
    """A duplicate address or a bad weight is refused before anything changes."""
    c = _cluster(["10.0.0.1:80"])
    before = list(c.endpoints)
    with pytest.raises(ValueError, match="given twice"):
        c.set_endpoints([("10.0.0.2", 80, 1), ("10.0.0.2", 80, 1)])
    with pytest.raises(ValueError, match="bad endpoint"):
        c.set_endpoints([("10.0.0.2", 80, 0)])
    assert c.endpoints == before


async def test_empty_cluster_has_no_healthy_upstream() -> None:
    """Picking from a cluster with no endpoint raises NoHealthyUpstream (503)."""
    from meshproxy.balance import PickContext
    c = _cluster([])
    with pytest.raises(NoHealthyUpstream):
        c.pick(PickContext(0.0))
