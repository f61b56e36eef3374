"""The store contract: ONE suite, run against every backend (see conftest.py's
``backend`` fixture: SQLite, Consul on the in-repo double, a real Consul agent when
``CONSUL_HTTP_ADDR`` is set).

It pins what the API server relies on: reads, ordered prefix lists with paging, CAS
create/update/delete that change nothing when refused, revisions that only grow,
watches that replay history then follow live changes in revision order, the Compacted
error, and the leader-election lock. Backend-specific behaviour (durability, ageing,
Consul's coalescing of changes between polls) is tested in the backend's own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from control.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    NotFound,
)

P = "/registry/things/"


async def next_events(watch, n: int, timeout: float = 15.0) -> list[Event]:
    """The next ``n`` events of ``watch`` (fails after a generous timeout)."""

    async def take() -> list[Event]:
        return [await anext(watch) for _ in range(n)]

    return await asyncio.wait_for(take(), timeout)


async def test_create_then_get_returns_value_and_revisions(backend) -> None:
    """A created key reads back with create = mod revision, version 1."""
    s = backend.store
    kv = await s.create(P + "a", b"one")
    got = await s.get(P + "a")
    assert got == kv
    assert (got.value, got.version) == (b"one", 1)
    assert got.create_revision == got.mod_revision > 0
    assert await s.get(P + "missing") is None


async def test_create_of_existing_key_raises_and_keeps_value(backend) -> None:
    """Create is create-only: an existing key is refused and left as it was."""
    s = backend.store
    first = await s.create(P + "a", b"one")
    with pytest.raises(AlreadyExists):
        await s.create(P + "a", b"two")
    assert await s.get(P + "a") == first


async def test_update_advances_mod_revision_and_version(backend) -> None:
    """Update keeps create_revision, raises mod_revision, counts versions."""
    s = backend.store
    created = await s.create(P + "a", b"1")
    updated = await s.update(P + "a", b"2", expected_revision=created.mod_revision)
    assert updated.create_revision == created.create_revision
    assert updated.mod_revision > created.mod_revision
    assert updated.version == 2
    unconditional = await s.update(P + "a", b"3")
    assert (unconditional.version, unconditional.value) == (3, b"3")
    assert await s.get(P + "a") == unconditional


async def test_update_with_stale_revision_conflicts_and_changes_nothing(backend) -> None:
    """CAS on a stale mod_revision raises Conflict carrying both revisions."""
    s = backend.store
    created = await s.create(P + "a", b"1")
    current = await s.update(P + "a", b"2")
    with pytest.raises(Conflict) as err:
        await s.update(P + "a", b"3", expected_revision=created.mod_revision)
    assert (err.value.expected, err.value.actual) == (created.mod_revision, current.mod_revision)
    assert await s.get(P + "a") == current


async def test_update_and_delete_of_missing_key_raise_not_found(backend) -> None:
    s = backend.store
    with pytest.raises(NotFound):
        await s.update(P + "nope", b"x")
    with pytest.raises(NotFound):
        await s.update(P + "nope", b"x", expected_revision=5)
    with pytest.raises(NotFound):
        await s.delete(P + "nope")
    assert await s.get(P + "nope") is None


async def test_delete_returns_last_value_and_cas_protects_it(backend) -> None:
    """Delete returns the value it removed; a stale expected revision refuses it."""
    s = backend.store
    created = await s.create(P + "a", b"1")
    current = await s.update(P + "a", b"2")
    with pytest.raises(Conflict):
        await s.delete(P + "a", expected_revision=created.mod_revision)
    assert await s.get(P + "a") == current
    removed = await s.delete(P + "a", expected_revision=current.mod_revision)
    assert removed == current
    assert await s.get(P + "a") is None
    again = await s.create(P + "a", b"new")  # a key can be created again after delete
    assert again.version == 1
    assert again.create_revision > current.mod_revision


async def test_revisions_only_grow_across_keys(backend) -> None:
    """Every write gets a revision above all earlier ones; current_revision follows."""
    s = backend.store
    seen = []
    for i in range(5):
        seen.append((await s.create(f"{P}k{i}", b"v")).mod_revision)
        seen.append((await s.update(f"{P}k{i}", b"w")).mod_revision)
    seen.append(await s.current_revision())
    removed_at = await s.current_revision()
    await s.delete(P + "k0")
    assert seen[:-1] == sorted(set(seen[:-1]))
    assert seen[-1] == seen[-2]
    assert await s.current_revision() > removed_at


async def test_list_returns_prefix_in_key_order_with_paging(backend) -> None:
    """list(prefix) returns exactly the keys under it, sorted; start_after and limit page
    through it without gaps or repeats; the revision is at least the last write's."""
    s = backend.store
    names = ["b", "a", "c/x", "d", "aa"]
    last = None
    for n in names:
        last = await s.create(P + n, n.encode())
    await s.create("/registry/thingsandmore/z", b"outside")  # same string prefix minus '/'
    await s.create("/registry/other/a", b"outside")
    items, rev = await s.list(P)
    assert [kv.key for kv in items] == [P + n for n in sorted(names)]
    assert [kv.value for kv in items] == [n.encode() for n in sorted(names)]
    assert rev >= last.mod_revision
    page1, _ = await s.list(P, limit=2)
    page2, _ = await s.list(P, start_after=page1[-1].key, limit=2)
    page3, _ = await s.list(P, start_after=page2[-1].key, limit=2)
    assert [kv.key for kv in page1 + page2 + page3] == [kv.key for kv in items]
    assert len(page3) == 1
    everything, _ = await s.list("")
    assert len(everything) == len(names) + 2


