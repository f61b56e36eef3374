"""/metrics is valid Prometheus text (promtool) and counts requests by verb, resource
and code."""

from __future__ import annotations

import asyncio
import json

import pytest
from apitest import PODS, pod


async def test_requests_are_counted_by_verb_resource_and_code(api):
    await api.post(PODS, pod("a"))
    await api.get(f"{PODS}/missing")
    _, text = await api.get("/metrics")
    assert 'apiserver_request_total{code="201",resource="pods",verb="POST"} 1.0' in text
    assert 'apiserver_request_total{code="404",resource="pods",verb="GET"} 1.0' in text
    assert "apiserver_registered_watchers 0.0" in text


async def test_watch_fanout_is_counted_and_timed(api):
    """Each event the watch cache dispatches is counted, and each fan-out pass that
    wrote it to a watcher is counted and its duration observed."""
    _, listed = await api.get(PODS)
    headers = {"Authorization": f"Bearer {api.token}"}
    async with api.session.get(
            api.server.url + PODS, headers=headers,
            params={"watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]},
    ) as resp:
        assert resp.status == 200
        for name in ("w1", "w2"):
            assert (await api.post(PODS, pod(name)))[0] == 201
        async with asyncio.timeout(30):
            names = [json.loads(await resp.content.readline())["object"]["metadata"]["name"]
                     for _ in range(2)]
    assert names == ["w1", "w2"]
    _, text = await api.get("/metrics")
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples["apiserver_watch_cache_events_dispatched_total"] >= 2
    passes = samples["apiserver_watch_fanout_passes_total"]
    assert passes >= 1
    assert samples["apiserver_watch_fanout_duration_seconds_count"] == passes


async def test_metric_labels_stay_bounded_for_unknown_paths(api):
    """Requests for made-up resources (even unauthenticated ones) share one label."""
    for name in ("aaa", "bbb", "ccc"):
        await api.as_(None).get(f"/api/v1/namespaces/default/{name}")
    _, text = await api.get("/metrics")
    assert 'apiserver_request_total{code="401",resource="other",verb="GET"} 3.0' in text
    assert "aaa" not in text


@pytest.mark.system(commands=["promtool"])
async def test_metrics_pass_promtool(api):
    await api.post(PODS, pod("a"))
    _, text = await api.get("/metrics")
    proc = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode == 0, out.decode()
