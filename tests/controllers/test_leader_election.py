"""Leader election against the real API server, on a hand-moved clock: who may take the
lease and when, how a leader notices it can no longer renew, and bad settings."""

from __future__ import annotations

import asyncio
import json

import pytest
from controller_kit import Cluster

from control.client.clock import ManualClock
from control.client.rest import ApiClient
from control.controllers.leader import LEADER_ANNOTATION, LeaderElectionConfig, LeaderElector

CONFIG = LeaderElectionConfig(lease_duration=15, renew_deadline=10, retry_period=2)


async def _record(cluster: Cluster) -> dict:
    ep = await cluster.client.get("endpoints", "mesh-controller-manager",
                                  namespace="kube-system")
    return json.loads(ep["metadata"]["annotations"][LEADER_ANNOTATION])


async def test_second_candidate_waits_out_the_lease_of_a_silent_leader(
        cluster: Cluster) -> None:
    """a takes the lease (creating kube-system and the lock object); b is refused while
    the record keeps changing or is younger than the lease, as b observed it on its own
    clock; once a stops renewing for a lease duration, b takes over and the record
    counts one transition."""
    clock = ManualClock()
    async with ApiClient(cluster.client_config()) as api:
        a = LeaderElector(api, "a", CONFIG, clock=clock)
        b = LeaderElector(api, "b", CONFIG, clock=clock)
        assert await a.try_acquire_or_renew() is True
        assert (await _record(cluster))["holderIdentity"] == "a"
        assert await b.try_acquire_or_renew() is False
        clock.advance(10)
        assert await a.try_acquire_or_renew() is True   # a renews: the record changes
        clock.advance(10)
        assert await b.try_acquire_or_renew() is False  # b sees the change now (t=20)
        clock.advance(14)
        assert await b.try_acquire_or_renew() is False  # 14 s < lease since b saw it
        clock.advance(1.5)
        assert await b.try_acquire_or_renew() is True
        record = await _record(cluster)
        assert record["holderIdentity"] == "b"
        assert record["leaderTransitions"] == 1
        assert await a.try_acquire_or_renew() is False  # a must now wait in turn


async def test_leader_gives_up_after_the_renew_deadline_without_the_server(
        cluster: Cluster) -> None:
    """With the API server gone, ``hold`` keeps trying every retry period and returns
    (leadership lost) once no renew has succeeded for the renew deadline, before the
    lease could have passed to anyone else."""
    clock = ManualClock()
    async with ApiClient(cluster.client_config(), timeout=2) as api:
        a = LeaderElector(api, "a", CONFIG, clock=clock)
        await a.acquire()
        assert a.is_leader
        assert cluster.server is not None
        await cluster.server.stop()
        cluster.server = None
        hold = asyncio.create_task(a.hold())
        elapsed = 0.0
        while not hold.done() and elapsed < 60:
            await asyncio.sleep(0.05)  # let the failed renew finish
            clock.advance(CONFIG.retry_period)
            elapsed += CONFIG.retry_period
            await asyncio.sleep(0.05)
        assert hold.done()
        await hold
        assert not a.is_leader
        assert CONFIG.renew_deadline <= elapsed < CONFIG.lease_duration


async def test_clean_release_lets_the_next_candidate_in_at_once(cluster: Cluster) -> None:
    """``release`` empties the holder: b acquires without waiting for the lease."""
    clock = ManualClock()
    async with ApiClient(cluster.client_config()) as api:
        a = LeaderElector(api, "a", CONFIG, clock=clock)
        b = LeaderElector(api, "b", CONFIG, clock=clock)
        await a.acquire()
        assert await b.try_acquire_or_renew() is False
        await a.release()
        assert (await _record(cluster))["holderIdentity"] == ""
        assert await b.try_acquire_or_renew() is True


@pytest.mark.parametrize(("kw", "message"), [
    ({"retry_period": 0}, "retry_period must be > 0"),
    ({"renew_deadline": 2, "retry_period": 2}, "renew_deadline (2s) must be greater"),
    ({"lease_duration": 10, "renew_deadline": 10}, "lease_duration (10s) must be greater"),
])
def test_inconsistent_timings_are_refused(kw: dict, message: str) -> None:
    """A renew deadline not shorter than the lease would let two leaders act at once."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LeaderElectionConfig(**kw)