async def test_bad_input_is_refused_before_anything_changes(backend) -> None:
    """Malformed keys, values and prefixes raise ValueError naming the problem."""
    s = backend.store
    before = await s.current_revision()
    for key in ["", "no-slash", "/", "/ends/", 7]:
        with pytest.raises(ValueError, match="key"):
            await s.create(key, b"x")
    with pytest.raises(ValueError, match="value"):
        await s.create(P + "a", "not bytes")
    with pytest.raises(ValueError, match="prefix"):
        await s.list("relative/")
    with pytest.raises(ValueError, match="revision"):
        await s.update(P + "a", b"x", expected_revision=-1)
    assert await s.current_revision() == before
    assert await s.get(P + "a") is None


async def test_watch_replays_history_then_follows_live_changes(backend) -> None:
    """A watch from revision R yields every later change under the prefix in revision
    order (ADDED, MODIFIED, DELETED with the deleted value), then live ones."""
    s = backend.store
    start = await s.current_revision()
    a = await s.create(P + "a", b"1")
    await s.create("/registry/other/x", b"not watched")
    a2 = await s.update(P + "a", b"2")
    b = await s.create(P + "b", b"3")
    await s.delete(P + "a")
    async with s.watch(P, from_revision=start) as w:
        history = await next_events(w, 4)
        assert [(e.type, e.kv.key) for e in history] == [
            ("ADDED", P + "a"), ("MODIFIED", P + "a"), ("ADDED", P + "b"),
            ("DELETED", P + "a")]
        assert [e.kv for e in history[:3]] == [a, a2, b]
        assert history[3].kv.value == b"2"
        assert history[3].revision > b.mod_revision
        assert [e.revision for e in history] == sorted(e.revision for e in history)
        live = await s.update(P + "b", b"4")
        (event,) = await next_events(w, 1)
        assert (event.type, event.kv, event.revision) == ("MODIFIED", live, live.mod_revision)


async def test_watch_from_a_revision_starts_after_it(backend) -> None:
    """from_revision=R excludes the write at R itself (the list-then-watch pattern)."""
    s = backend.store
    a = await s.create(P + "a", b"1")
    b = await s.create(P + "b", b"2")
    async with s.watch(P, from_revision=a.mod_revision) as w:
        (event,) = await next_events(w, 1)
        assert event.kv == b


