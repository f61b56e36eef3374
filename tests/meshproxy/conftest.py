"""Fixtures for proxy tests: misbehaving upstreams and an in-process proxy.

``upstream`` / ``upstreams(n)`` start servers from :mod:`upstreams`; ``proxy_factory``
starts a :class:`meshproxy.proxy.Proxy` on the test's own event loop from YAML text
(with ``{up}``-style placeholders already filled by the test) and closes it after.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from upstreams import Upstream

from meshproxy.config import parse_config
from meshproxy.proxy import Proxy


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream("up1") as up:
        yield up


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[int], Awaitable[list[Upstream]]]]:
    started: list[Upstream] = []

    async def make(n: int) -> list[Upstream]:
        ups = [await Upstream(f"up{i + 1}").start() for i in range(n)]
        started.extend(ups)
        return ups

    yield make
    for up in started:
        await up.stop()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Callable[[str], Awaitable[Proxy]]]:
    proxies: list[Proxy] = []

    async def make(yaml_text: str) -> Proxy:
        p = Proxy(parse_config(yaml_text))
        await p.start()
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        await p.close()


