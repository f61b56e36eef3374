"""``meshctl config``: edit and show the client config file (server, token, CA).

- ``config set [--context NAME] [--server URL] [--token T | --token-file F]
  [--certificate-authority FILE] [--insecure-skip-tls-verify true|false]
  [--namespace NS]`` creates or updates a context (``default`` unless named; the first
  context becomes current);
- ``config use-context NAME``; ``config current-context``;
- ``config view`` prints the file with tokens redacted (``--raw`` shows them);
- ``config path`` prints where the file is.

The file is :mod:`control.client.config`'s (``$MESH_CONFIG`` or
``$XDG_CONFIG_HOME/mesh/config.yaml``), written 0600. Invalid values (a server that is
not an http(s) URL, a CA file that does not exist) are refused and the file is left as
it was.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

from control.cli.common import FAILED, OK, print_error
from control.client.config import DEFAULT_CONTEXT, ConfigError, ConfigFile, config_path


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="set or show the client config (server, token, CA)",
                       description="Edit the client config file of meshctl and the other "
                                   "components' clients.")
    p.add_argument("--config", dest="config_path", metavar="FILE",
                   help="config file (default $MESH_CONFIG or $XDG_CONFIG_HOME/mesh/config.yaml)")
    verbs = p.add_subparsers(dest="config_verb", metavar="VERB", required=True)
    s = verbs.add_parser("set", help="create or update a context")
    s.add_argument("--context", default=None, help=f"context name (default: the current one, "
                                                   f"else {DEFAULT_CONTEXT})")
    s.add_argument("--server", help="API server URL")
    tok = s.add_mutually_exclusive_group()
    tok.add_argument("--token", help="bearer token (stored in the file)")
    tok.add_argument("--token-file", help="file holding the bearer token (stored as a path)")
    s.add_argument("--certificate-authority", dest="ca_file", metavar="FILE",
                   help="CA certificate of the server")
    s.add_argument("--insecure-skip-tls-verify", dest="insecure", type=_bool, metavar="BOOL",
                   help="true to skip verifying the server's certificate")
    s.add_argument("--namespace", help="default namespace of this context")
    u = verbs.add_parser("use-context", help="make a context current")
    u.add_argument("name")
    verbs.add_parser("current-context", help="print the current context")
    v = verbs.add_parser("view", help="print the config (tokens redacted)")
    v.add_argument("--raw", action="store_true", help="show tokens")
    verbs.add_parser("path", help="print the config file's path")
    p.set_defaults(handler=config_verb)


def config_verb(args: argparse.Namespace) -> int:
    path = Path(args.config_path) if args.config_path else config_path()
    try:
        return _run(args, path)
    except ConfigError as e:
        print_error(e)
        return FAILED


def _run(args: argparse.Namespace, path: Path) -> int:
    if args.config_verb == "path":
        print(path)
        return OK
    cfg = ConfigFile.load(path)
    if args.config_verb == "set":
        fields = {"server": args.server, "namespace": args.namespace}
        if args.ca_file is not None:
            ca = Path(args.ca_file).expanduser().resolve()
            if not ca.is_file():
                raise ConfigError(f"certificate authority file {args.ca_file} does not exist")
            fields["certificate-authority"] = str(ca)
        if args.insecure is not None:
            fields["insecure-skip-tls-verify"] = args.insecure
        if args.token is not None:
            fields["token"] = args.token
        if args.token_file is not None:
            token_file = Path(args.token_file).expanduser().resolve()
            if not token_file.is_file():
                raise ConfigError(f"token file {args.token_file} does not exist")
            fields["token-file"] = str(token_file)
        name = args.context or cfg.current_context or DEFAULT_CONTEXT
        ctx = dict(cfg.contexts.get(name, {}))
        ctx.update({k: v for k, v in fields.items() if v is not None})
        # token and token-file replace each other.
        if args.token is not None:
            ctx.pop("token-file", None)
        if args.token_file is not None:
            ctx.pop("token", None)
        cfg.contexts.pop(name, None)
        cfg.set_context(name, **ctx)
        cfg.save()
        print(f'context "{name}" set in {path}')
    elif args.config_verb == "use-context":
        cfg.use_context(args.name)
        cfg.save()
        print(f'switched to context "{args.name}"')
    elif args.config_verb == "current-context":
        if cfg.current_context is None:
            print(f"error: no current context in {path}", file=sys.stderr)
            return FAILED
        print(cfg.current_context)
    elif args.config_verb == "view":
        data = copy.deepcopy(cfg.to_dict())
        if not args.raw:
            for ctx in data["contexts"].values():
                if "token" in ctx:
                    ctx["token"] = "REDACTED"
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return OK
