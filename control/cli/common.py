"""What every client verb of ``meshctl`` shares: connection flags, running, errors.

Connection flags (``--server``, ``--token``, ``--token-file``, ``--certificate-authority``,
``--insecure-skip-tls-verify``, ``--context``, ``--config``, ``--request-timeout``) and
``-n/--namespace`` are added to each client verb by :func:`client_parent`; they override
the environment and the config file (:mod:`control.client.config`).

:func:`run_client` resolves the config, opens an :class:`ApiClient`, runs the verb's
coroutine and turns failures into kubectl-style messages on stderr with exit status 1:
``Error from server (NotFound): deployments.apps "web" not found`` for API errors (the
server's own message), ``error: ...`` for connection, config and input errors. Ctrl-C
ends a verb (such as ``get -w``) with status 0.

Neighbours: the verbs in :mod:`control.cli` (``get``, ``apply``, ``delete``, ``scale``,
``describe``, ``config_cmd``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from control.client import errors
from control.client.config import ConfigError, resolve
from control.signals import on_stop_signals

if TYPE_CHECKING:
    from control.client.rest import ApiClient

OK, FAILED = 0, 1
Verb = Callable[["ApiClient", argparse.Namespace], Awaitable[int]]


class UsageError(ValueError):
    """Bad command-line input, found before anything is sent."""


def client_parent() -> argparse.ArgumentParser:
    """The flags every client verb accepts (use as ``parents=[client_parent()]``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection (override env MESH_* and the config file)")
    g.add_argument("--server", "-s", help="API server URL, e.g. https://127.0.0.1:6443")
    g.add_argument("--token", help="bearer token")
    g.add_argument("--token-file", help="file holding the bearer token")
    g.add_argument("--certificate-authority", dest="ca_file", metavar="FILE",
                   help="CA certificate to verify the server with")
    g.add_argument("--insecure-skip-tls-verify", dest="insecure", action="store_true",
                   default=None, help="do not verify the server's certificate (unsafe)")
    g.add_argument("--context", help="context of the config file to use")
    g.add_argument("--config", dest="config_path", metavar="FILE",
                   help="client config file (default $MESH_CONFIG or "
                        "$XDG_CONFIG_HOME/mesh/config.yaml)")
    g.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="timeout of each request (default 30)")
    return p


def add_namespace_flags(p: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    p.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    if all_namespaces:
        p.add_argument("-A", "--all-namespaces", action="store_true",
                       help="across all namespaces")


def print_error(e: BaseException, *, err: TextIO | None = None) -> None:
    err = err or sys.stderr
    if isinstance(e, errors.ApiError):
        print(f"Error from server ({e.reason}): {e.message}", file=err)
        for cause in e.causes:
            if cause.get("field") and cause.get("field") not in e.message:
                print(f"  {cause.get('field')}: {cause.get('message', '')}", file=err)
    else:
        print(f"error: {e}", file=err)


def run_client(args: argparse.Namespace, verb: Verb) -> int:
    """Resolve the client config from ``args``, run ``verb`` on a loop, map failures."""
    # Imported here, not at module level: ``meshctl --help`` and ``meshctl config`` need
    # neither aiohttp nor the resource registry, and start several times faster.
    from control.client.manifests import ManifestError
    from control.client.resources import UnknownResource
    from control.client.rest import ApiClient

    try:
        cfg = resolve(
            path=Path(args.config_path) if getattr(args, "config_path", None) else None,
            context=args.context, server=args.server, token=args.token,
            token_file=args.token_file, ca_file=args.ca_file, insecure=args.insecure,
            namespace=getattr(args, "namespace", None))
    except ConfigError as e:
        print_error(e)
        return FAILED
    if getattr(args, "namespace", None) is None:
        args.namespace = cfg.namespace
        args.namespace_explicit = False
    else:
        args.namespace_explicit = True

    async def main() -> int:
        async with ApiClient(cfg, timeout=args.request_timeout, user_agent="meshctl") as api:
            return await verb(api, args)

    try:
        return _run_interruptible(main())
    except KeyboardInterrupt:
        return OK
    except (errors.ClientError, UsageError, ManifestError, UnknownResource, ValueError) as e:
        print_error(e)
        return FAILED


def _run_interruptible(coro: Awaitable[int]) -> int:
    """Run ``coro``; SIGTERM and SIGINT cancel it cleanly (exit 0: the user stopped it)."""

    async def guarded() -> int:
        task = asyncio.ensure_future(coro)
        with on_stop_signals(task.cancel):
            try:
                return await task
            except asyncio.CancelledError:
                if task.cancelled():
                    return OK
                raise

    return asyncio.run(guarded())


def split_type_and_names(words: list[str]) -> tuple[str, list[str]]:
    """``["deploy", "a", "b"]`` or ``["deploy/a", "deploy/b"]`` -> ``("deploy", [a, b])``."""
    if not words:
        raise UsageError("you must specify the type of resource (e.g. pods, deployments)")
    if "/" in words[0]:
        kinds, names = set(), []
        for w in words:
            kind, sep, name = w.partition("/")
            if not sep or not name:
                raise UsageError(f"expected TYPE/NAME, got {w!r}")
            kinds.add(kind)
            names.append(name)
        if len(kinds) > 1:
            raise UsageError("all TYPE/NAME arguments must have the same type")
        return kinds.pop(), names
    return words[0], words[1:]
