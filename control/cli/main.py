"""``meshctl``: run the control plane's components, and a kubectl-like client.

Each subcommand is registered here with an honest description. One that is not built
yet prints which issue will build it and exits with status 2; it never pretends.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from control import __version__
from control.cli import apply as apply_cmd
from control.cli import (
    capacity_cmd,
    config_cmd,
    describe,
    get,
    patch,
    pod_io,
    scale,
    store_cmd,
    top,
    up,
)

NOT_YET = 2

# name -> (help text, issue that builds it)
PLANNED: dict[str, tuple[str, int]] = {
}

# The kubectl-like client verbs (issue 6): each module registers its own subcommand
# (get; apply and delete; scale; describe; config; top and capacity from issue 10).
CLIENT_VERBS = (get, apply_cmd, scale, patch, describe, config_cmd, top, capacity_cmd)

Handler = Callable[[argparse.Namespace], int]


def _register_apiserver(sub: argparse._SubParsersAction) -> None:
    """``meshctl apiserver``: options and runner live with the server (control/api/main.py)."""
    from control.api.main import add_arguments, run_from_args

    sp = sub.add_parser("apiserver", help="run the Kubernetes-style API server over the "
                        "store (HTTPS, bearer tokens, SQLite by default)",
                        description="Run the Kubernetes-style API server over the store.")
    add_arguments(sp)
    sp.set_defaults(handler=run_from_args)


def _register_agent(sub: argparse._SubParsersAction) -> None:
    """``meshctl agent``: every option belongs to the agent (control/agent/main.py)."""
    sp = sub.add_parser("agent", add_help=False,
                        help="run the node agent (kubelet): pods in containers (Docker "
                             "Engine API: Docker or Podman) or as processes",
                        description="Run the node agent; see 'meshctl agent --help'.")
    sp.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def handler(args: argparse.Namespace) -> int:
        from control.agent.main import main as agent_main
        return agent_main(args.rest)
    sp.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    description = "Control plane and client of the mesh."
    if PLANNED:
        description += " Subcommands marked (planned) are not built yet and exit with status 2."
    p = argparse.ArgumentParser(prog="meshctl", description=description)
    p.add_argument("--version", action="version", version=f"meshctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (text, issue) in PLANNED.items():
        sp = sub.add_parser(name, help=f"{text} (planned, issue #{issue})",
                            description=f"{text}. Not implemented yet (issue #{issue}).")
        sp.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        sp.set_defaults(handler=_not_yet(name, issue))
    _register_apiserver(sub)
    _register_agent(sub)
    up.register(sub)
    store_cmd.register(sub)
    pod_io.register(sub)
    from control.controllers.main import register as register_controllers
    register_controllers(sub)  # controller-manager and rollout (issue 7)
    for module in CLIENT_VERBS:
        module.register(sub)
    return p


def _not_yet(name: str, issue: int) -> Handler:
    def handler(_: argparse.Namespace) -> int:
        print(f"meshctl {name}: not implemented yet (issue #{issue})", file=sys.stderr)
        return NOT_YET
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:
        # Hand everything, --help included, to the agent's own parser.
        from control.agent.main import main as agent_main
        return agent_main(argv[1:])
    trailing: list[str] | None = None
    if argv[:1] == ["exec"] and "--" in argv:
        # Everything after "--" is the command to run, whatever it looks like.
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if trailing is not None:
        args.command = trailing
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
