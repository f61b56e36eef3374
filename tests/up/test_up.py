"""``meshctl up`` runs the whole system from one command and finds it again.

End to end, with the installed script and real processes: the API server on SQLite,
the controllers and a node agent on the process runtime. Pins: the summary names the
API server and writes a working client context; the node registers Ready; a Deployment
applied with ``meshctl apply`` is scheduled, run and reachable through the published
port; SIGTERM stops everything (the Pod's port closes, exit 0); the next ``up`` on the
same data directory finds the Deployment again and runs its Pod.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.net import free_port, port_open, wait_for_url

pytestmark = [pytest.mark.system(commands=["busybox"]), pytest.mark.slow,
              pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent
MESHCTL = str(BIN / "meshctl")

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 1
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
        - name: web
          image: busybox
          command: ["busybox", "sh", "-c"]
          args: ["mkdir -p www && echo hello > www/index.html && echo web-started &&
                  exec busybox httpd -f -p $(PORT) -h www"]
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
"""


def _up(spawn, data: Path, env: dict[str, str], api_port: int, agent_port: int):
    return spawn([MESHCTL, "up", "--data-dir", str(data), "--runtime", "process",
                  "--api-port", str(api_port), "--agent-port", str(agent_port),
                  "--node-name", "laptop", "--log-level", "INFO"], name="meshctl-up", env=env)


def _meshctl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([MESHCTL, *args], input=stdin, capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, f"meshctl {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def _wait(predicate, what: str, proc, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"meshctl up exited early:\n{proc.output()}"
        try:
            last = predicate()
        except (AssertionError, subprocess.SubprocessError, ValueError, KeyError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last})\n{proc.output()[-4000:]}")


def _pod_port(env: dict[str, str]) -> int | None:
    pods = json.loads(_meshctl(env, "get", "pods", "-l", "app=hello", "-o", "json"))["items"]
    for p in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in p.get("status", {}).get("conditions", []))
        mappings = p.get("status", {}).get("portMappings") or []
        if ready and mappings:
            return int(mappings[0]["hostPort"])
    return None


def test_up_runs_a_deployment_stops_cleanly_and_resumes(spawn, tmp_path: Path) -> None:
    data = tmp_path / "mesh"
    env = {"MESH_CONFIG": str(tmp_path / "client.yaml"), "HOME": str(tmp_path)}
    api_port, agent_port = free_port(), free_port()
    up = _up(spawn, data, env, api_port, agent_port)
    _wait(lambda: "mesh is up" in up.output(), "the summary", up)
    assert f"https://127.0.0.1:{api_port}" in up.output()
    assert re.search(r"admin token\s+\S+admin\.token", up.output())

    # The context written by `up` is enough for meshctl.
    _wait(lambda: " Ready" in _meshctl(env, "get", "nodes"), "node laptop Ready", up)
    _meshctl(env, "apply", "-f", "-", stdin=DEPLOYMENT)
    port = _wait(lambda: _pod_port(env), "the pod Ready with a published port", up)
    wait_for_url(f"http://127.0.0.1:{port}/index.html", timeout=20)

    # logs and exec go to the node's agent with the token `up` keeps for it.
    pod = json.loads(_meshctl(env, "get", "pods", "-l", "app=hello", "-o", "json"))[
        "items"][0]["metadata"]["name"]
    agent_token = ["--agent-token-file", str(data / "agent" / "agent-token")]
    assert "web-started" in _meshctl(env, "logs", pod, *agent_token)
    assert _meshctl(env, "exec", pod, *agent_token, "--", "busybox", "cat",
                    "www/index.html").strip() == "hello"
    failing = subprocess.run([MESHCTL, "exec", pod, *agent_token, "--", "busybox", "false"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert failing.returncode == 1  # the command's own exit status

    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, up.output()
    assert "stopped" in up.output()
    assert not port_open("127.0.0.1", port), "the pod outlived meshctl up"
    assert not port_open("127.0.0.1", api_port)

    # Again on the same data directory: the Deployment is still there and runs again.
    again = _up(spawn, data, env, api_port, agent_port)
    _wait(lambda: "mesh is up" in again.output(), "the second summary", again)
    assert "hello" in _meshctl(env, "get", "deployments")
    port2 = _wait(lambda: _pod_port(env), "the pod running again", again)
    wait_for_url(f"http://127.0.0.1:{port2}/index.html", timeout=20)
    again.send_signal(signal.SIGTERM)
    assert again.wait(60) == 0, again.output()


def test_up_refuses_a_busy_port_clearly(spawn, tmp_path: Path) -> None:
    data = tmp_path / "mesh"
    env = {"MESH_CONFIG": str(tmp_path / "client.yaml"), "HOME": str(tmp_path)}
    port = free_port()
    blocker = spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                    name="blocker")
    _wait(lambda: port_open("127.0.0.1", port), "the blocker", blocker, timeout=20)
    up = _up(spawn, data, env, port, free_port())
    assert up.wait(60) == 1
    assert "could not start" in up.output()
