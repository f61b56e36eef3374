"""Deployments and ReplicaSets end to end: scale, rolling update, Recreate, rollback,
pause, cascading delete, through the real API server on SQLite with the scheduler and
controllers running. The test plays the nodes: it registers Node objects and reports
bound Pods Ready through the status subresource (``auto_ready``), as agents would."""

from __future__ import annotations

import asyncio

import pytest
from controller_kit import Cluster, auto_ready, deployment, fast_config, running, wait_for

from control.client import errors
from control.client.informer import Informer
from control.controllers import rollout_ops as deploy_ops
from control.controllers.podutil import is_ready

CONTROLLERS = fast_config(controllers=("scheduler", "replicaset", "deployment"))


async def _nodes(cluster: Cluster, n: int = 3) -> None:
    for i in range(n):
        await cluster.add_node(f"n{i}")


async def _ready_pods(cluster: Cluster, n: int, selector: str = "app=web") -> list[dict]:
    async def check() -> list[dict]:
        pods = await cluster.pods(selector)
        return pods if len(pods) == n and all(is_ready(p) for p in pods) else []
    return await wait_for(check, what=f"exactly {n} ready pods")


async def _rolled_out(cluster: Cluster, name: str = "web") -> dict:
    async def check() -> dict | None:
        d = await cluster.client.get("deployments", name, namespace="default")
        state, _ = deploy_ops.rollout_status(d)
        return d if state == "done" else None
    return await wait_for(check, what=f"deployment {name} rolled out")


async def _set_image(cluster: Cluster, image: str, name: str = "web") -> None:
    """A user's edit: read, change, write; again on 409 (status writes race with it)."""
    for _ in range(20):
        d = await cluster.client.get("deployments", name, namespace="default")
        d["spec"]["template"]["spec"]["containers"][0]["image"] = image
        try:
            await cluster.client.replace("deployments", d)
            return
        except errors.Conflict:
            continue
    raise AssertionError("could not update the deployment: 20 conflicts in a row")


async def test_scale_up_then_down_deletes_not_ready_pods_first(cluster: Cluster) -> None:
    """3 ready replicas; scaled to 5 the two new ones stay not ready; scaled to 3 the
    ReplicaSet deletes exactly those two and keeps the ready ones. No agent runs here,
    so the two stay Terminating (bound Pods are deleted gracefully), as they would in
    Kubernetes without a kubelet: they count for nothing and are not deleted again."""
    await _nodes(cluster)
    async with running(cluster, CONTROLLERS):
        await cluster.client.create("deployments", deployment("web", 3))
        async with auto_ready(cluster):
            ready = await _ready_pods(cluster, 3)
        first = {p["metadata"]["name"] for p in ready}
        await cluster.client.scale("deployments", "web", 5, namespace="default")

        async def five_bound() -> list[dict]:
            pods = await cluster.pods("app=web")
            return pods if len(pods) == 5 and all(p["spec"].get("nodeName")
                                                  for p in pods) else []
        await wait_for(five_bound, what="5 bound pods")
        await cluster.client.scale("deployments", "web", 3, namespace="default")

        async def two_terminating() -> list[dict]:
            pods = await cluster.pods("app=web")
            return pods if sum(1 for p in pods if p["metadata"].get("deletionTimestamp")) \
                == 2 else []
        pods = await wait_for(two_terminating, what="2 pods Terminating")
        left = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert {p["metadata"]["name"] for p in left} == first
        assert all(is_ready(p) for p in left)
        d = await _rolled_out(cluster)
        assert d["status"]["replicas"] == 3
        assert d["status"]["availableReplicas"] == 3
        assert d["status"]["observedGeneration"] == d["metadata"]["generation"]


async def test_terminating_pods_are_counted_until_they_are_gone(cluster: Cluster) -> None:
    """Scaled from 3 to 1 with no agent to finish the graceful deletions, the two
    Terminating Pods are reported as ``terminatingReplicas`` by the ReplicaSet and the
    Deployment (not in ``replicas``); once they are deleted for good the count is 0."""
    await _nodes(cluster)
    async with running(cluster, CONTROLLERS):
        await cluster.client.create("deployments", deployment("web", 3))
        async with auto_ready(cluster, finalize=False):
            await _ready_pods(cluster, 3)
            await cluster.client.scale("deployments", "web", 1, namespace="default")

            async def counted(n: int, replicas: int) -> dict | None:
                d = await cluster.client.get("deployments", "web", namespace="default")
                [rs] = (await cluster.client.list("replicasets", namespace="default"))["items"]
                got = [(o.get("status") or {}).get(k) for o in (d, rs)
                       for k in ("terminatingReplicas", "replicas")]
                return d if got == [n, replicas, n, replicas] else None

            await wait_for(lambda: counted(2, 1), what="2 terminating, 1 replica")
            for p in await cluster.pods("app=web"):
                if p["metadata"].get("deletionTimestamp"):
                    await cluster.client.delete("pods", p["metadata"]["name"],
                                                namespace="default", grace_period_seconds=0)
            await wait_for(lambda: counted(0, 1), what="none terminating")


