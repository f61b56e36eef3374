"""``meshctl scale``: set the replicas of a Deployment or ReplicaSet (``scale`` subresource).

``meshctl scale deployment web --replicas 5`` (or ``deploy/web``); with
``--current-replicas N`` the change is made only if the current count is N (else exit 1
and nothing changes), as kubectl's precondition. Prints ``deployment.apps/web scaled``.

Neighbours: :mod:`control.client.rest` (``scale``, ``get_scale``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from control.cli.common import OK, UsageError, add_namespace_flags, client_parent, run_client
from control.cli.common import split_type_and_names as split

if TYPE_CHECKING:
    from control.client.rest import ApiClient


def _replicas(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--replicas must be an integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"--replicas must be >= 0, got {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", parents=[client_parent()],
                       help="set a Deployment's or ReplicaSet's replicas",
                       description="Set the replica count through the scale subresource.")
    p.add_argument("words", nargs="+", metavar="TYPE[/NAME]",
                   help="TYPE NAME or TYPE/NAME")
    p.add_argument("--replicas", type=_replicas, required=True, help="the new replica count")
    p.add_argument("--current-replicas", type=_replicas, default=None,
                   help="only scale if the current count is this")
    add_namespace_flags(p)
    p.set_defaults(handler=lambda args: run_client(args, scale_verb))


async def scale_verb(api: ApiClient, args: argparse.Namespace) -> int:
    from control.client.manifests import display_name
    from control.client.resources import lookup

    kind, names = split(args.words)
    if len(names) != 1:
        raise UsageError("scale takes exactly one object: TYPE NAME or TYPE/NAME")
    res = lookup(kind)
    if "scale" not in res.subresources:
        raise UsageError(f"{res.plural} cannot be scaled (no scale subresource)")
    name = names[0]
    if args.current_replicas is not None:
        current = await api.get_scale(res, name, namespace=args.namespace)
        have = int((current.get("spec") or {}).get("replicas") or 0)
        if have != args.current_replicas:
            raise UsageError(f"{display_name(res, name)} has {have} replicas, "
                             f"not --current-replicas={args.current_replicas}; not scaled")
        body = {"spec": {"replicas": args.replicas},
                "metadata": {"resourceVersion": current["metadata"].get("resourceVersion")}}
        await api.patch(res, name, body, namespace=args.namespace, subresource="scale")
    else:
        await api.scale(res, name, args.replicas, namespace=args.namespace)
    print(f"{display_name(res, name)} scaled", flush=True)
    return OK
