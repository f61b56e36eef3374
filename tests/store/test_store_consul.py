"""Consul-backend behaviour beyond the contract, against the Consul double
(``support/consul_double.py``; no Consul binary can be installed here): deletes seen in
one poll share a revision yet all reach watchers; writes by another client reach this
one's watchers; history is bounded and before-start history is Compacted; ACL tokens;
URL parsing and Consul's TTL range. Also ``migrate`` from SQLite into Consul."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.store import open_store
from control.store.base import Compacted, StoreError
from control.store.consul import ConsulStore
from control.store.consul_client import Client
from control.store.migrate import migrate
from control.store.sqlite import SqliteOptions, SqliteStore
from support.consul_double import ConsulDouble

P = "/registry/pods/default/"
TOKEN = "s3cret"


@pytest.fixture
async def double(manual_clock) -> AsyncIterator[ConsulDouble]:
    d = ConsulDouble(token=TOKEN, clock=manual_clock)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def _open(double: ConsulDouble, **kw) -> ConsulStore:
    host, _, port = double.address.rpartition(":")
    kw.setdefault("token", TOKEN)
    kw.setdefault("prefix", "mesh")
    return await ConsulStore.open(host, int(port), wait=5.0, **kw)


async def _events(watch, n: int) -> list:
    """The next ``n`` events (fails after a generous timeout)."""

    async def take() -> list:
        return [await anext(watch) for _ in range(n)]

    return await asyncio.wait_for(take(), 15)


async def test_deletes_seen_in_one_poll_share_a_revision_and_all_reach_watchers(
        double: ConsulDouble) -> None:
    """A recursive delete removes three keys at one raft index: watchers get three
    DELETED events with that one revision, in key order, none dropped by de-duplication,
    and a following change still arrives."""
    async with await _open(double) as s:
        for name in "abc":
            await s.create(P + name, name.encode())
        async with s.watch(P) as w:
            client = Client(host="127.0.0.1", port=int(double.address.split(":")[1]),
                            token=TOKEN)
            try:
                await client.kv.delete("mesh/data" + P, recurse=True)
            finally:
                await client.close()
            deleted = await _events(w, 3)
            assert [(e.type, e.kv.key) for e in deleted] == [
                ("DELETED", P + "a"), ("DELETED", P + "b"), ("DELETED", P + "c")]
            assert len({e.revision for e in deleted}) == 1
            assert deleted[0].kv.value == b"a"
            later = await s.create(P + "d", b"d")
            (event,) = await _events(w, 1)
            assert event.kv == later


async def test_changes_between_two_polls_coalesce_into_the_latest_state(
        double: ConsulDouble) -> None:
    """Consul has no history: two updates of one key between two blocking queries are
    seen as one MODIFIED carrying the latest value (prev_kv is the last value seen), and
    a key created and deleted in between is never reported. Simulated by changing the
    double's state twice before waking its blocking queries once."""
    from support.consul_double import _Entry

    async with await _open(double) as s:
        start = await s.current_revision()
        a = await s.create(P + "a", b"1")
        async with s.watch(P, from_revision=start) as w:
            assert (await _events(w, 1))[0].kv == a  # the poller has seen "a"
            path = "mesh/data" + P
            for value in (b"2", b"3"):
                idx = double._next_index()
                double._write(path + "a", _Entry(value, 3, a.create_revision, idx))
            idx = double._next_index()
            double._write(path + "brief", _Entry(b"x", 1, idx, idx))
            double._next_index()
            double._write(path + "brief", None)
            double._notify()
            (event,) = await _events(w, 1)
            assert (event.type, event.kv.value, event.prev_kv) == ("MODIFIED", b"3", a)
            later = await s.create(P + "z", b"z")
            (event,) = await _events(w, 1)
            assert event.kv == later  # nothing about "brief" came in between


async def test_writes_by_another_client_reach_this_clients_watchers(
        double: ConsulDouble) -> None:
    """Several API servers may share one Consul prefix: each one's poller sees the
    others' writes."""
    async with await _open(double) as s, await _open(double) as other, s.watch(P) as w:
        kv = await other.create(P + "x", b"from the other one")
        (event,) = await _events(w, 1)
        assert (event.type, event.kv) == ("ADDED", kv)