async def test_rolling_update_keeps_ready_floor_and_surge_ceiling(cluster: Cluster) -> None:
    """replicas=4, maxSurge=1, maxUnavailable=1: from the moment the template changes
    until the rollout completes, every Pod event leaves at least 3 ready Pods and at
    most 5 Pods; at the end all 4 run the new image, and the Deployment reports
    revision 2 with Available and Progressing=NewReplicaSetAvailable."""
    await _nodes(cluster)
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
    async with running(cluster, CONTROLLERS), auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 4, strategy=strategy))
        await _ready_pods(cluster, 4)
        await _rolled_out(cluster)
        seen = Informer(cluster.client, "pods", namespace="default")
        floor: list[int] = []
        ceiling: list[int] = []

        def observe(*_: object) -> None:
            pods = [p for p in seen.list() if not p["metadata"].get("deletionTimestamp")]
            floor.append(sum(1 for p in pods if is_ready(p)))
            ceiling.append(len(pods))
        seen.add_handler(on_add=observe, on_update=observe, on_delete=observe)
        async with seen:
            await seen.wait_synced()
            await _set_image(cluster, "busybox:2")

            async def all_new() -> list[dict]:
                pods = await cluster.pods("app=web")
                return pods if len(pods) == 4 and all(
                    is_ready(p) and p["spec"]["containers"][0]["image"] == "busybox:2"
                    for p in pods) else []
            await wait_for(all_new, what="4 ready pods of the new template")
            d = await _rolled_out(cluster)
        assert len(floor) > 8  # the rollout really went through many events
        assert min(floor) >= 3, floor
        assert max(ceiling) <= 5, ceiling
        assert d["metadata"]["annotations"][deploy_ops.REVISION] == "2"
        conds = {c["type"]: c for c in d["status"]["conditions"]}
        assert conds["Available"]["status"] == "True"
        assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
        rss, _ = await cluster.client.list_all("replicasets", namespace="default")
        assert sorted((rs["spec"]["replicas"], rs["metadata"]["annotations"]
                       [deploy_ops.REVISION]) for rs in rss) == [(0, "1"), (4, "2")]


async def test_rollback_returns_to_previous_template_as_a_new_revision(
        cluster: Cluster) -> None:
    """v1 then v2; ``rollback`` (meshctl rollout undo) brings the v1 template back: the
    v1 ReplicaSet is reused and becomes revision 3, all Pods run v1 again; undo to a
    revision that does not exist is refused with a clear error."""
    await _nodes(cluster)
    async with running(cluster, CONTROLLERS), auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 2))
        await _rolled_out(cluster)
        await _set_image(cluster, "busybox:2")
        await wait_for(lambda: _all_image(cluster, "busybox:2", 2), what="v2 pods")
        await _rolled_out(cluster)
        message = await deploy_ops.rollback(cluster.client, "default", "web")
        assert message == "deployment.apps/web rolled back"
        await wait_for(lambda: _all_image(cluster, "busybox:1", 2), what="v1 pods again")
        d = await _rolled_out(cluster)
        assert d["metadata"]["annotations"][deploy_ops.REVISION] == "3"
        history = await deploy_ops.history(cluster.client, "default", "web")
        assert [rev for rev, _ in history] == [2, 3]
        v1 = dict((rev, rs) for rev, rs in history)[3]
        assert v1["spec"]["template"]["spec"]["containers"][0]["image"] == "busybox:1"
        with pytest.raises(ValueError, match="unable to find specified revision 9"):
            await deploy_ops.rollback(cluster.client, "default", "web", to_revision=9)


async def _all_image(cluster: Cluster, image: str, n: int) -> bool:
    pods = await cluster.pods("app=web")
    return len(pods) == n and all(p["spec"]["containers"][0]["image"] == image and is_ready(p)
                                  for p in pods)


async def test_recreate_removes_every_old_pod_before_creating_new_ones(
        cluster: Cluster) -> None:
    """Strategy Recreate: no Pod event ever shows old and new Pods at the same time."""
    await _nodes(cluster)
    async with running(cluster, CONTROLLERS), auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 3,
                                                              strategy={"type": "Recreate"}))
        await _rolled_out(cluster)
        seen = Informer(cluster.client, "pods", namespace="default")
        mixed: list[set[str]] = []

        def observe(*_: object) -> None:
            images = {p["spec"]["containers"][0]["image"] for p in seen.list()}
            if len(images) > 1:
                mixed.append(images)
        seen.add_handler(on_add=observe, on_update=observe, on_delete=observe)
        async with seen:
            await seen.wait_synced()
            await _set_image(cluster, "busybox:2")
            await wait_for(lambda: _all_image(cluster, "busybox:2", 3), what="v2 pods")
        assert mixed == []


