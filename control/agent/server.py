"""The agent's own HTTP API (the kubelet's port 10250): logs, exec, stats, health.

What ``meshctl logs`` / ``meshctl exec`` and the autoscaler's metrics pipeline need
from a node, served with aiohttp:

- ``GET /healthz`` → ``ok`` (no auth: a liveness check for the agent itself);
- ``GET /pods`` → the Pods this agent runs with their current status;
- ``GET /containerLogs/{namespace}/{pod}/{container}?tailLines=N`` → the container's
  stdout and stderr as text (the kubelet's path);
- ``POST /exec/{namespace}/{pod}/{container}`` with ``{"command": [...],
  "timeoutSeconds": 30}`` → ``{"exitCode": n, "output": "..."}``. Non-interactive: no
  stdin, no TTY (the kubelet streams over SPDY/WebSocket; not done here);
- ``GET /stats/summary`` → per-container CPU (cumulative core-nanoseconds) and memory,
  in the shape of the kubelet's Summary API.

Every endpoint but ``/healthz`` requires ``Authorization: Bearer <token>`` when the
agent has a token (compared in constant time). Errors are Kubernetes ``Status``
bodies with the HTTP code, like the API server's, so a proxying API server can pass
them through. The API server is expected to proxy ``pods/{name}/log`` and
``pods/{name}/exec`` here, finding the port in the Node's
``status.daemonEndpoints.kubeletEndpoint.Port``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from control.agent.agent import Agent
from control.agent.runtime.base import ContainerRuntimeError

MAX_EXEC_TIMEOUT = 600.0  # seconds; an exec may not pin an agent task longer


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return web.json_response(body, status=code)


def build_app(agent: Agent, *, token: str | None) -> web.Application:
    """The agent API for ``agent``; ``token`` None disables authentication."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is not None and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _status(401, "Unauthorized", "a valid bearer token is required")
        return await handler(request)

    def container_id(request: web.Request) -> str | web.Response:
        ns, pod, name = (request.match_info[k] for k in ("namespace", "pod", "container"))
        worker = agent.worker(ns, pod)
        if worker is None:
            return _status(404, "NotFound", f'pod "{ns}/{pod}" is not running on this node')
        if name not in {c.name for c in worker.pod.containers}:
            return _status(404, "NotFound", f'pod "{ns}/{pod}" has no container "{name}"')
        cid = worker.container_id(name)
        if cid is None:
            return _status(400, "BadRequest",
                           f'container "{name}" in pod "{ns}/{pod}" has not been created')
        return cid

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def pods(_: web.Request) -> web.Response:
        items = [{"namespace": w.pod.namespace, "name": w.pod.name, "uid": w.pod.uid,
                  "status": w.status()} for w in agent.workers()]
        return web.json_response({"items": items})

    async def logs(request: web.Request) -> web.StreamResponse:
        tail = request.query.get("tailLines")
        if tail is not None and (not tail.isdigit()):
            return _status(400, "BadRequest", f"tailLines must be a non-negative integer, "
                                              f"got {tail!r}")
        cid = container_id(request)
        if isinstance(cid, web.Response):
            return cid
        try:
            data = await agent.runtime.logs(cid, tail=int(tail) if tail else None)
        except ContainerRuntimeError as e:
            return _status(500, "InternalError", str(e))
        return web.Response(body=data, content_type="text/plain", charset="utf-8")

    async def exec_(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _status(400, "BadRequest", "body must be JSON: "
                                              '{"command": [...], "timeoutSeconds": n}')
        cmd = body.get("command") if isinstance(body, dict) else None
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            return _status(400, "BadRequest", "command must be a non-empty list of strings")
        timeout = body.get("timeoutSeconds", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
                not 0 < timeout <= MAX_EXEC_TIMEOUT:
            return _status(400, "BadRequest",
                           f"timeoutSeconds must be in (0, {MAX_EXEC_TIMEOUT:g}]")
        cid = container_id(request)
        if isinstance(cid, web.Response):
            return cid
        try:
            res = await agent.runtime.exec(cid, cmd, timeout=float(timeout))
        except TimeoutError:
            return _status(504, "Timeout", f"command did not finish within {timeout}s")
        except ContainerRuntimeError as e:
            return _status(409 if "not running" in str(e) else 500,
                           "Conflict" if "not running" in str(e) else "InternalError", str(e))
        return web.json_response({"exitCode": res.exit_code,
                                  "output": res.output.decode(errors="replace")})

    async def summary(_: web.Request) -> web.Response:
        out = []
        for w in agent.workers():
            containers = []
            for c in w.pod.containers:
                cid = w.container_id(c.name)
                if cid is None:
                    continue
                try:
                    st = await agent.runtime.stats(cid)
                except ContainerRuntimeError:
                    continue  # not running right now: no sample
                containers.append({
                    "name": c.name,
                    "cpu": {"usageCoreNanoSeconds": int(st.cpu_seconds * 1e9)},
                    "memory": {"workingSetBytes": st.memory_bytes}})
            out.append({"podRef": {"namespace": w.pod.namespace, "name": w.pod.name,
                                   "uid": w.pod.uid}, "containers": containers})
        return web.json_response({"node": {"nodeName": agent.node}, "pods": out})

    app = web.Application(middlewares=[auth])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/pods", pods)
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", logs)
    app.router.add_post("/exec/{namespace}/{pod}/{container}", exec_)
    app.router.add_get("/stats/summary", summary)
    return app
