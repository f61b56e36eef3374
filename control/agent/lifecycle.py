"""Stopping a Pod's containers in order: preStop hooks, then the app, then the sidecar.

Kubernetes' kubelet, for one Pod whose containers must go (graceful delete, a spec
change, the agent's own shutdown with ``--stop-pods-on-exit``), all inside one grace
period that starts when stopping starts:

1. every running container with a ``lifecycle.preStop`` hook runs it, all at once:
   ``sleep`` waits on the agent's clock, ``exec`` runs in the container, ``httpGet``
   asks the container's port; a hook is cut off when the grace period is over and a
   failing hook is reported (a ``FailedPreStopHook`` Warning) but never stops the
   termination;
2. the app containers get SIGTERM, then SIGKILL when the rest of the grace is over;
3. only when they have exited does the mesh sidecar get its SIGTERM (meshproxy then
   stops accepting and finishes the requests in flight): it keeps serving the Pod's
   inbound and outbound traffic for as long as the app may still use it, the order
   Kubernetes gives native sidecars.

After hooks have run, step 2 gets at least ``MIN_STOP_GRACE`` seconds between SIGTERM
and SIGKILL (Kubernetes' minimal shutdown window, for a hook that used up the grace);
step 3 always does, so an app that took the whole grace does not leave its sidecar to a
SIGKILL. A force delete (grace 0) kills at once and runs no hook.

Why the hooks matter here: callers reach a Pod through their own sidecars, which follow
the Service's Endpoints. A Pod marked for deletion leaves the Endpoints at once, but the
callers' proxies learn it one watch event and one config apply later. A preStop sleep
(the sidecar injection gives meshed Pods one by default, see ``sidecar.py``) keeps the
app serving through that window, so no request is sent to a process already gone.

:func:`run_hook` runs one hook of either kind; the pod worker also uses it for
``postStart`` and :func:`stop_in_order` for a single container it kills (a failed
liveness or startup probe, a failed postStart), which so gets its preStop hook too.

Neighbours: ``pod_worker.py`` (calls :func:`stop_in_order` from ``terminate``),
``probes.py`` (runs exec and httpGet actions), ``spec.py`` (:class:`Hook`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from control.agent.clock import Clock
from control.agent.probes import run_action
from control.agent.runtime.base import ContainerInfo, PortBinding, Runtime
from control.agent.spec import Container, Hook

log = logging.getLogger(__name__)

MIN_STOP_GRACE = 2.0  # s: SIGTERM-to-SIGKILL window kept after hooks (Kubernetes' value)
#: Seconds a postStart hook may take. Kubernetes sets no bound; an agent must not wait
#: forever on a hook that hangs, and two minutes covers any warm-up a hook should do.
POST_START_TIMEOUT = 120.0

HookFailed = Callable[[str, str], None]
"""``(container name, message)``: a preStop hook failed or was cut off."""


@dataclass(frozen=True, slots=True)
class StopTarget:
    """One running container of the Pod, with what stopping it needs."""

    info: ContainerInfo
    spec: Container | None  # None: a container the current spec no longer has
    ports: tuple[PortBinding, ...] = ()
    sidecar: bool = False


async def run_hook(hook: Hook, container: Container, *, runtime: Runtime,
                   container_id: str, host: str, ports: tuple[PortBinding, ...],
                   clock: Clock, budget: float) -> str | None:
    """Run one hook for at most ``budget`` seconds; the failure's message, or None."""
    if hook.sleep_seconds is not None:
        await clock.sleep(min(hook.sleep_seconds, budget))
        return None
    assert hook.action is not None  # parse_pod guarantees exactly one action
    probe = dataclasses.replace(hook.action, timeout=max(budget, 0.001))
    outcome = await run_action(probe, container, runtime=runtime,
                               container_id=container_id, host=host, ports=ports)
    return None if outcome.ok else outcome.message


async def stop_in_order(targets: list[StopTarget], *, grace: float, runtime: Runtime,
                        clock: Clock, host: str, on_hook_failure: HookFailed) -> None:
    """Stop ``targets`` (running containers of one Pod) as the module docstring says."""
    start = clock.now()

    def left() -> float:
        return max(0.0, grace - (clock.now() - start))

    def window(floor: bool) -> float:
        return max(left(), MIN_STOP_GRACE) if floor and grace > 0 else left()

    hooked = [t for t in targets if t.spec is not None and t.spec.pre_stop is not None]
    ran_hooks = bool(hooked) and grace > 0
    if ran_hooks:
        await asyncio.gather(*(_hook(t, runtime=runtime, clock=clock, host=host,
                                     budget=left(), on_failure=on_hook_failure)
                               for t in hooked))
    apps = [t for t in targets if not t.sidecar]
    await asyncio.gather(*(runtime.stop(t.info.id, grace=window(ran_hooks)) for t in apps))
    sidecars = [t for t in targets if t.sidecar]
    await asyncio.gather(*(runtime.stop(t.info.id, grace=window(True)) for t in sidecars))


async def _hook(t: StopTarget, *, runtime: Runtime, clock: Clock, host: str, budget: float,
                on_failure: HookFailed) -> None:
    assert t.spec is not None
    assert t.spec.pre_stop is not None
    try:
        failure = await run_hook(t.spec.pre_stop, t.spec, runtime=runtime,
                                 container_id=t.info.id, host=host, ports=t.ports,
                                 clock=clock, budget=budget)
    except Exception as e:  # a hook never stops the termination
        failure = f"{type(e).__name__}: {e}"
    if failure is not None:
        log.warning("container %s: preStop hook failed: %s", t.spec.name, failure)
        on_failure(t.spec.name, failure)