async def test_paused_deployment_does_not_roll_until_resumed(cluster: Cluster) -> None:
    """Paused, a template change creates no ReplicaSet and Progressing says
    DeploymentPaused; resumed, the rollout happens."""
    await _nodes(cluster)
    async with running(cluster, CONTROLLERS), auto_ready(cluster):
        await cluster.client.create("deployments", deployment("web", 2))
        await _rolled_out(cluster)
        await deploy_ops.pause(cluster.client, "default", "web")
        await _set_image(cluster, "busybox:2")

        async def paused_seen() -> bool:
            d = await cluster.client.get("deployments", "web", namespace="default")
            return any(c["type"] == "Progressing" and c["reason"] == "DeploymentPaused"
                       for c in (d.get("status") or {}).get("conditions") or ())
        await wait_for(paused_seen, what="Progressing=DeploymentPaused")
        rss, _ = await cluster.client.list_all("replicasets", namespace="default")
        assert len(rss) == 1
        assert await _all_image(cluster, "busybox:1", 2)
        await deploy_ops.resume(cluster.client, "default", "web")
        await wait_for(lambda: _all_image(cluster, "busybox:2", 2), what="v2 after resume")


async def test_deleting_a_deployment_cascades_to_replicasets_and_pods(
        cluster: Cluster) -> None:
    """Background delete: the API server's garbage collector removes the ReplicaSet and
    its Pods and the controllers do not bring them back. Foreground delete: the
    Deployment stays (deletionTimestamp set) until its dependents are gone. Orphan:
    the ReplicaSet stays, without the owner reference."""
    await _nodes(cluster)
    api = cluster.client
    # auto_ready plays the agents, which finish the graceful deletion of bound Pods
    async with running(cluster, CONTROLLERS), auto_ready(cluster):
        for name in ("bg", "fg", "orphan"):
            await api.create("deployments", deployment(name, 2))

        async def pods_of(app: str, n: int) -> bool:
            return len(await cluster.pods(f"app={app}")) == n
        for name in ("bg", "fg", "orphan"):
            await wait_for(lambda name=name: pods_of(name, 2), what=f"{name} pods")

        await api.delete("deployments", "bg", namespace="default",
                         propagation_policy="Background")
        await wait_for(lambda: pods_of("bg", 0), what="bg pods collected")
        rss, _ = await api.list_all("replicasets", namespace="default",
                                    label_selector="app=bg")
        assert rss == []

        await api.delete("deployments", "fg", namespace="default",
                         propagation_policy="Foreground")
        d = await api.get("deployments", "fg", namespace="default")
        assert d["metadata"].get("deletionTimestamp")
        await wait_for(lambda: pods_of("fg", 0), what="fg pods collected")

        async def fg_gone() -> bool:
            items, _ = await api.list_all("deployments", namespace="default")
            return all(i["metadata"]["name"] != "fg" for i in items)
        await wait_for(fg_gone, what="fg deployment gone after its dependents")

        await api.delete("deployments", "orphan", namespace="default",
                         propagation_policy="Orphan")
        await asyncio.sleep(0.5)  # give a wrong cascade the chance to happen
        rss, _ = await api.list_all("replicasets", namespace="default",
                                    label_selector="app=orphan")
        assert len(rss) == 1
        assert not rss[0]["metadata"].get("ownerReferences")
        assert await pods_of("orphan", 2)


async def test_revision_history_limit_prunes_old_replicasets(cluster: Cluster) -> None:
    """revisionHistoryLimit=1 and three templates in turn: once the third is rolled out,
    the oldest scaled-down ReplicaSet is deleted and exactly two remain (current and one
    to roll back to)."""
    await _nodes(cluster)
    d = deployment("web", 1)
    d["spec"]["revisionHistoryLimit"] = 1
    async with running(cluster, CONTROLLERS), auto_ready(cluster):
        await cluster.client.create("deployments", d)
        await _rolled_out(cluster)
        for image in ("busybox:2", "busybox:3"):
            await _set_image(cluster, image)
            await wait_for(lambda image=image: _all_image(cluster, image, 1),
                           what=f"{image} pods")
            await _rolled_out(cluster)

        async def two_left() -> list[dict]:
            rss, _ = await cluster.client.list_all("replicasets", namespace="default")
            return rss if len(rss) == 2 else []
        rss = await wait_for(two_left, what="old ReplicaSets pruned to the limit")
        assert sorted(rs["metadata"]["annotations"][deploy_ops.REVISION] for rs in rss) == \
            ["2", "3"]


async def test_rollout_that_stops_progressing_is_marked_past_its_deadline(
        cluster: Cluster) -> None:
    """progressDeadlineSeconds=1 and Pods that never become ready (no node reports
    them): Progressing turns False with ProgressDeadlineExceeded, and ``rollout status``
    calls the rollout failed."""
    await _nodes(cluster, 1)
    d = deployment("web", 2)
    d["spec"]["progressDeadlineSeconds"] = 1
    async with running(cluster, CONTROLLERS):
        await cluster.client.create("deployments", d)

        async def exceeded() -> dict | None:
            d = await cluster.client.get("deployments", "web", namespace="default")
            conds = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or ()}
            p = conds.get("Progressing") or {}
            return d if (p.get("status"), p.get("reason")) == (
                "False", "ProgressDeadlineExceeded") else None
        d = await wait_for(exceeded, what="ProgressDeadlineExceeded")
        assert deploy_ops.rollout_status(d) == (
            "failed", 'deployment "web" exceeded its progress deadline')
