"""Client config: file location, contexts, precedence flags > env > file, bad input."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from control.client.config import ConfigError, ConfigFile, config_path, resolve


def test_config_path_follows_mesh_config_then_xdg(tmp_path: Path) -> None:
    """$MESH_CONFIG wins; else $XDG_CONFIG_HOME/mesh/config.yaml; else ~/.config."""
    assert config_path({"MESH_CONFIG": str(tmp_path / "c.yaml")}) == tmp_path / "c.yaml"
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "mesh/config.yaml"
    assert config_path({"HOME": "/home/u"}) == Path("/home/u/.config/mesh/config.yaml")


def test_saved_file_is_private_and_round_trips(tmp_path: Path) -> None:
    """set_context/save writes mode 0600; load reads the same contexts back; the first
    context becomes current."""
    path = tmp_path / "mesh" / "config.yaml"
    cfg = ConfigFile.load(path)
    cfg.set_context("local", server="https://127.0.0.1:6443/", token="s3cret")
    cfg.set_context("other", server="http://10.0.0.1:8080", namespace="shop")
    cfg.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ConfigFile.load(path)
    assert again.current_context == "local"
    assert again.contexts["local"] == {"server": "https://127.0.0.1:6443", "token": "s3cret"}
    again.use_context("other")
    again.save()
    assert resolve(path=path, env={}).namespace == "shop"


def test_precedence_is_flags_then_env_then_file(tmp_path: Path) -> None:
    """Each setting comes from the highest layer that sets it."""
    path = tmp_path / "config.yaml"
    token_file = tmp_path / "tok"
    token_file.write_text("from-file-token\n")
    cfg = ConfigFile(path)
    cfg.set_context("c", server="https://file:1", token_file=str(token_file), namespace="fns")
    cfg.save()
    from_file = resolve(path=path, env={})
    assert (from_file.server, from_file.token, from_file.namespace) == (
        "https://file:1", "from-file-token", "fns")
    env = {"MESH_SERVER": "https://env:2", "MESH_TOKEN": "env-token"}
    from_env = resolve(path=path, env=env)
    assert (from_env.server, from_env.token, from_env.namespace) == (
        "https://env:2", "env-token", "fns")
    from_flags = resolve(path=path, env=env, server="http://flag:3", token="flag-token",
                         namespace="fl")
    assert (from_flags.server, from_flags.token, from_flags.namespace) == (
        "http://flag:3", "flag-token", "fl")
    assert "flag-token" not in repr(from_flags), "the token must never be printed"


@pytest.mark.parametrize(("text", "expected"), [
    ("contexts: [1, 2]", "contexts must be a mapping"),
    ("contexts: {a: {server: ftp://x}}", "http:// or https://"),
    ("contexts: {a: {sever: https://x}}", "unknown keys ['sever']"),
    ("current-context: b\ncontexts: {a: {server: https://x}}", "current-context 'b'"),
    ("- just a list", "top level must be a mapping"),
    ("contexts: {a: {server: 'https://x', token: t, token-file: f}}", "not both"),
    ("key: [unclosed", "not valid YAML"),
])
def test_bad_config_file_is_refused_naming_the_problem(tmp_path: Path, text: str,
                                                        expected: str) -> None:
    """A malformed file gives an error naming the file and what is wrong."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")) as info:
        resolve(path=path, env={})
    assert str(path) in str(info.value)


def test_missing_server_and_missing_ca_file_are_clear_errors(tmp_path: Path) -> None:
    """With nothing configured the error says how to configure; a CA path that does not
    exist is named."""
    with pytest.raises(ConfigError, match="meshctl config set --server"):
        resolve(path=tmp_path / "none.yaml", env={})
    with pytest.raises(ConfigError, match=r"nope\.crt does not exist"):
        resolve(path=tmp_path / "none.yaml", env={}, server="https://x:1",
                ca_file=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match="MESH_INSECURE_SKIP_TLS_VERIFY"):
        resolve(path=tmp_path / "none.yaml", env={"MESH_INSECURE_SKIP_TLS_VERIFY": "maybe"},
                server="https://x:1")
