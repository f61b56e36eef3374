"""``meshctl config``: writes, shows and switches contexts; bad values are refused and
leave the file as it was; client verbs without a server say how to configure one. Runs
``main`` in-process (cli_kit.run_main) with ``MESH_CONFIG`` set, and the installed
script for the connection-error case."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cli_kit import MESHCTL, Result, run_main

Meshctl = Callable[..., Result]


@pytest.fixture
def meshctl(monkeypatch: pytest.MonkeyPatch) -> Meshctl:
    """``meshctl(*argv, cfg=PATH)``: the CLI in-process with MESH_CONFIG=PATH."""
    for key in [k for k in os.environ if k.startswith("MESH_")]:
        monkeypatch.delenv(key)

    def run(*args: str, cfg: Path, stdin: str | None = None) -> Result:
        monkeypatch.setenv("MESH_CONFIG", str(cfg))
        return run_main(args, stdin=stdin)
    return run


def test_config_set_view_and_use_context(meshctl: Meshctl, tmp_path: Path) -> None:
    """set creates a context (first one current) in a 0600 file; view redacts tokens
    unless --raw; use-context switches; token and token-file replace each other."""
    cfg = tmp_path / "cfg" / "config.yaml"
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    r = meshctl("config", "set", "--server", "https://127.0.0.1:6443", "--token", "s3cret",
                "--certificate-authority", str(ca), cfg=cfg)
    assert r.returncode == 0, r.stderr
    assert f'context "default" set in {cfg}' in r.stdout
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    r = meshctl("config", "set", "--context", "lab", "--server", "http://10.1.2.3:8080",
                "--insecure-skip-tls-verify", "true", "--namespace", "shop", cfg=cfg)
    assert r.returncode == 0, r.stderr
    view = meshctl("config", "view", cfg=cfg)
    data = yaml.safe_load(view.stdout)
    assert data["current-context"] == "default"
    assert data["contexts"]["default"] == {"server": "https://127.0.0.1:6443",
                                           "token": "REDACTED",
                                           "certificate-authority": str(ca.resolve())}
    assert "s3cret" in meshctl("config", "view", "--raw", cfg=cfg).stdout
    assert meshctl("config", "use-context", "lab", cfg=cfg).returncode == 0
    assert meshctl("config", "current-context", cfg=cfg).stdout == "lab\n"
    token_file = tmp_path / "tok"
    token_file.write_text("abc\n")
    assert meshctl("config", "set", "--token-file", str(token_file), cfg=cfg).returncode == 0
    lab = yaml.safe_load(cfg.read_text())["contexts"]["lab"]
    assert lab["token-file"] == str(token_file.resolve())
    assert "token" not in lab
    assert meshctl("config", "path", cfg=cfg).stdout.strip() == str(cfg)


def test_bad_config_values_are_refused_and_change_nothing(meshctl: Meshctl,
                                                          tmp_path: Path) -> None:
    """A server that is not an http(s) URL, a missing CA file or an unknown context
    exit 1 with a message naming the problem, and the file is unchanged."""
    cfg = tmp_path / "config.yaml"
    assert meshctl("config", "set", "--server", "https://a:1", cfg=cfg).returncode == 0
    before = cfg.read_text()
    for args, expected in [
        (("--server", "a:1"), "http:// or https://"),
        (("--certificate-authority", str(tmp_path / "none.crt")), "does not exist"),
    ]:
        r = meshctl("config", "set", *args, cfg=cfg)
        assert r.returncode == 1
        assert expected in r.stderr
    r = meshctl("config", "use-context", "nope", cfg=cfg)
    assert (r.returncode, "no context named 'nope'" in r.stderr) == (1, True)
    assert cfg.read_text() == before


def test_client_verbs_without_a_server_explain_how_to_configure_one(meshctl: Meshctl,
                                                                    tmp_path: Path) -> None:
    """No server anywhere: exit 1 and point at 'meshctl config set --server'."""
    r = meshctl("get", "pods", cfg=tmp_path / "absent.yaml")
    assert r.returncode == 1
    assert "meshctl config set --server" in r.stderr


def test_unreachable_server_is_a_clear_error(tmp_path: Path, free_port: int) -> None:
    """The installed script against a server that refuses connections: exit status 1
    naming the address, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["MESH_CONFIG"] = str(tmp_path / "absent.yaml")
    r = subprocess.run([MESHCTL, "get", "pods", "--server", f"http://127.0.0.1:{free_port}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert f"127.0.0.1:{free_port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_manifest_fails_before_contacting_the_server(meshctl: Meshctl, tmp_path: Path,
                                                         free_port: int) -> None:
    """apply -f with a broken second document exits 1 naming file and document, without
    trying the (unreachable) server: nothing is sent when any manifest is bad."""
    f = tmp_path / "m.yaml"
    f.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
                 "apiVersion: v1\nkind: Namespace\nmetadata: {}\n")
    r = meshctl("apply", "-f", str(f), "--server", f"http://127.0.0.1:{free_port}",
                cfg=tmp_path / "absent.yaml")
    assert r.returncode == 1
    assert f"{f}#2: missing metadata.name" in r.stderr
    assert "127.0.0.1" not in r.stderr
