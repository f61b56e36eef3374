"""``meshctl apply -f`` and ``meshctl delete``: objects from manifests, or by name.

``apply -f PATH`` (repeatable; a file, a directory, ``-`` for stdin; ``-R`` recurses)
loads and checks every manifest before sending anything (a bad file changes nothing),
then creates or updates each object (:func:`control.client.manifests.apply`) and
prints kubectl's line: ``deployment.apps/web created|configured|unchanged``. An object
the server refuses is reported with the server's message and the others still go
through; the exit status is then 1.

``delete TYPE NAME...`` / ``delete TYPE/NAME...`` / ``delete -f PATH`` deletes objects,
printing ``deployment.apps "web" deleted``; ``--cascade`` picks the propagation policy
(background, the default, lets the garbage collector remove dependents; foreground waits
for them; orphan keeps them); ``--ignore-not-found`` makes absent objects no error.
``--wait`` returns only once every deleted object is gone (a bound Pod is removed by
its node after its grace; a foreground cascade after its dependents), ``--timeout``
bounds that wait (kubectl's ``--wait``; here opt-in, so scripts that only mark Pods
for deletion keep returning at once).

Neighbours: :mod:`control.client.manifests`, :mod:`control.cli.common`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Literal

from control.cli.common import (
    FAILED,
    OK,
    UsageError,
    add_namespace_flags,
    client_parent,
    print_error,
    run_client,
    split_type_and_names,
)
from control.client import errors

if TYPE_CHECKING:
    from control.client.resources import Resource
    from control.client.rest import ApiClient, Obj

CASCADE: dict[str, Literal["Foreground", "Background", "Orphan"]] = {
    "background": "Background", "foreground": "Foreground", "orphan": "Orphan"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", parents=[client_parent()],
                       help="create or update objects from files, directories or stdin",
                       description="Create or update objects from YAML/JSON manifests.")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                   help="file, directory or - for stdin (repeatable)")
    p.add_argument("-R", "--recursive", action="store_true", help="recurse into directories")
    add_namespace_flags(p)
    p.set_defaults(handler=lambda args: run_client(args, apply_verb))

    d = sub.add_parser("delete", parents=[client_parent()],
                       help="delete objects by name or from manifests (dependents are "
                            "garbage-collected)",
                       description="Delete objects by TYPE NAME..., TYPE/NAME... or -f.")
    d.add_argument("words", nargs="*", metavar="TYPE[/NAME]",
                   help="a type then names (deploy web api), or TYPE/NAME words")
    d.add_argument("-f", "--filename", action="append", metavar="PATH",
                   help="delete the objects of these manifests")
    d.add_argument("-R", "--recursive", action="store_true", help="recurse into directories")
    add_namespace_flags(d)
    d.add_argument("--cascade", choices=tuple(CASCADE), default="background",
                   help="what happens to dependents (default background)")
    d.add_argument("--ignore-not-found", action="store_true",
                   help="treat absent objects as deleted")
    grace = d.add_mutually_exclusive_group()
    grace.add_argument("--grace-period", type=int, default=None, metavar="SECONDS",
                       help="seconds a Pod is given to stop (default: its own "
                            "terminationGracePeriodSeconds; 0 needs --force)")
    grace.add_argument("--now", action="store_true",
                       help="give Pods 1 second to stop (--grace-period=1)")
    d.add_argument("--force", action="store_true",
                   help="with --grace-period=0 (implied): remove the object at once, "
                        "without waiting for its node to stop it")
    d.add_argument("--wait", action="store_true",
                   help="return only once every object is gone (a Pod stopped by its node "
                        "within its grace, dependents collected with --cascade=foreground)")
    d.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --wait: give up after this long (exit 1; the deletions "
                        "stand); default: no limit")
    d.set_defaults(handler=lambda args: run_client(args, delete_verb))


def _grace(args: argparse.Namespace) -> int | None:
    """kubectl's rules: --now is 1 s; 0 only with --force (which implies 0)."""
    if args.now:
        return 1
    if args.grace_period is not None and args.grace_period < 0:
        raise UsageError(f"--grace-period must be >= 0, got {args.grace_period}")
    if args.force:
        if args.grace_period not in (None, 0):
            raise UsageError("--force deletes at once: it goes with --grace-period=0 only")
        print("warning: immediate deletion does not wait for the node to confirm that the "
              "Pod's containers have stopped; they may keep running for a while",
              file=sys.stderr)
        return 0
    if args.grace_period == 0:
        raise UsageError("--grace-period=0 deletes at once: add --force to confirm")
    return args.grace_period


