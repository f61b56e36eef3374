"""The HPA controller, sample-controller style: seed the real API server (Deployment,
Pods reported Ready, HPA), push metrics samples as the collector would, reconcile once on
a manual clock, and assert the exact scale written, the HPA status and the Event text.
(``hpa_kit`` plays the agent and the collector; everything else is real.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hpa_kit import Clock, Seeder, api_server, client_config, condition, frozen_hpa

from control.api import ApiServer
from control.client.rest import ApiClient
from control.metrics.window import MeshSample

KEY = "default/web"


def cpu_metric(utilization: int) -> dict:
    return {"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": utilization}}}


def rps_metric(per_pod: str) -> dict:
    return {"type": "Pods", "pods": {"metric": {"name": "mesh_requests_per_second"},
                                     "target": {"type": "AverageValue",
                                                "averageValue": per_pod}}}


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[ApiServer]:
    async with api_server(data_dir) as s:
        yield s


@pytest.fixture
async def seed(server: ApiServer) -> AsyncIterator[Seeder]:
    async with ApiClient(client_config(server)) as api:
        yield Seeder(api)


async def test_scales_up_on_cpu_utilisation(server: ApiServer, seed: Seeder) -> None:
    """2 Pods using 180m of 100m requested against a 60% target: ceil(2 x 180/60) = 6,
    allowed at once by the default scale-up policy (max of +100% and +4 Pods)."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[cpu_metric(60)])
    await seed.push({"web-0": 180.0, "web-1": 180.0})
    clock = Clock()
    async with frozen_hpa(server, clock) as (hpa, recorder):
        assert await hpa.reconcile(KEY) == hpa.sync_period
        await recorder.flush()
    assert await seed.scale_of("web") == 6
    status = await seed.hpa_status("web")
    assert status["currentReplicas"] == 2
    assert status["desiredReplicas"] == 6
    assert status["currentMetrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "current": {"averageUtilization": 180, "averageValue": "180m"}}}]
    assert condition(status, "AbleToScale")[:2] == ("True", "SucceededRescale")
    assert condition(status, "ScalingActive")[:2] == ("True", "ValidMetricFound")
    assert condition(status, "ScalingLimited")[:2] == ("False", "DesiredWithinRange")
    assert "lastScaleTime" in status
    assert await seed.events("SuccessfulRescale") == [
        "New size: 6; current 2; cpu resource utilization (percentage of request): 180% "
        "(target 60%), ratio 3.00 over 2 pods → 6; recommended 6"]


async def test_scales_up_on_mesh_requests_per_second(server: ApiServer, seed: Seeder) -> None:
    """The sidecars see 50 requests/s per Pod against a target of 20 per Pod:
    ceil(2 x 50/20) = 5 replicas."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[rps_metric("20")])
    await seed.push(mesh={"web-0": MeshSample(55.0, 0.02, 3.0, 1650),
                          "web-1": MeshSample(45.0, 0.03, 2.0, 1350)})
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 5
    status = await seed.hpa_status("web")
    assert status["currentMetrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "mesh_requests_per_second"}, "current": {"averageValue": "50"}}}]
    assert await seed.events("SuccessfulRescale") == [
        "New size: 5; current 2; pods metric mesh_requests_per_second: 50 per pod "
        "(target 20), ratio 2.50 over 2 pods → 5; recommended 5"]


async def test_no_change_inside_the_tolerance_band(server: ApiServer, seed: Seeder) -> None:
    """65% against 60% is a ratio of 1.08, inside the 10% band: no scale write, no
    rescale Event, and the status says the size matches."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[cpu_metric(60)])
    await seed.push({"web-0": 65.0, "web-1": 65.0})
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 2
    status = await seed.hpa_status("web")
    assert status["desiredReplicas"] == 2
    assert condition(status, "AbleToScale")[:2] == ("True", "ReadyForNewScale")
    assert await seed.events() == []


async def test_scale_down_is_held_by_the_stabilisation_window_then_applied(
        server: ApiServer, seed: Seeder) -> None:
    """At t=0 the load matches 4 replicas; at t=60 it drops to half. The default 300 s
    down-window keeps the highest recent recommendation (4), so nothing moves until the
    t=0 recommendation has left the window (the hold is said once, not at every pass); at
    t=301 the count goes to 2."""
    await seed.deployment("web", 4)
    await seed.pods("web", 4)
    await seed.hpa("web", metrics=[cpu_metric(50)])
    clock = Clock(t=0.0)
    async with frozen_hpa(server, clock) as (hpa, recorder):
        await seed.push({f"web-{i}": 50.0 for i in range(4)})
        await hpa.reconcile(KEY)
        assert await seed.scale_of("web") == 4

        clock.t = 60.0
        await seed.push({f"web-{i}": 25.0 for i in range(4)})
        await hpa.reconcile(KEY)
        assert await seed.scale_of("web") == 4
        status = await seed.hpa_status("web")
        assert status["desiredReplicas"] == 4
        assert condition(status, "AbleToScale")[:2] == ("True", "ScaleDownStabilized")

        clock.t = 120.0  # still held, for the same reason: not said again
        await seed.push({f"web-{i}": 25.0 for i in range(4)})
        await hpa.reconcile(KEY)
        assert await seed.scale_of("web") == 4

        clock.t = 301.0
        await seed.push({f"web-{i}": 25.0 for i in range(4)})
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 2
    assert await seed.events("DesiredReplicasHeld") == [
        "Size stays 4; current 4; cpu resource utilization (percentage of request): 25% "
        "(target 50%), ratio 0.50 over 4 pods → 2; recommended 2, stabilised to 4"]
    assert await seed.events("SuccessfulRescale") == [
        "New size: 2; current 4; cpu resource utilization (percentage of request): 25% "
        "(target 50%), ratio 0.50 over 4 pods → 2; recommended 2"]


async def test_scale_up_rate_policy_limits_the_step(server: ApiServer, seed: Seeder) -> None:
    """A policy of at most 1 Pod per 60 s: the metrics ask for 6, the first pass goes to 3,
    a pass 30 s later stays at 3 (the period still holds the first step), and one 61 s
    after the first step may add another Pod."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[cpu_metric(50)], behavior={"scaleUp": {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}})
    clock = Clock(t=0.0)
    async with frozen_hpa(server, clock) as (hpa, recorder):
        await seed.push({"web-0": 150.0, "web-1": 150.0})
        await hpa.reconcile(KEY)
        assert await seed.scale_of("web") == 3
        status = await seed.hpa_status("web")
        assert condition(status, "ScalingLimited")[:2] == ("True", "ScaleUpLimit")

        clock.t = 30.0
        await seed.push({"web-0": 150.0, "web-1": 150.0})
        await hpa.reconcile(KEY)
        assert await seed.scale_of("web") == 3

        clock.t = 61.0
        await seed.push({"web-0": 150.0, "web-1": 150.0})
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 4
    assert (await seed.events("SuccessfulRescale"))[0] == (
        "New size: 3; current 2; cpu resource utilization (percentage of request): 150% "
        "(target 50%), ratio 3.00 over 2 pods → 6; recommended 6; scale-up policy allows "
        "at most 3")


async def test_max_replicas_clamps_the_recommendation(server: ApiServer,
                                                      seed: Seeder) -> None:
    """The metrics ask for 6 but maxReplicas is 4: the count goes to 4 and ScalingLimited
    says TooManyReplicas."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[cpu_metric(60)], max_replicas=4)
    await seed.push({"web-0": 180.0, "web-1": 180.0})
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 4
    status = await seed.hpa_status("web")
    assert condition(status, "ScalingLimited")[:2] == ("True", "TooManyReplicas")


async def test_a_target_below_min_replicas_is_lifted_first(server: ApiServer,
                                                           seed: Seeder) -> None:
    """A target scaled by hand to 1 under minReplicas 3 goes to 3 even though its one Pod
    is idle (the metrics alone would say 1): Kubernetes brings the count inside the
    bounds before it looks at metrics."""
    await seed.deployment("web", 1)
    await seed.pods("web", 1)
    await seed.hpa("web", metrics=[cpu_metric(60)], min_replicas=3)
    await seed.push({"web-0": 10.0})
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 3
    assert condition(await seed.hpa_status("web"), "ScalingLimited")[:2] == \
        ("True", "TooFewReplicas")
    assert await seed.events("SuccessfulRescale") == [
        "New size: 3; current 1 is below minReplicas 3"]


async def test_a_target_above_max_replicas_is_lowered_even_without_metrics(
        server: ApiServer, seed: Seeder) -> None:
    """Scaled by hand to 6 over maxReplicas 4, with no metrics at all: the count goes to
    4 at once (no stabilisation window applies to the bounds)."""
    await seed.deployment("web", 6)
    await seed.pods("web", 6)
    await seed.hpa("web", metrics=[cpu_metric(60)], max_replicas=4)
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 4
    status = await seed.hpa_status("web")
    assert condition(status, "ScalingLimited")[:2] == ("True", "TooManyReplicas")
    assert status["desiredReplicas"] == 4
    assert await seed.events("SuccessfulRescale") == [
        "New size: 4; current 6 is above maxReplicas 4"]


async def test_missing_metrics_leave_the_count_unchanged_and_say_why(
        server: ApiServer, seed: Seeder) -> None:
    """No sample for any ready Pod: nothing is scaled, ScalingActive=False with the
    reason, and a Warning Event."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[cpu_metric(60)])
    async with frozen_hpa(server, Clock()) as (hpa, recorder):
        await hpa.reconcile(KEY)
        await recorder.flush()
    assert await seed.scale_of("web") == 2
    status = await seed.hpa_status("web")
    assert condition(status, "ScalingActive") == (
        "False", "FailedGetResourceMetric",
        "the HPA was unable to compute the replica count: cpu resource utilization "
        "(percentage of request): no cpu metrics for any ready pod of 2")
    assert status["desiredReplicas"] == 2
    assert status["currentMetrics"] == []
    assert await seed.events("FailedGetResourceMetric") == [
        "replicas unchanged at 2: cpu resource utilization (percentage of request): no cpu "
        "metrics for any ready pod of 2"]


async def test_largest_recommendation_across_metrics_wins_and_a_missing_one_blocks_scale_down(
        server: ApiServer, seed: Seeder) -> None:
    """CPU says 1 replica, requests/s say 4: the count goes to 4. Then with the mesh
    metric missing and CPU still low, the controller does not scale down on partial
    information."""
    await seed.deployment("web", 2)
    await seed.pods("web", 2)
    await seed.hpa("web", metrics=[cpu_metric(60), rps_metric("10")])
    clock = Clock(t=0.0)
    async with frozen_hpa(server, clock) as (hpa, _):
        await seed.push({"web-0": 10.0, "web-1": 10.0},
                        mesh={"web-0": MeshSample(20.0, 0.01, 1.0, 600),
                              "web-1": MeshSample(20.0, 0.01, 1.0, 600)})
        await hpa.reconcile(KEY)
        assert await seed.scale_of("web") == 4
        # Scaled to 4 while the frozen Pod cache still holds 2 Pods: CPU alone says 1.
        clock.t = 1000.0
        await seed.push({"web-0": 10.0, "web-1": 10.0})
        await hpa.reconcile(KEY)
    assert await seed.scale_of("web") == 4


async def test_unsupported_target_kind_is_reported(server: ApiServer, seed: Seeder) -> None:
    """A scaleTargetRef of a kind without a scale subresource here is a FailedGetScale
    condition, not a crash."""
    await seed.api.create("horizontalpodautoscalers", {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"scaleTargetRef": {"kind": "StatefulSet", "name": "web"},
                 "maxReplicas": 3}}, namespace="default")
    async with frozen_hpa(server, Clock()) as (hpa, _):
        await hpa.reconcile(KEY)
    assert condition(await seed.hpa_status("web"), "AbleToScale")[:2] == \
        ("False", "FailedGetScale")
