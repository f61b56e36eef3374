"""``meshctl controller-manager`` and ``meshctl rollout``: the command lines of this package.

``controller-manager`` runs :class:`~control.controllers.manager.ControllerManager`
(scheduler and controllers, leader-elected) against an API server, with the usual
connection flags (``--server``, ``--token``, ``--certificate-authority``, or the
client config file). It exits 0 when stopped (SIGINT/SIGTERM) and 1 when it lost
leadership or a controller crashed, so a supervisor starts it again as a fresh
candidate, as Kubernetes does; 2 on bad flags.

``rollout`` is the user side of the Deployment controller: ``undo`` (to the previous or
a given revision), ``pause``, ``resume``, ``history`` and ``status`` (waits until the
rollout completes or ``--timeout`` passes).

Neighbours: ``control/cli/main.py`` registers both; ``manager.py``, ``rollout_ops.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from control.cli.common import FAILED, OK, add_namespace_flags, client_parent, run_client
from control.cli.common import split_type_and_names as split
from control.client.rest import ApiClient
from control.controllers import rollout_ops
from control.controllers.leader import LeaderElectionConfig
from control.controllers.manager import ALL_CONTROLLERS, ControllerManager, ManagerConfig
from control.controllers.nodehealth import NodeHealthConfig


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``controller-manager`` and ``rollout`` to meshctl's subcommands."""
    p = sub.add_parser("controller-manager", parents=[client_parent()],
                       help="run the scheduler and controllers (leader-elected)",
                       description="Run the scheduler and the replicaset, deployment, "
                                   "endpoints and node lifecycle controllers against an API "
                                   "server. Several may run; one leads.")
    p.add_argument("--controllers", default=",".join(ALL_CONTROLLERS),
                   help=f"comma-separated subset of {','.join(ALL_CONTROLLERS)}")
    p.add_argument("--no-leader-elect", dest="leader_elect", action="store_false",
                   help="act at once without leader election (only one instance!)")
    p.add_argument("--identity", default=None, help="leader election identity "
                   "(default: hostname_random)")
    p.add_argument("--lease-duration", type=_positive, default=15.0, metavar="SECONDS")
    p.add_argument("--renew-deadline", type=_positive, default=10.0, metavar="SECONDS")
    p.add_argument("--retry-period", type=_positive, default=2.0, metavar="SECONDS")
    p.add_argument("--node-grace-period", type=_positive, default=40.0, metavar="SECONDS",
                   help="no heartbeat for this long: node NotReady (default 40)")
    p.add_argument("--pod-eviction-timeout", type=_positive, default=300.0, metavar="SECONDS",
                   help="NotReady for this long: its pods are evicted (default 300)")
    p.add_argument("--eviction-rate", type=_positive, default=0.1,
                   help="nodes per second evicted at most (default 0.1)")
    p.add_argument("--node-monitor-period", type=_positive, default=1.0, metavar="SECONDS")
    p.add_argument("--orphan-grace", type=_positive, default=10.0, metavar="SECONDS",
                   help="pods bound to a deleted node are deleted after this (default 10)")
    p.add_argument("--bind-concurrency", type=int, default=32,
                   help="bindings in flight at once (default 32)")
    p.add_argument("--percentage-of-nodes-to-score", type=int, default=None,
                   metavar="PERCENT",
                   help="feasible nodes to find before scoring, as a share of all nodes "
                        "(Kubernetes' percentageOfNodesToScore; 100: every node; default "
                        "adaptive: every node up to 100, then max(5, 50 - nodes/125)%%)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(handler=_run_manager)

    r = sub.add_parser("rollout", help="undo, pause, resume or watch a Deployment's rollout",
                       description="Manage a Deployment's rollout.")
    rsub = r.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    for action, text in (("undo", "roll back to the previous (or --to-revision) revision"),
                         ("pause", "stop rolling out template changes"),
                         ("resume", "resume a paused rollout"),
                         ("history", "list the revisions"),
                         ("status", "wait until the rollout completes")):
        a = rsub.add_parser(action, parents=[client_parent()], help=text, description=text)
        a.add_argument("words", nargs="+", metavar="deployment/NAME",
                       help="deployment NAME or deployment/NAME")
        add_namespace_flags(a)
        if action == "undo":
            a.add_argument("--to-revision", type=int, default=0)
        if action == "status":
            a.add_argument("--timeout", type=_positive, default=600.0, metavar="SECONDS")
        a.set_defaults(handler=lambda args: run_client(args, _rollout_verb))


def _manager_config(args: argparse.Namespace) -> ManagerConfig:
    names = tuple(n.strip() for n in args.controllers.split(",") if n.strip())
    kw = {"identity": args.identity} if args.identity else {}
    return ManagerConfig(
        leader_elect=args.leader_elect,
        election=LeaderElectionConfig(lease_duration=args.lease_duration,
                                      renew_deadline=args.renew_deadline,
                                      retry_period=args.retry_period),
        node_health=NodeHealthConfig(grace_period=args.node_grace_period,
                                     eviction_timeout=args.pod_eviction_timeout,
                                     eviction_rate=args.eviction_rate),
        node_monitor_period=args.node_monitor_period,
        orphan_grace=args.orphan_grace,
        bind_concurrency=args.bind_concurrency,
        percentage_of_nodes_to_score=args.percentage_of_nodes_to_score,
        controllers=names,  # type: ignore[arg-type]  # checked by ManagerConfig
        **kw)


def _run_manager(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _manager_config(args)
    except ValueError as e:
        print(f"meshctl controller-manager: {e}", file=sys.stderr)
        return 2
    outcome: list[str] = []

    async def verb(api: ApiClient, _: argparse.Namespace) -> int:
        print(f"controller manager {config.identity} starting", flush=True)
        outcome.append(await ControllerManager(api, config).run(asyncio.Event()))
        return OK

    rc = run_client(args, verb)
    if outcome == ["lost-leadership"]:
        print("meshctl controller-manager: lost leadership; exiting", file=sys.stderr)
        return FAILED
    if outcome == ["failed"]:
        print("meshctl controller-manager: a controller failed; see the log", file=sys.stderr)
        return FAILED
    return rc


async def _rollout_verb(api: ApiClient, args: argparse.Namespace) -> int:
    kind, names = split(args.words)
    if kind not in ("deployment", "deployments", "deploy", "deployments.apps") \
            or len(names) != 1:
        print("error: rollout takes one deployment: deployment NAME or deployment/NAME",
              file=sys.stderr)
        return FAILED
    name, ns = names[0], args.namespace
    action = args.rollout_command
    if action == "undo":
        print(await rollout_ops.rollback(api, ns, name, to_revision=args.to_revision))
    elif action == "pause":
        print(await rollout_ops.pause(api, ns, name))
    elif action == "resume":
        print(await rollout_ops.resume(api, ns, name))
    elif action == "history":
        print(f"deployment.apps/{name}\nREVISION  REPLICASET")
        for rev, rs in await rollout_ops.history(api, ns, name):
            print(f"{rev:<9} {rs['metadata']['name']}")
    else:
        return await _status(api, ns, name, args.timeout)
    return OK


async def _status(api: ApiClient, ns: str, name: str, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = ""
    while True:
        d = await api.get("deployments", name, namespace=ns)
        state, message = rollout_ops.rollout_status(d)
        if state == "failed":
            print(f"error: {message}", file=sys.stderr)
            return FAILED
        if message != last:
            print(message, flush=True)
            last = message
        if state == "done":
            return OK
        if loop.time() >= deadline:
            print(f"error: timed out waiting for the rollout of {name}", file=sys.stderr)
            return FAILED
        await asyncio.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m control.controllers.main ...`` = ``meshctl controller-manager ...``."""
    parser = argparse.ArgumentParser(prog="meshctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["controller-manager", *(sys.argv[1:] if argv is None
                                                      else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
