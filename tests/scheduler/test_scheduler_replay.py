"""The benchmark's in-process decision replay (``loadtests/scheduler_replay.py``)
counts what the framework did and measures the spread it produced."""

from __future__ import annotations

from loadtests.scheduler_replay import replay


def test_replay_places_every_replica_and_reports_work_and_spread() -> None:
    """12 nodes in 4 zones, 36 replicas: every node examined and scored for every
    decision (under 100 nodes nothing is cut short), three replicas per node, nine
    per zone, and a positive CPU figure."""
    r = replay(nodes=12, replicas=36, zones=4, node_cpu="8", node_memory="32Gi",
               pod_cpu="100m", pod_memory="128Mi")
    assert r.placed == 36
    assert r.examined_per_decision == r.scored_per_decision == 12
    assert (r.per_node_min, r.per_node_max, r.per_node_stdev) == (3, 3, 0.0)
    assert (r.per_zone_min, r.per_zone_max) == (9, 9)
    assert r.cpu_us_per_decision > 0


def test_replay_counts_pods_that_fit_nowhere_as_not_placed() -> None:
    """Two 1-CPU nodes hold two 500m replicas each; of five, four are placed."""
    r = replay(nodes=2, replicas=5, zones=1, node_cpu="1", node_memory="4Gi",
               pod_cpu="500m", pod_memory="128Mi")
    assert r.placed == 4
    assert (r.per_node_min, r.per_node_max) == (2, 2)