async def test_history_is_bounded_and_older_watches_are_compacted(double) -> None:
    """Consul keeps no history: the store keeps the last ``history_limit`` events it
    saw; a watch from before them, or from before the store opened, is Compacted."""
    async with await _open(double) as before:
        old = await before.create(P + "old", b"1")
        await before.update(P + "old", b"2")  # history after `old` exists, unseen
    async with await _open(double, history_limit=3) as s:
        async with s.watch(P, from_revision=old.mod_revision) as w:
            with pytest.raises(Compacted):
                await _events(w, 1)
        start = await s.current_revision()
        writes = [await s.create(f"{P}k{i}", b"v") for i in range(5)]
        async with s.watch(P) as live:  # wait until the poller has seen all five
            await s.create(P + "marker", b"m")
            await _events(live, 1)
        async with s.watch(P, from_revision=start) as w:
            with pytest.raises(Compacted):
                await _events(w, 1)
        async with s.watch(P, from_revision=writes[-2].mod_revision) as w:
            got = await _events(w, 2)
        assert [e.kv.key for e in got] == [P + "k4", P + "marker"]


async def test_watch_survives_consul_going_away_and_coming_back(double) -> None:
    """While Consul is unreachable the poller counts errors and retries with back-off;
    when it is back, changes made meanwhile reach the watch (by snapshot diff)."""
    async with await _open(double) as s, s.watch(P) as w:
        port = int(double.address.rpartition(":")[2])
        await double.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while s.poll_errors == 0:
            assert loop.time() < deadline, "the poller never noticed Consul was gone"
            await asyncio.sleep(0.05)
        with pytest.raises(StoreError, match="consul"):
            await s.create(P + "while-down", b"x")
        await double.start(port)
        kv = await s.create(P + "after", b"y")
        (event,) = await _events(w, 1)
        assert (event.type, event.kv) == ("ADDED", kv)


async def test_wrong_or_missing_acl_token_is_refused_clearly(double) -> None:
    with pytest.raises(StoreError, match="permission denied"):
        await _open(double, token="wrong")
    with pytest.raises(StoreError, match="permission denied"):
        await _open(double, token=None)


async def test_open_store_reads_consul_urls(double, monkeypatch) -> None:
    """``consul://host:port/prefix?token=`` opens the Consul backend under that prefix;
    CONSUL_HTTP_TOKEN is the fallback token; unknown parameters are refused."""
    s = await open_store(f"consul://{double.address}/team/mesh?token={TOKEN}")
    try:
        assert isinstance(s, ConsulStore)
        assert s.prefix == "team/mesh"
        await s.create("/a", b"1")
        assert "team/mesh/data/a" in double.kv
    finally:
        await s.close()
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    s = await open_store(f"consul://{double.address}/mesh")
    await s.close()
    with pytest.raises(ValueError, match="unknown consul store URL parameter"):
        await open_store(f"consul://{double.address}/mesh?tokn=x")


async def test_consul_lock_ttl_must_fit_consul_session_limits(double) -> None:
    async with await _open(double) as s:
        with pytest.raises(ValueError, match="between 10 and 86400"):
            await s.try_acquire_lock("leader", "a", 5)
        assert await s.lock_holder("leader") is None


async def test_migrate_copies_every_key_from_sqlite_to_consul(double, data_dir: Path) -> None:
    """All keys and values arrive; a re-run copies nothing; a destination holding a
    different value for a key is refused before anything is written."""
    opts = SqliteOptions(maintenance_interval=0)
    async with await SqliteStore.open(data_dir / "s.db", options=opts) as src:
        for i in range(120):
            await src.create(f"/registry/pods/ns{i % 3}/p{i:03}", f"pod {i}".encode())
        await src.create("/registry/services/default/web", b"svc")
        async with await _open(double) as dst:
            assert await migrate(src, dst) == 121
            src_items, _ = await src.list("")
            dst_items, _ = await dst.list("")
            assert [(kv.key, kv.value) for kv in dst_items] == \
                [(kv.key, kv.value) for kv in src_items]
            assert await migrate(src, dst) == 0

        async with await _open(double, prefix="other") as clash:
            await clash.create("/registry/services/default/web", b"different")
            with pytest.raises(StoreError, match="other values"):
                await migrate(src, clash)
            assert (await clash.list(""))[0][0].value == b"different"
            assert len((await clash.list(""))[0]) == 1
            assert await migrate(src, clash, overwrite=True) == 121
            assert (await clash.get("/registry/services/default/web")).value == b"svc"
