"""YAML text or file → validated :class:`~meshproxy.config.root.ProxyConfig`.

One parse step validates everything; :class:`ConfigError` lists every problem as a
field path (``listeners[0].routes[1].cluster``) and a reason. A loaded config carries
a :class:`Loaded` envelope (its version hash and load time) for ``/config_dump``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from meshproxy.config.root import ProxyConfig, cross_check
from meshproxy.schema import SchemaError, format_path, parse


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]], *, source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "; ".join(f"{path}: {msg}" for path, msg in problems)
        super().__init__(f"{source}: {lines}")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated config with where it came from: its content hash and load time."""

    config: ProxyConfig
    version: str      # first 12 hex digits of the file's sha256
    loaded_at: float  # wall-clock time (time.time()) of the load
    source: str


def parse_config(text: str | bytes, *, source: str = "config") -> Loaded:
    """Validate YAML text; raise :class:`ConfigError` naming every problem."""
    raw = text.encode() if isinstance(text, str) else text
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "(yaml)"
        raise ConfigError([(where, f"not valid YAML: {getattr(e, 'problem', e)}")],
                          source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("(root)", "the file must hold a mapping")], source=source)
    try:
        cfg = parse(data, ProxyConfig)
    except SchemaError as e:
        raise ConfigError([(format_path(p.path), p.message) for p in e.problems],
                          source=source) from None
    problems = cross_check(cfg)
    if problems:
        raise ConfigError(problems, source=source)
    return Loaded(cfg, hashlib.sha256(raw).hexdigest()[:12], time.time(), source)


def load_config(path: str | Path) -> Loaded:
    """Read and validate a config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([("(file)", f"cannot read {p}: {e.strerror}")], source=str(p)) from None
    return parse_config(raw, source=str(p))
