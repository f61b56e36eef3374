"""The path a newcomer takes, all through installed scripts: start ``meshctl apiserver``,
point the client at it with ``meshctl config set`` (its admin token file and CA from the
data directory), then ``get``/``apply``/``describe`` work with no connection flags.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from cli_kit import MESHCTL

from control.api.tls import ensure_certificates
from support.net import wait_for_port
from support.procs import Managed


def test_apiserver_then_config_set_then_client_verbs(
        spawn: Callable[..., Managed], data_dir: Path, tmp_path: Path, free_port: int) -> None:
    """A fresh data directory: the API server writes its admin token and CA there;
    `meshctl config set --token-file --certificate-authority` makes a config every verb
    then uses (over verified HTTPS); another cluster's CA fails verification, exit 1."""
    server = spawn([MESHCTL, "apiserver", "--data-dir", str(data_dir),
                    "--port", str(free_port)], name="apiserver")
    wait_for_port("127.0.0.1", free_port, timeout=60, proc=server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["MESH_CONFIG"] = str(tmp_path / "home" / "mesh.yaml")

    def meshctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MESHCTL, *args], capture_output=True, text=True, env=env,
                              input=stdin, timeout=60)

    r = meshctl("config", "set", "--server", f"https://127.0.0.1:{free_port}",
                "--token-file", str(data_dir / "admin.token"),
                "--certificate-authority", str(data_dir / "ca.crt"))
    assert r.returncode == 0, r.stderr
    r = meshctl("get", "namespaces")
    assert r.returncode == 0, r.stderr + server.output()
    assert re.search(r"^default\s+Active\s+\d+s$", r.stdout, re.M)
    r = meshctl("apply", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\n"
                                          "metadata: {name: shop}\n")
    assert (r.returncode, r.stdout) == (0, "namespace/shop created\n")
    r = meshctl("describe", "ns", "shop")
    assert re.search(r"^Name:\s+shop$", r.stdout, re.M)

    (tmp_path / "another-cluster").mkdir()
    other = ensure_certificates(tmp_path / "another-cluster")  # a CA that did not sign it
    r = meshctl("config", "set", "--certificate-authority", str(other.ca))
    assert r.returncode == 0, r.stderr
    r = meshctl("get", "namespaces")
    assert r.returncode == 1
    assert "certificate verify failed" in r.stderr
    assert "Traceback" not in r.stderr
