"""``meshctl logs`` and ``meshctl exec``: a Pod container's output, or a command in it.

The API server does not proxy to the agents (Kubernetes' ``pods/log`` and ``pods/exec``
subresources), so meshctl goes to the agent itself: it reads the Pod (its
``spec.nodeName``), then the Node (where its agent listens:
``status.addresses`` and ``daemonEndpoints``), and calls the agent's API with the
agent's token — ``--agent-token-file``, else ``$MESH_AGENT_TOKEN_FILE``, else the one
``meshctl up`` keeps in ``.mesh/agent/agent-token``.

Neighbours: :mod:`control.agent.remote` (the agent API client), :mod:`control.agent.server`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from control.cli.common import OK, UsageError, add_namespace_flags, client_parent, run_client

if TYPE_CHECKING:
    from control.client.rest import ApiClient

DEFAULT_AGENT_TOKEN = Path(".mesh/agent/agent-token")


def register(sub: argparse._SubParsersAction) -> None:
    lp = sub.add_parser("logs", parents=[client_parent()],
                        help="print a pod container's logs (from its node's agent)",
                        description="Print the logs of a container of a Pod.")
    lp.add_argument("pod", help="POD or pod/POD")
    lp.add_argument("-c", "--container", help="container (default: the Pod's first)")
    lp.add_argument("--tail", type=int, default=None, help="only the last N lines")
    _agent_flags(lp)
    add_namespace_flags(lp)
    lp.set_defaults(handler=lambda a: run_client(a, _logs))

    ep = sub.add_parser("exec", parents=[client_parent()],
                        help="run a command in a pod's container (no stdin or TTY)",
                        description="Run a command in a container of a Pod and print its "
                                    "output; the exit status is the command's.")
    ep.add_argument("pod", help="POD or pod/POD")
    ep.add_argument("-c", "--container", help="container (default: the Pod's first)")
    ep.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    _agent_flags(ep)
    add_namespace_flags(ep)
    # meshctl's main() hands everything after "--" over as the command, so flags
    # before it parse as flags and the command's own flags are never taken for ours.
    ep.add_argument("command", nargs="*", help="-- COMMAND [ARGS...]")
    ep.set_defaults(handler=lambda a: run_client(a, _exec))


def _agent_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agent-token-file", default=None, metavar="FILE",
                   help="the node agent's API token (default: $MESH_AGENT_TOKEN_FILE, "
                        f"else {DEFAULT_AGENT_TOKEN})")


def _agent_token(args: argparse.Namespace) -> str:
    path = Path(args.agent_token_file or os.environ.get("MESH_AGENT_TOKEN_FILE")
                or DEFAULT_AGENT_TOKEN)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read the agent token from {path}: {e.strerror}; "
                         "give --agent-token-file") from None
    if not token:
        raise UsageError(f"{path} is empty: give the agent's token with --agent-token-file")
    return token


async def _target(api: ApiClient, args: argparse.Namespace) -> tuple[str, str, str, str]:
    """(agent URL, namespace, pod, container) for ``args``."""
    from control.agent.remote import endpoint_of

    name = args.pod.removeprefix("pod/").removeprefix("pods/")
    pod = await api.get("pods", name, namespace=args.namespace)
    containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    container = args.container or (containers[0] if containers else None)
    if container is None:
        raise UsageError(f"pod {name} has no containers")
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise UsageError(f"pod {name} is not scheduled to a node yet")
    node = await api.get("nodes", node_name)
    return endpoint_of(node), args.namespace, name, container


async def _logs(api: ApiClient, args: argparse.Namespace) -> int:
    from control.agent.remote import AgentClient, AgentError, AgentUnreachable

    url, ns, pod, container = await _target(api, args)
    try:
        async with AgentClient(url, _agent_token(args)) as agent:
            data = await agent.logs(ns, pod, container, tail=args.tail)
    except (AgentError, AgentUnreachable) as e:
        raise UsageError(f"agent at {url}: {e}") from None
    sys.stdout.write(data.decode(errors="replace"))
    return OK


async def _exec(api: ApiClient, args: argparse.Namespace) -> int:
    from control.agent.remote import AgentClient, AgentError, AgentUnreachable

    command = list(args.command)
    if not command:
        raise UsageError("give the command after --, e.g. meshctl exec web-1 -- ls /")
    url, ns, pod, container = await _target(api, args)
    try:
        async with AgentClient(url, _agent_token(args)) as agent:
            result = await agent.exec(ns, pod, container, command, timeout=args.timeout)
    except (AgentError, AgentUnreachable) as e:
        raise UsageError(f"agent at {url}: {e}") from None
    sys.stdout.write(result.output)
    return result.exit_code
