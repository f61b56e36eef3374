"""Many requests through a proxy over a few keep-alive connections, for the end-to-end
tests of balancing and resilience (importable, like ``rawclient``)."""

from __future__ import annotations

import asyncio
from collections import Counter

from rawclient import RawConn, Reply, build


async def fire(port: int, n: int, *, conns: int = 8, method: str = "GET",
               target: str = "/echo", headers: dict[str, str] | None = None,
               body: bytes = b"", per_request=None) -> list[Reply]:
    """Send ``n`` requests spread over ``conns`` keep-alive connections; the replies in
    order of sending. ``per_request(i)`` may give each request its own headers."""
    replies: list[Reply | None] = [None] * n
    queue = list(range(n))

    async def worker() -> None:
        conn = await RawConn.open(port)
        try:
            while queue:
                i = queue.pop()
                hs = dict(headers or {})
                if per_request is not None:
                    hs.update(per_request(i))
                await conn.send(build(method, target, headers=hs, body=body))
                reply = await conn.read_reply(timeout=30.0)
                replies[i] = reply
                if not reply.keep_alive:
                    await conn.close()
                    conn = await RawConn.open(port)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(min(conns, n))))
    return [r for r in replies if r is not None]


def by_upstream(replies: list[Reply]) -> Counter[str]:
    """How many replies each upstream (``x-upstream``) answered."""
    return Counter(r.headers.get("x-upstream", "-") for r in replies)


def listener_port(proxy) -> int:
    return proxy.listeners["web"].port


async def eventually(cond, *, timeout: float = 10.0, step: float = 0.02) -> None:
    """Wait until ``cond()`` holds; AssertionError after ``timeout`` seconds."""
    for _ in range(int(timeout / step)):
        if cond():
            return
        await asyncio.sleep(step)
    assert cond(), f"condition not met within {timeout} s"
