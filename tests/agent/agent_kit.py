"""Helpers for the agent's tests (fixtures are in ``conftest.py``): Pod dicts, the test
image's name, the runtime parametrization, real-time waiting for real processes."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from control.agent.runtime.process import ProcessRuntime

# One tag per test process: concurrent sessions never retag (and orphan) each other's image.
IMAGE = f"localhost/mesh-busybox:test-{os.getpid()}"
BUSYBOX = "/bin/busybox"

DOCKER_NEEDS = ["podman", "runc", "busybox"]
DOCKER_MARK = pytest.mark.system(commands=DOCKER_NEEDS, root=True)
PROCESS_MARK = pytest.mark.system(commands=["busybox"])
RUNTIMES = [pytest.param("process", marks=PROCESS_MARK, id="process"),
            pytest.param("docker", marks=DOCKER_MARK, id="docker")]


def pod(name: str, *containers: dict[str, Any], restart_policy: str = "Always",
        grace: float = 1, uid: str | None = None, volumes: list | None = None
        ) -> dict[str, Any]:
    """A Pod dict in Kubernetes' shape."""
    spec: dict[str, Any] = {"containers": list(containers), "restartPolicy": restart_policy,
                            "terminationGracePeriodSeconds": grace}
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "uid": uid or str(uuid.uuid4())},
            "spec": spec}


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A container running ``script`` under busybox sh (same spec on both runtimes)."""
    return {"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["busybox", "sh", "-c", script], **extra}


# An HTTP server on $(PORT) serving ./www (relative: / in a container, the container's
# own directory under the process runtime), with a health file tests can delete.
HTTPD = ("mkdir -p www && echo ok > www/healthz && echo hello > www/index.html && "
         "echo serving on $(PORT) && exec busybox httpd -f -p $(PORT) -h www")


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 20.0,
                     interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) in real time until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) of a GET, None when nothing answers (used with ``to_thread``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None


def cgroups_available(rt: Any) -> bool:
    return not isinstance(rt, ProcessRuntime) or rt.cgroups is not None
