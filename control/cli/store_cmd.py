"""``meshctl store migrate``: copy a stopped cluster's state from one store to another.

The copy is ``control.store.migrate.migrate``: one consistent snapshot of the source,
refused before writing anything when the destination holds different values (unless
``--overwrite``), safe to run again after an interruption.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="store maintenance: migrate SQLite -> Consul",
                       description="Maintenance of the control plane's store.")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    m = ssub.add_parser("migrate", help="copy every key into another store (run it with the "
                        "API server stopped)",
                        description="Copy every key of the source store into the destination "
                                    "store. Stop the API server first: a SQLite file is "
                                    "owned by one process.")
    m.add_argument("--from", dest="source", default=None, metavar="URL",
                   help="source store URL (default: sqlite:///.mesh/api/store.db)")
    m.add_argument("--to", dest="dest", required=True, metavar="URL",
                   help="destination, e.g. consul://127.0.0.1:8500/mesh?token=...")
    m.add_argument("--overwrite", action="store_true",
                   help="replace keys the destination holds with other values")
    m.set_defaults(handler=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    source = args.source or f"sqlite:///{Path('.mesh/api/store.db').resolve()}"
    try:
        n = asyncio.run(_migrate(source, args.dest, args.overwrite))
    except (ValueError, OSError) as e:
        print(f"meshctl store migrate: {e}", file=sys.stderr)
        return 1
    print(f"copied {n} key(s) from {source} to {args.dest}")
    return 0


async def _migrate(source: str, dest: str, overwrite: bool) -> int:
    from control.store import StoreError, open_store
    from control.store.migrate import migrate

    try:
        src = await open_store(source)
    except (StoreError, ValueError, OSError) as e:
        raise ValueError(f"cannot open the source {source}: {e}") from e
    try:
        try:
            dst = await open_store(dest)
        except (StoreError, ValueError, OSError) as e:
            raise ValueError(f"cannot open the destination {dest}: {e}") from e
        try:
            return await migrate(src, dst, overwrite=overwrite)
        except StoreError as e:
            raise ValueError(str(e)) from e
        finally:
            await dst.close()
    finally:
        await src.close()
