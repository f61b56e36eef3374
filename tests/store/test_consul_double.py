"""The Consul double (``support/consul_double.py``) behaves as Consul's API documentation
says, at the HTTP level, for what the store relies on: blocking queries, CAS, atomic
transactions, session TTLs and lock release, ACL refusals. These pin the double's
faithfulness; the real-agent run of the contract suite (``CONSUL_HTTP_ADDR``) checks
it against Consul itself."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest

from support.consul_double import ConsulDouble

TOKEN = "t0ken"


@pytest.fixture
async def http(manual_clock) -> AsyncIterator[tuple[aiohttp.ClientSession, str, ConsulDouble]]:
    double = ConsulDouble(token=TOKEN, clock=manual_clock)
    await double.start()
    session = aiohttp.ClientSession(headers={"X-Consul-Token": TOKEN})
    try:
        yield session, f"http://{double.address}", double
    finally:
        await session.close()
        await double.stop()


async def test_blocking_query_returns_on_change_with_a_greater_index(http) -> None:
    """GET ?index=N blocks until the prefix changes, then answers with X-Consul-Index > N;
    without a change it answers after ``wait`` with the same index."""
    s, base, _ = http
    async with s.put(f"{base}/v1/kv/app/a", data=b"1") as r:
        assert await r.json() is True
    async with s.get(f"{base}/v1/kv/app/?recurse") as r:
        index = int(r.headers["X-Consul-Index"])
    async with s.get(f"{base}/v1/kv/app/?recurse&index={index}&wait=50ms") as r:
        assert int(r.headers["X-Consul-Index"]) == index
    blocked = asyncio.create_task(s.get(f"{base}/v1/kv/app/?recurse&index={index}&wait=30s"))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    async with s.delete(f"{base}/v1/kv/app/a") as r:
        assert r.status == 200
    async with await asyncio.wait_for(blocked, 10) as r:
        assert r.status == 404  # nothing left under the prefix
        assert int(r.headers["X-Consul-Index"]) > index  # the tombstone's index


async def test_kv_entries_carry_base64_values_and_indexes_and_cas_is_enforced(http) -> None:
    s, base, _ = http
    async with s.put(f"{base}/v1/kv/k?cas=0&flags=7", data=b"\x00bin") as r:
        assert await r.json() is True
    async with s.put(f"{base}/v1/kv/k?cas=0", data=b"again") as r:
        assert await r.json() is False
    async with s.get(f"{base}/v1/kv/k") as r:
        (entry,) = await r.json()
    assert base64.b64decode(entry["Value"]) == b"\x00bin"
    assert entry["Flags"] == 7
    assert entry["CreateIndex"] == entry["ModifyIndex"]
    async with s.put(f"{base}/v1/kv/k?cas={entry['ModifyIndex'] + 1}", data=b"x") as r:
        assert await r.json() is False
    async with s.delete(f"{base}/v1/kv/k?cas={entry['ModifyIndex'] + 1}") as r:
        assert await r.json() is False
    async with s.get(f"{base}/v1/kv/k") as r:
        assert (await r.json())[0]["ModifyIndex"] == entry["ModifyIndex"]


async def test_txn_is_atomic_and_reports_the_failing_operation(http) -> None:
    """One failing check rolls the whole transaction back: 409, Errors[].OpIndex names
    it, nothing applied. A successful one returns Results with indexes, Value null."""
    s, base, double = http
    v = base64.b64encode(b"v").decode()
    ops = [{"KV": {"Verb": "cas", "Key": "a", "Value": v, "Index": 0}},
           {"KV": {"Verb": "cas", "Key": "b", "Value": v, "Index": 99}}]
    async with s.put(f"{base}/v1/txn", json=ops) as r:
        assert r.status == 409
        body = await r.json()
    assert body["Errors"][0]["OpIndex"] == 1
    assert "a" not in double.kv
    async with s.put(f"{base}/v1/txn", json=ops[:1]) as r:
        assert r.status == 200
        (result,) = (await r.json())["Results"]
    assert result["KV"]["Value"] is None
    assert result["KV"]["ModifyIndex"] == double.kv["a"].modify_index


async def test_session_ttl_expiry_releases_or_deletes_its_locks(http, manual_clock) -> None:
    """An unrenewed TTL session is invalidated: Behavior=release frees the key (Session
    gone, value kept), Behavior=delete removes it. Renewal postpones expiry."""
    s, base, _ = http
    sessions = {}
    for behavior in ("release", "delete"):
        async with s.put(f"{base}/v1/session/create",
                         json={"TTL": "10s", "Behavior": behavior, "LockDelay": "0s"}) as r:
            sessions[behavior] = (await r.json())["ID"]
        async with s.put(f"{base}/v1/kv/lock-{behavior}?acquire={sessions[behavior]}",
                         data=b"me") as r:
            assert await r.json() is True
    async with s.put(f"{base}/v1/kv/lock-release?acquire=other", data=b"x") as r:
        assert r.status == 500  # unknown session
    manual_clock.advance(8)
    async with s.put(f"{base}/v1/session/renew/{sessions['release']}") as r:
        assert r.status == 200
    manual_clock.advance(8)  # "delete" session: 16 s > TTL; "release": 8 s since renewal
    async with s.get(f"{base}/v1/kv/lock-delete") as r:
        assert r.status == 404
    async with s.get(f"{base}/v1/kv/lock-release") as r:
        assert (await r.json())[0]["Session"] == sessions["release"]
    manual_clock.advance(3)
    async with s.get(f"{base}/v1/kv/lock-release") as r:
        (entry,) = await r.json()
    assert "Session" not in entry
    assert entry["LockIndex"] == 1
    assert base64.b64decode(entry["Value"]) == b"me"
    async with s.put(f"{base}/v1/session/renew/{sessions['release']}") as r:
        assert r.status == 404


async def test_bad_session_ttl_and_acl_tokens_are_refused(http) -> None:
    s, base, _ = http
    async with s.put(f"{base}/v1/session/create", json={"TTL": "5s"}) as r:
        assert r.status == 400
        assert "Invalid Session TTL" in await r.text()
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{base}/v1/kv/x") as r:
            assert (r.status, await r.text()) == (403, "Permission denied")
        async with anonymous.get(f"{base}/v1/kv/x", headers={"X-Consul-Token": "no"}) as r:
            assert (r.status, await r.text()) == (403, "ACL not found")
        async with anonymous.get(f"{base}/v1/kv/x?token={TOKEN}") as r:
            assert r.status == 404
