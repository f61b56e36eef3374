"""Client configuration: where the API server is and how to authenticate to it.

A kubeconfig-like YAML file, by default ``$XDG_CONFIG_HOME/mesh/config.yaml``
(``~/.config/mesh/config.yaml``; ``$MESH_CONFIG`` names another file). It holds named
contexts and which one is current::

    current-context: local
    contexts:
      local:
        server: https://127.0.0.1:6443
        token-file: /home/me/.local/share/mesh/admin.token   # or: token: <secret>
        certificate-authority: /home/me/.local/share/mesh/tls/ca.crt
        insecure-skip-tls-verify: false
        namespace: default

Each setting is resolved, highest first, from: explicit arguments (command-line flags),
environment (``MESH_SERVER``, ``MESH_TOKEN``, ``MESH_TOKEN_FILE``, ``MESH_CA_FILE``,
``MESH_INSECURE_SKIP_TLS_VERIFY``, ``MESH_NAMESPACE``, ``MESH_CONTEXT``), the file's
context, defaults. The file is written with mode 0600 because it may hold a token.

Neighbours: :mod:`control.client.rest` takes a :class:`ClientConfig`; ``meshctl config``
(:mod:`control.cli.config_cmd`) edits the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

CONTEXT_FIELDS = ("server", "token", "token-file", "certificate-authority",
                  "insecure-skip-tls-verify", "namespace")
DEFAULT_CONTEXT = "default"
DEFAULT_NAMESPACE = "default"


class ConfigError(ValueError):
    """The client configuration is missing, unreadable or invalid (message says which)."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything needed to talk to one API server."""

    server: str
    token: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    namespace: str = DEFAULT_NAMESPACE
    context: str | None = None

    def __post_init__(self) -> None:
        validate_server(self.server)

    def __repr__(self) -> str:  # never print the token
        token = "<set>" if self.token else None
        return (f"ClientConfig(server={self.server!r}, token={token}, ca_file={self.ca_file!r}, "
                f"insecure={self.insecure}, namespace={self.namespace!r})")


