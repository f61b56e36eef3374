"""Fixtures for the store suites: one ``backend`` fixture parametrized over every store
backend, so ``test_store_contract.py`` is ONE suite run against each of them.

- ``sqlite``: a real SQLite file in the test's data directory, on a manual clock.
- ``consul-double``: ``ConsulStore`` against ``support.consul_double`` (an aiohttp double
  of Consul's HTTP API; no Consul binary can be installed here), on a manual clock that
  also drives the double's session TTLs.
- ``consul-real``: ``ConsulStore`` against a real agent at ``CONSUL_HTTP_ADDR`` (with
  ``CONSUL_HTTP_TOKEN`` when set), under a unique prefix deleted afterwards. Skipped with
  the reason when the variable is unset. It is not a ``system`` test: no Consul can be
  installed on these machines, so CI cannot be required to have one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from control.store.base import Store
from control.store.consul import ConsulStore
from control.store.sqlite import SqliteOptions, SqliteStore
from support.consul_double import ConsulDouble


class ManualClock:
    """A clock that moves only when told to (seconds, like ``time.time``)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@dataclass
class Backend:
    """One store under test and what the contract needs to know about it."""

    name: str
    store: Store
    #: None when the backend's time cannot be controlled (a real Consul agent)
    clock: ManualClock | None
    #: the shortest lock TTL the backend accepts (Consul sessions: 10 s)
    min_ttl: float
    #: seconds after the TTL until a lock is certainly free (Consul: up to 2 x TTL)
    expiry_slack: float
    #: opens a second client on the same data (another API server process)
    open_peer: Callable[[], Awaitable[Store]]


NO_EXTRA_OPTIONS = SqliteOptions(maintenance_interval=0)
CONSUL_ADDR = os.environ.get("CONSUL_HTTP_ADDR")


def unique_prefix() -> str:
    return f"meshtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def sqlite_store(data_dir: Path) -> AsyncIterator[tuple[SqliteStore, ManualClock]]:
    clock = ManualClock()
    store = await SqliteStore.open(data_dir / "store.db", options=NO_EXTRA_OPTIONS, clock=clock)
    try:
        yield store, clock
    finally:
        await store.close()


async def _sqlite_backend(data_dir: Path) -> AsyncIterator[Backend]:
    clock = ManualClock()
    path = data_dir / "store.db"
    store = await SqliteStore.open(path, options=NO_EXTRA_OPTIONS, clock=clock)
    peers: list[Store] = []

    async def open_peer() -> Store:
        peer = await SqliteStore.open(path, options=NO_EXTRA_OPTIONS, clock=clock)
        peers.append(peer)
        return peer

    try:
        yield Backend("sqlite", store, clock, 0.5, 0.0, open_peer)
    finally:
        for peer in peers:
            await peer.close()
        await store.close()


async def _consul_backend(host: str, port: int, *, token: str | None, prefix: str,
                          clock: ManualClock | None, name: str) -> AsyncIterator[Backend]:
    # a short blocking-query wait keeps teardown quick; behaviour does not depend on it
    store = await ConsulStore.open(host, port, prefix=prefix, token=token, wait=5.0)
    peers: list[ConsulStore] = []

    async def open_peer() -> Store:
        peer = await ConsulStore.open(host, port, prefix=prefix, token=token, wait=5.0)
        peers.append(peer)
        return peer

    try:
        # Consul may invalidate an unrenewed session up to 2 x TTL late
        yield Backend(name, store, clock, 10.0, 15.0, open_peer)
    finally:
        for peer in peers:
            await peer.close()
        await store.close()


async def _double_backend() -> AsyncIterator[Backend]:
    clock = ManualClock()
    double = ConsulDouble(clock=clock, token="test-token")
    await double.start()
    host, _, port = double.address.rpartition(":")
    gen = _consul_backend(host, int(port), token="test-token", prefix="mesh/test",
                          clock=clock, name="consul-double")
    try:
        yield await anext(gen)
    finally:
        await gen.aclose()
        await double.stop()


async def _real_consul_backend() -> AsyncIterator[Backend]:
    addr = CONSUL_ADDR.split("://")[-1]
    host, _, port = addr.rpartition(":")
    prefix = unique_prefix()
    token = os.environ.get("CONSUL_HTTP_TOKEN") or None
    gen = _consul_backend(host, int(port), token=token, prefix=prefix, clock=None,
                          name="consul-real")
    backend = await anext(gen)
    try:
        yield backend
    finally:
        from control.store.consul_client import Client

        client = Client(host=host, port=int(port), token=token)
        try:
            await client.kv.delete(prefix + "/", recurse=True)
        finally:
            await client.close()
        await gen.aclose()


BACKENDS = ["sqlite", "consul-double", "consul-real"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, data_dir: Path) -> AsyncIterator[Backend]:
    """Each contract test runs once per backend."""
    if request.param == "sqlite":
        gen = _sqlite_backend(data_dir)
    elif request.param == "consul-double":
        gen = _double_backend()
    elif CONSUL_ADDR:
        gen = _real_consul_backend()
    else:
        pytest.skip("CONSUL_HTTP_ADDR is not set: no real Consul agent to run the contract"
                    " against (none can be installed here; the double stands in)")
    b = await anext(gen)
    try:
        yield b
    finally:
        await gen.aclose()

