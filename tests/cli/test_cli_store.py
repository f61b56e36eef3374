"""``meshctl store migrate`` copies every key into another store and refuses, changing
nothing, when the destination already holds different values."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cli_kit import run_main

from control.store import open_store


async def _seed(url: str, items: dict[str, bytes]) -> None:
    store = await open_store(url)
    try:
        for k, v in items.items():
            await store.create(k, v)
    finally:
        await store.close()


async def _dump(url: str) -> dict[str, bytes]:
    store = await open_store(url)
    try:
        kvs, _ = await store.list("")
        return {kv.key: kv.value for kv in kvs}
    finally:
        await store.close()


def test_migrate_copies_and_refuses_conflicts(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    dst = f"sqlite:///{tmp_path / 'dst.db'}"
    asyncio.run(_seed(src, {"/registry/pods/default/a": b"1", "/registry/pods/default/b": b"2"}))
    r = run_main(["store", "migrate", "--from", src, "--to", dst])
    assert r.returncode == 0, r.stderr
    assert "copied 2 key(s)" in r.stdout
    assert asyncio.run(_dump(dst)) == asyncio.run(_dump(src))

    asyncio.run(_seed(dst, {"/registry/pods/default/c": b"x"}))
    conflicting = f"sqlite:///{tmp_path / 'other.db'}"
    asyncio.run(_seed(conflicting, {"/registry/pods/default/a": b"different"}))
    r = run_main(["store", "migrate", "--from", conflicting, "--to", dst])
    assert r.returncode == 1
    assert "/registry/pods/default/a" in r.stderr
    assert asyncio.run(_dump(dst))["/registry/pods/default/a"] == b"1"


def test_migrate_names_an_unopenable_source(tmp_path: Path) -> None:
    r = run_main(["store", "migrate", "--from", f"sqlite:///{tmp_path}/missing/x.db",
                  "--to", f"sqlite:///{tmp_path / 'dst.db'}"])
    assert r.returncode == 1
    assert "cannot open the source" in r.stderr