async def test_watch_from_now_sees_only_later_changes_under_its_prefix(backend) -> None:
    s = backend.store
    await s.create(P + "old", b"x")
    async with s.watch(P, from_revision=await s.current_revision()) as w, \
            s.watch("/registry/other/", from_revision=await s.current_revision()) as other:
        await s.create("/registry/other/o", b"o")
        new = await s.create(P + "new", b"y")
        (event,) = await next_events(w, 1)
        assert (event.type, event.kv) == ("ADDED", new)
        (event,) = await next_events(other, 1)
        assert event.kv.key == "/registry/other/o"


async def test_many_watchers_each_receive_every_change_in_order(backend) -> None:
    """Fan-out: 50 watchers all get the same 20 changes, in the same order."""
    s = backend.store
    start = await s.current_revision()
    watches = [s.watch(P, from_revision=start) for _ in range(50)]
    try:
        written = [(await s.create(f"{P}k{i:02}", b"v")).mod_revision for i in range(20)]
        results = await asyncio.gather(*(next_events(w, 20, timeout=30) for w in watches))
        for events in results:
            assert [e.revision for e in events] == written
    finally:
        for w in watches:
            await w.aclose()


async def test_watch_below_compacted_revision_raises_compacted(backend) -> None:
    """After compact(R), history at or below R is gone: watching from below R raises
    Compacted (the API's 410 Gone); watching from R itself still works."""
    s = backend.store
    first = await s.create(P + "a", b"1")
    second = await s.update(P + "a", b"2")
    third = await s.update(P + "a", b"3")
    await s.compact(second.mod_revision)
    async with s.watch(P, from_revision=first.mod_revision) as w:
        with pytest.raises(Compacted) as err:
            await next_events(w, 1)
    assert err.value.requested == first.mod_revision
    assert err.value.compacted >= second.mod_revision
    async with s.watch(P, from_revision=second.mod_revision) as w:
        (event,) = await next_events(w, 1)
        assert event.kv == third
    assert await s.get(P + "a") == third  # current values survive compaction


async def test_concurrent_cas_writers_exactly_one_wins_each_round(backend) -> None:
    """Many writers read the same revision and CAS at once: exactly one wins a round, the
    rest get Conflict, and no update is lost (the counter equals the rounds)."""
    s = backend.store
    peer = await backend.open_peer()
    await s.create(P + "counter", b"0")
    rounds, writers = 8, 6
    for _ in range(rounds):
        current = await s.get(P + "counter")

        async def attempt(i: int, current=current) -> bool:
            client = s if i % 2 else peer
            try:
                await client.update(P + "counter", str(int(current.value) + 1).encode(),
                                    expected_revision=current.mod_revision)
            except Conflict:
                return False
            return True

        outcomes = await asyncio.gather(*(attempt(i) for i in range(writers)))
        assert sum(outcomes) == 1
    assert (await s.get(P + "counter")).value == str(rounds).encode()


async def test_lock_is_exclusive_renewable_and_released_by_its_holder(backend) -> None:
    s = backend.store
    peer = await backend.open_peer()
    ttl = max(backend.min_ttl, 15.0)
    assert await s.lock_holder("leader") is None
    assert await s.try_acquire_lock("leader", "a", ttl)
    assert await s.lock_holder("leader") == "a"
    assert not await peer.try_acquire_lock("leader", "b", ttl)
    assert await s.try_acquire_lock("leader", "a", ttl)  # renew
    await peer.release_lock("leader", "b")  # not the holder: nothing happens
    assert await peer.lock_holder("leader") == "a"
    await s.release_lock("leader", "a")
    assert await s.lock_holder("leader") is None
    assert await peer.try_acquire_lock("leader", "b", ttl)
    assert await s.lock_holder("leader") == "b"
    await peer.release_lock("leader", "b")


