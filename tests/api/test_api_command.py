"""``meshctl apiserver`` as a process: it serves HTTPS, prints the admin token only on
first start, keeps its state across restarts and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import ssl
import sys
import urllib.request
from pathlib import Path

from support.net import wait_for_port

MESHCTL = str(Path(sys.executable).parent / "meshctl")


def _get(url: str, token: str, ca: Path) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)),
                                timeout=10) as resp:
        return json.loads(resp.read())


def _post(url: str, token: str, ca: Path, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(ca)),
                                timeout=10) as resp:
        return resp.status


def test_apiserver_command_prints_token_once_and_keeps_state(spawn, data_dir, free_port):
    args = [MESHCTL, "apiserver", "--data-dir", str(data_dir), "--port", str(free_port)]
    url = f"https://127.0.0.1:{free_port}"
    ca = data_dir / "ca.crt"

    first = spawn(args, name="apiserver-1")
    wait_for_port("127.0.0.1", free_port, timeout=60, proc=first)
    token = (data_dir / "admin.token").read_text().strip()
    assert _post(url + "/api/v1/namespaces", token, ca, {"metadata": {"name": "kept"}}) == 201
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    out = first.output()
    assert re.search(rf"admin token \(shown once.*\): {re.escape(token)}", out), out

    second = spawn(args, name="apiserver-2")
    wait_for_port("127.0.0.1", free_port, timeout=60, proc=second)
    names = [n["metadata"]["name"] for n in _get(url + "/api/v1/namespaces", token, ca)["items"]]
    assert names == ["default", "kept"]
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert token not in second.output()
    assert "admin token: in" in second.output()


def test_apiserver_command_refuses_a_bad_tokens_file(spawn, data_dir, tmp_path, free_port):
    bad = tmp_path / "tokens.csv"
    bad.write_text("tooshort,alice,viewer\n")
    proc = spawn([MESHCTL, "apiserver", "--data-dir", str(data_dir), "--port", str(free_port),
                  "--token-file", str(bad)], name="apiserver-bad")
    assert proc.wait(60) == 1
    assert "tokens.csv:1: token is too short" in proc.output()
