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


class Grace:
    """The grace period of one termination, on the agent's clock from when it began.

    A later delete may shorten it (``kubectl delete --grace-period=1`` or ``--now`` on a
    Pod already Terminating), never lengthen it, as the kubelet does: :meth:`shorten`
    moves the end closer, and a termination in progress then cuts its hooks short and
    sends the containers a new stop within what is left."""

    def __init__(self, seconds: float, *, clock: Clock) -> None:
        self._clock = clock
        self.seconds = seconds
        self.end = clock.now() + seconds
        #: set (and replaced by a fresh one) each time the end moves closer
        self.shortened = asyncio.Event()

    def left(self) -> float:
        return max(0.0, self.end - self._clock.now())

    def shorten(self, seconds: float) -> bool:
        """End ``seconds`` from now if that is sooner; True when it moved."""
        end = self._clock.now() + max(0.0, seconds)
        if end >= self.end:
            return False
        self.end = end
        self.seconds = min(self.seconds, seconds)
        event, self.shortened = self.shortened, asyncio.Event()
        event.set()
        return True


async def _done_or_shortened(fut: asyncio.Future, grace: Grace) -> bool:
    """Wait for ``fut``; True when it is done, False when the grace was shortened first."""
    waiter = asyncio.ensure_future(grace.shortened.wait())
    try:
        await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return fut.done()


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


async def stop_in_order(targets: list[StopTarget], *, grace: float | Grace, runtime: Runtime,
                        clock: Clock, host: str, on_hook_failure: HookFailed) -> None:
    """Stop ``targets`` (running containers of one Pod) as the module docstring says;
    a :class:`Grace` shortened meanwhile cuts the hooks short and stops the containers
    again within what is left."""
    g = grace if isinstance(grace, Grace) else Grace(grace, clock=clock)

    def window(floor: bool) -> float:
        return max(g.left(), MIN_STOP_GRACE) if floor and g.seconds > 0 else g.left()

    hooked = [t for t in targets if t.spec is not None and t.spec.pre_stop is not None]
    ran_hooks = bool(hooked) and g.seconds > 0
    if ran_hooks:
        running = [asyncio.ensure_future(_hook(t, runtime=runtime, clock=clock, host=host,
                                               budget=g.left(), on_failure=on_hook_failure))
                   for t in hooked]
        if not await _done_or_shortened(asyncio.gather(*running, return_exceptions=True), g):
            # a later delete asked for less: no more waiting on hooks
            for t, task in zip(hooked, running, strict=True):
                if not task.done():
                    task.cancel()
                    on_hook_failure(t.info.container_name, "cut off: the grace period was "
                                    f"shortened to {g.seconds:g}s")
        await asyncio.gather(*running, return_exceptions=True)
    for group, floor in (([t for t in targets if not t.sidecar], ran_hooks),
                         ([t for t in targets if t.sidecar], True)):
        stops = asyncio.ensure_future(asyncio.gather(
            *(runtime.stop(t.info.id, grace=window(floor)) for t in group)))
        again: list[asyncio.Future] = []
        try:
            while not await _done_or_shortened(stops, g):
                # SIGTERM again with the shorter window: SIGKILL comes sooner
                again.append(asyncio.ensure_future(asyncio.gather(
                    *(runtime.stop(t.info.id, grace=g.left()) for t in group))))
            await stops
        finally:
            # the first stop's failure is the one raised; the repeats end either way
            await asyncio.gather(*again, return_exceptions=True)


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