async def test_lock_expires_after_ttl_and_renewal_postpones_it(backend) -> None:
    """A holder that stops renewing loses the lock after its TTL; renewing in time keeps
    it. Runs on the backend's controllable clock."""
    if backend.clock is None:
        pytest.skip(f"{backend.name}: time cannot be controlled (Consul sessions expire"
                    " between 1 and 2 TTLs of real time, at least 10 s)")
    s, clock = backend.store, backend.clock
    peer = await backend.open_peer()
    ttl = max(backend.min_ttl, 15.0)
    assert await s.try_acquire_lock("leader", "a", ttl)
    clock.advance(ttl * 0.6)
    assert await s.try_acquire_lock("leader", "a", ttl)  # renewed before expiry
    clock.advance(ttl * 0.6)
    assert await s.lock_holder("leader") == "a"
    assert not await peer.try_acquire_lock("leader", "b", ttl)
    clock.advance(ttl + backend.expiry_slack + 1)
    assert await s.lock_holder("leader") is None
    assert await peer.try_acquire_lock("leader", "b", ttl)
    assert not await s.try_acquire_lock("leader", "a", ttl)
    with contextlib.suppress(Exception):
        await peer.release_lock("leader", "b")


async def test_lock_arguments_are_validated(backend) -> None:
    s = backend.store
    with pytest.raises(ValueError, match="ttl"):
        await s.try_acquire_lock("leader", "a", 0)
    with pytest.raises(ValueError, match="holder"):
        await s.try_acquire_lock("leader", "", 15)
    assert await s.lock_holder("leader") is None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_operations_match_a_model_and_replaying_the_watch_rebuilds_the_state(
        backend, seed: int) -> None:
    """A seeded random mix of creates, (CAS) updates and (CAS) deletes, some of them
    meant to fail, behaves exactly like a dict model: same outcomes, same final listing.
    Replaying a watch from before the run onto an empty map rebuilds that final state
    (on Consul, changes between two polls may coalesce, so the watch may carry fewer
    events than there were writes, never a wrong state)."""
    rng = random.Random(seed)
    s = backend.store
    model: dict[str, tuple[bytes, int]] = {}  # key -> (value, mod_revision)
    keys = [f"{P}r{i}" for i in range(6)]
    start = await s.current_revision()
    for step in range(60):
        key = rng.choice(keys)
        op = rng.choice(["create", "update", "update-cas", "stale-cas", "delete",
                         "delete-cas"])
        value = f"{seed}-{step}".encode()
        present = key in model
        if op == "create":
            if present:
                with pytest.raises(AlreadyExists):
                    await s.create(key, value)
            else:
                model[key] = (value, (await s.create(key, value)).mod_revision)
        elif op in ("update", "update-cas", "stale-cas"):
            expected = None
            if op == "update-cas" and present:
                expected = model[key][1]
            elif op == "stale-cas" and present:
                expected = model[key][1] - 1
            if not present:
                with pytest.raises(NotFound):
                    await s.update(key, value, expected_revision=expected)
            elif op == "stale-cas":
                with pytest.raises(Conflict):
                    await s.update(key, value, expected_revision=expected)
            else:
                model[key] = (value, (await s.update(key, value,
                                                     expected_revision=expected)).mod_revision)
        else:
            if not present:
                with pytest.raises(NotFound):
                    await s.delete(key)
            else:
                expected = model[key][1] if op == "delete-cas" else None
                removed = await s.delete(key, expected_revision=expected)
                assert (removed.value, removed.mod_revision) == model.pop(key)
    items, _ = await s.list(P)
    assert {kv.key: (kv.value, kv.mod_revision) for kv in items} == model

    assert model, "the seed should leave some keys (else the replay proves nothing)"
    replayed: dict[str, bytes] = {}
    async with s.watch(P, from_revision=start) as w:
        async def replay() -> None:
            while replayed != {k: v for k, (v, _r) in model.items()}:
                event = await anext(w)
                if event.type == "DELETED":
                    replayed.pop(event.kv.key, None)
                else:
                    replayed[event.kv.key] = event.kv.value

        await asyncio.wait_for(replay(), 15)
