"""/metrics is valid Prometheus text (promtool) and counts requests by verb, resource
and code."""

from __future__ import annotations

import asyncio

import pytest
from apitest import PODS, pod


async def test_requests_are_counted_by_verb_resource_and_code(api):
    await api.post(PODS, pod("a"))
    await api.get(f"{PODS}/missing")
    _, text = await api.get("/metrics")
    assert 'apiserver_request_total{code="201",resource="pods",verb="POST"} 1.0' in text
    assert 'apiserver_request_total{code="404",resource="pods",verb="GET"} 1.0' in text
    assert "apiserver_registered_watchers 0.0" in text


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
