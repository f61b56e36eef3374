"""Restart policy and crash-loop back-off, as the kubelet does it.

:func:`should_restart` answers "does this exited container run again?" from the Pod's
``restartPolicy`` (Always / OnFailure / Never) and the exit code. :class:`BackOff`
spaces the restarts: the first restart is immediate, the second waits ``initial``
(10 s) after the exit, each further one doubles the wait up to ``cap`` (5 minutes,
Kubernetes' ``MaxContainerBackOff``), and a key with no restart for ``reset_after``
(10 minutes) beyond its delay starts over. While a restart waits, the container's
state is ``waiting`` with reason ``CrashLoopBackOff``, which is what ``meshctl get
pods`` shows.

Pure logic on a :class:`~control.agent.clock.Clock`: the pod worker (``pod_worker.py``)
asks ``remaining(key, finished_at=...)`` before restarting and calls ``next(key)`` when
it does.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.agent.clock import Clock
from control.agent.spec import RestartPolicy

INITIAL = 10.0  # seconds; kubelet's initial crash-loop back-off
CAP = 300.0  # seconds; kubelet's MaxContainerBackOff: "capped at five minutes"
RESET_AFTER = 600.0  # seconds of good running after which the back-off forgets


def should_restart(policy: RestartPolicy, exit_code: int) -> bool:
    """Whether a container that exited with ``exit_code`` is restarted under ``policy``."""
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


@dataclass
class _Entry:
    delay: float
    updated: float


class BackOff:
    """Per-key exponential back-off, the kubelet's: the first restart of a key is
    immediate and arms ``initial``; each later one must wait the armed delay after the
    container finished, then doubles it, up to ``cap``. A key left alone for
    ``reset_after`` seconds (a container that ran well that long) starts over.
    """

    def __init__(self, clock: Clock, *, initial: float = INITIAL, cap: float = CAP,
                 reset_after: float = RESET_AFTER) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"back-off needs 0 < initial ({initial}) <= cap ({cap})")
        self._clock = clock
        self.initial, self.cap, self.reset_after = initial, cap, reset_after
        self._entries: dict[str, _Entry] = {}

    def remaining(self, key: str, *, finished_at: float) -> float:
        """Seconds ``key`` must still wait after a container that finished at
        ``finished_at`` (monotonic); 0 when it may restart now."""
        e = self._live(key)
        if e is None:
            return 0.0
        return max(0.0, finished_at + e.delay - self._clock.now())

    def delay(self, key: str) -> float:
        """The delay currently armed for ``key`` (0 when none)."""
        e = self._live(key)
        return 0.0 if e is None else e.delay

    def next(self, key: str) -> float:
        """Record a restart of ``key`` now and return the delay armed for the next one."""
        e = self._live(key)
        delay = self.initial if e is None else min(self.cap, e.delay * 2)
        self._entries[key] = _Entry(delay=delay, updated=self._clock.now())
        return delay

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def _live(self, key: str) -> _Entry | None:
        e = self._entries.get(key)
        if e is not None and self._clock.now() - e.updated >= self.reset_after + e.delay:
            del self._entries[key]
            return None
        return e