async def apply_verb(api: ApiClient, args: argparse.Namespace) -> int:
    from control.client.manifests import apply, display_name, load_paths, target_namespace

    manifests = load_paths(args.filename, recursive=args.recursive)
    if not manifests:
        raise UsageError("no objects passed to apply")
    explicit = args.namespace if args.namespace_explicit else None
    for m in manifests:  # check every namespace before the first write
        target_namespace(m, explicit, default=args.namespace)
    status = OK
    for m in manifests:
        try:
            action, _ = await apply(api, m, namespace=explicit,
                                    default_namespace=args.namespace)
        except errors.ApiError as e:
            print_error(e)
            status = FAILED
            continue
        print(f"{display_name(m.resource, m.name)} {action}", flush=True)
    return status


async def delete_verb(api: ApiClient, args: argparse.Namespace) -> int:
    from control.client.manifests import load_paths, target_namespace
    from control.client.resources import lookup

    targets: list[tuple[Resource, str, str | None]] = []
    if args.filename:
        if args.words:
            raise UsageError("give either -f or TYPE NAME, not both")
        explicit = args.namespace if args.namespace_explicit else None
        for m in load_paths(args.filename, recursive=args.recursive):
            targets.append((m.resource, m.name, target_namespace(m, explicit,
                                                                  default=args.namespace)))
    else:
        kind, names = split_type_and_names(args.words)
        if not names:
            raise UsageError("give the names of the objects to delete (or -f)")
        res = lookup(kind)
        targets = [(res, n, args.namespace if res.namespaced else None) for n in names]
    grace = _grace(args)
    if args.timeout is not None and (not args.wait or args.timeout <= 0):
        raise UsageError("--timeout goes with --wait and must be > 0")
    status = OK
    deleted: list[tuple[Resource, str, str | None, str | None]] = []
    for res, name, ns in targets:
        try:
            answer = await api.delete(res, name, namespace=ns,
                                      propagation_policy=CASCADE[args.cascade],
                                      grace_period_seconds=grace)
        except errors.NotFound as e:
            if not args.ignore_not_found:
                print_error(e)
                status = FAILED
            continue
        except errors.ApiError as e:
            print_error(e)
            status = FAILED
            continue
        print(f'{_qualified(res)} "{name}" deleted', flush=True)
        deleted.append((res, name, ns, (answer.get("metadata") or {}).get("uid")))
    if args.wait and deleted:
        try:
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*(_gone(api, *d) for d in deleted))
        except TimeoutError:
            left = [f'{_qualified(res)} "{name}"' for res, name, ns, uid in deleted
                    if not await _is_gone(api, res, name, ns, uid)]
            if left:
                print(f"error: timed out after {args.timeout:g}s waiting for "
                      f"{', '.join(left)} to be gone (the deletions stand)", file=sys.stderr)
                return FAILED
    return status


def _qualified(res: Resource) -> str:
    return f"{res.kind.lower()}.{res.group}" if res.group else res.kind.lower()


async def _current(api: ApiClient, res: Resource, name: str, ns: str | None,
                   uid: str | None) -> Obj | None:
    """The object as it is now, or None when it is gone: not found, or the name now
    belongs to another object (another uid)."""
    try:
        obj = await api.get(res, name, namespace=ns)
    except errors.NotFound:
        return None
    if uid is not None and (obj.get("metadata") or {}).get("uid") != uid:
        return None
    return obj


async def _is_gone(api: ApiClient, res: Resource, name: str, ns: str | None,
                   uid: str | None) -> bool:
    return await _current(api, res, name, ns, uid) is None


async def _gone(api: ApiClient, res: Resource, name: str, ns: str | None,
                uid: str | None) -> None:
    """Return once the object is gone: read it, then watch it by name from that
    revision (kubectl's way); a watch that ends or expires (410) reads again."""
    while (obj := await _current(api, res, name, ns, uid)) is not None:
        md = obj.get("metadata") or {}
        try:
            async with api.watch(res, namespace=ns, resource_version=md.get("resourceVersion"),
                                 field_selector=f"metadata.name={name}") as events:
                async for ev in events:
                    ev_uid = (ev.object.get("metadata") or {}).get("uid")
                    if ev.type == "DELETED" and (uid is None or ev_uid == uid):
                        return
                    if ev.type in ("ADDED", "MODIFIED") and uid is not None and ev_uid != uid:
                        return  # deleted and created again under the same name
        except errors.Gone:
            continue
