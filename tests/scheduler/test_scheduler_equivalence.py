"""The fast framework decides as the naive reference does (``sched_reference.py``).

On generated clusters (readiness, cordons, zones, labels, hard and soft taints, small
pod limits, Pods already bound with owners and host ports) and generated Pods
(requests, owner, host ports, nodeSelector, zone affinity, tolerations), a burst of
decisions is made one after the other, each assumed before the next as the scheduler
does. At every step the fast framework must pick a node the reference scores highest,
report that very score, and, when nothing fits, give exactly the reference's reasons.
This pins that incremental state, PreFilter skips and list-wise scorers changed the cost
of a decision and not the decision.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_objects import node_specs, pod_specs
from sched_reference import decide

from control.scheduler.cache import SchedulerCache
from control.scheduler.framework import Framework, Scheduled, Unschedulable
from control.scheduler.podinfo import pod_info


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SchedulerCache, list[dict]]:
    cache = SchedulerCache()
    names = [f"n{i}" for i in range(draw(st.integers(1, 7)))]
    for name in names:
        cache.set_node(draw(node_specs(name)))
    for i in range(draw(st.integers(0, 8))):
        cache.set_pod(draw(pod_specs(f"bound{i}", node_name=draw(st.sampled_from(names)))))
    burst = [draw(pod_specs(f"new{i}")) for i in range(draw(st.integers(1, 6)))]
    return cache, burst


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fast_framework_picks_a_best_node_of_the_reference(
        scenario: tuple[SchedulerCache, list[dict]]) -> None:
    cache, burst = scenario
    fw = Framework(cache)
    for obj in burst:
        p = pod_info(obj)
        ref_scores, ref_reasons = decide(p, cache)
        result = fw.schedule(p)
        if not ref_scores:
            assert isinstance(result, Unschedulable)
            assert result.reasons == ref_reasons
            assert result.total_nodes == len(cache.nodes)
            continue
        assert isinstance(result, Scheduled), result
        best = max(ref_scores.values())
        assert ref_scores[result.node] == best, (result, ref_scores)
        assert result.score == best
        cache.assume(p, result.node)