def validate_server(server: str) -> str:
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"server must be an http:// or https:// URL with a host, got {server!r}")
    return server.rstrip("/")


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The client config file: ``$MESH_CONFIG``, else under ``$XDG_CONFIG_HOME``."""
    env = os.environ if env is None else env
    if env.get("MESH_CONFIG"):
        return Path(env["MESH_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "mesh" / "config.yaml"


class ConfigFile:
    """The YAML file of contexts: load, edit, save (0600)."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self.current_context: str | None = None
        self.contexts: dict[str, dict[str, Any]] = {}
        if data:
            self._parse(data)

    @classmethod
    def load(cls, path: Path) -> ConfigFile:
        """Read ``path``; a missing file is an empty config, a malformed one an error."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise ConfigError(f"cannot read client config {path}: {e.strerror}") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"client config {path} is not valid YAML: {e}") from e
        if data is None:
            return cls(path)
        if not isinstance(data, dict):
            raise ConfigError(f"client config {path}: top level must be a mapping")
        try:
            return cls(path, data)
        except ConfigError as e:
            raise ConfigError(f"client config {path}: {e}") from None

    def _parse(self, data: dict[str, Any]) -> None:
        unknown = set(data) - {"current-context", "contexts"}
        if unknown:
            raise ConfigError(f"unknown top-level keys {sorted(unknown)}; "
                              "expected current-context, contexts")
        contexts = data.get("contexts") or {}
        if not isinstance(contexts, dict):
            raise ConfigError("contexts must be a mapping of name -> settings")
        for name, ctx in contexts.items():
            self.contexts[str(name)] = _check_context(str(name), ctx or {})
        cur = data.get("current-context")
        if cur is not None and str(cur) not in self.contexts:
            raise ConfigError(f"current-context {cur!r} is not one of the contexts "
                              f"{sorted(self.contexts)}")
        self.current_context = None if cur is None else str(cur)

    def set_context(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set fields (``server=...``, ``token_file=...``; None removes a field) of context
        ``name``, creating it; the first context becomes current."""
        ctx = dict(self.contexts.get(name, {}))
        for key, value in fields.items():
            key = key.replace("_", "-")
            if value is None:
                ctx.pop(key, None)
            else:
                ctx[key] = value
        self.contexts[name] = _check_context(name, ctx)
        if self.current_context is None:
            self.current_context = name
        return self.contexts[name]

    def use_context(self, name: str) -> None:
        if name not in self.contexts:
            raise ConfigError(f"no context named {name!r} (have: "
                              f"{', '.join(sorted(self.contexts)) or 'none'})")
        self.current_context = name

    def to_dict(self) -> dict[str, Any]:
        return {"current-context": self.current_context, "contexts": self.contexts}

    def save(self) -> None:
        """Write atomically with mode 0600 (the file may hold a token)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)
        os.replace(tmp, self.path)


def _check_context(name: str, ctx: Any) -> dict[str, Any]:
    if not isinstance(ctx, dict):
        raise ConfigError(f"context {name!r} must be a mapping")
    unknown = set(ctx) - set(CONTEXT_FIELDS)
    if unknown:
        raise ConfigError(f"context {name!r}: unknown keys {sorted(unknown)}; "
                          f"expected some of {', '.join(CONTEXT_FIELDS)}")
    if "server" in ctx:
        ctx["server"] = validate_server(str(ctx["server"]))
    if "insecure-skip-tls-verify" in ctx and not isinstance(ctx["insecure-skip-tls-verify"], bool):
        raise ConfigError(f"context {name!r}: insecure-skip-tls-verify must be true or false")
    if "token" in ctx and "token-file" in ctx:
        raise ConfigError(f"context {name!r}: set token or token-file, not both")
    return ctx


def _env_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _read_token_file(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from e
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def resolve(*, path: Path | None = None, context: str | None = None, server: str | None = None,
            token: str | None = None, token_file: str | None = None, ca_file: str | None = None,
            insecure: bool | None = None, namespace: str | None = None,
            env: Mapping[str, str] | None = None) -> ClientConfig:
    """Merge arguments, environment and the config file into one :class:`ClientConfig`."""
    env = os.environ if env is None else env
    cfg = ConfigFile.load(path or config_path(env))
    ctx_name = context or env.get("MESH_CONTEXT") or cfg.current_context
    ctx: dict[str, Any] = {}
    if ctx_name is not None:
        if ctx_name not in cfg.contexts:
            if context or env.get("MESH_CONTEXT"):
                raise ConfigError(f"no context named {ctx_name!r} in {cfg.path}")
        else:
            ctx = cfg.contexts[ctx_name]

    def pick(arg: Any, env_name: str, key: str) -> Any:
        if arg is not None:
            return arg
        if env.get(env_name):
            return env[env_name]
        return ctx.get(key)

    srv = pick(server, "MESH_SERVER", "server")
    if not srv:
        raise ConfigError(f"no API server configured: pass --server, set MESH_SERVER, or run "
                          f"'meshctl config set --server URL' (writes {cfg.path})")
    # An explicit token beats a token file from a lower layer, and vice versa.
    tok = token
    if tok is None and token_file:
        tok = _read_token_file(token_file)
    if tok is None:
        tok = env.get("MESH_TOKEN") or None
    if tok is None and env.get("MESH_TOKEN_FILE"):
        tok = _read_token_file(env["MESH_TOKEN_FILE"])
    if tok is None:
        tok = ctx.get("token") or (
            _read_token_file(ctx["token-file"]) if ctx.get("token-file") else None)
    if insecure is None:
        if env.get("MESH_INSECURE_SKIP_TLS_VERIFY"):
            insecure = _env_bool(env["MESH_INSECURE_SKIP_TLS_VERIFY"],
                                 "MESH_INSECURE_SKIP_TLS_VERIFY")
        else:
            insecure = bool(ctx.get("insecure-skip-tls-verify", False))
    ca = pick(ca_file, "MESH_CA_FILE", "certificate-authority")
    if ca and not Path(ca).expanduser().is_file():
        raise ConfigError(f"certificate authority file {ca} does not exist")
    return ClientConfig(
        server=validate_server(str(srv)), token=tok,
        ca_file=str(Path(ca).expanduser()) if ca else None, insecure=insecure,
        namespace=pick(namespace, "MESH_NAMESPACE", "namespace") or DEFAULT_NAMESPACE,
        context=ctx_name,
    )
