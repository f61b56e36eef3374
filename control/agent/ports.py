"""Host ports for Pods: allocated from a range on the node's address, owned per Pod.

A container port is published on the node (``hostIP:hostPort``) so traffic from
other nodes and proxies reaches it. A Pod that names a ``hostPort`` gets exactly that
port or a :class:`PortInUse` error (the pod worker turns it into the container's
``RunContainerError`` reason); one that does not gets the next free port of the range.
"Free" means: not held by another Pod of this agent *and* bindable on the node's
address right now, so a port some unrelated process listens on is skipped, not
handed out. The cursor moves on round-robin, so a port just released is not reused
at once (a client still talking to the old Pod would reach the new one).

After an agent restart the runtime's containers say which ports they publish; the
pod worker calls :meth:`HostPorts.adopt` for them so nothing is handed out twice.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

DEFAULT_RANGE = (30000, 32767)  # Kubernetes' NodePort range; no clash with ephemeral ports


class PortError(Exception):
    """A host port could not be given to a Pod."""


class PortInUse(PortError):
    pass


class PortRangeExhausted(PortError):
    pass


class HostPorts:
    """The node's host ports: who holds which, and which are free."""

    def __init__(self, host: str = "127.0.0.1", port_range: tuple[int, int] = DEFAULT_RANGE,
                 *, bindable: Callable[[int], bool] | None = None) -> None:
        """``bindable(port)`` says whether a port is free on the node; by default a real
        bind on ``host`` (tests of the bookkeeping pass their own)."""
        lo, hi = port_range
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"invalid host port range {lo}-{hi}")
        self.host = host
        self.range = (lo, hi)
        self._owner: dict[int, str] = {}
        self._cursor = lo
        self._bindable = bindable or self._can_bind

    def allocate(self, owner: str, requested: int = 0) -> int:
        """A port for ``owner`` (a Pod's uid): ``requested`` when non-zero, else from the range."""
        if requested:
            holder = self._owner.get(requested)
            if holder is not None and holder != owner:
                raise PortInUse(f"host port {self.host}:{requested} is held by another pod")
            if holder is None and not self._bindable(requested):
                raise PortInUse(f"host port {self.host}:{requested} is already in use")
            self._owner[requested] = owner
            return requested
        lo, hi = self.range
        size = hi - lo + 1
        for i in range(size):
            port = lo + (self._cursor - lo + i) % size
            if port in self._owner or not self._bindable(port):
                continue
            self._owner[port] = owner
            self._cursor = lo + (port - lo + 1) % size
            return port
        raise PortRangeExhausted(f"no free host port in {lo}-{hi} on {self.host}")

    def adopt(self, owner: str, ports: Iterable[int]) -> None:
        """Record ports that a running container of ``owner`` already publishes."""
        for port in ports:
            self._owner[port] = owner

    def release(self, owner: str) -> list[int]:
        """Free every port of ``owner``; return them."""
        mine = [p for p, o in self._owner.items() if o == owner]
        for p in mine:
            del self._owner[p]
        return mine

    def release_port(self, owner: str, port: int) -> None:
        """Free one port of ``owner`` (an allocation that is being rolled back)."""
        if self._owner.get(port) == owner:
            del self._owner[port]

    def held(self, owner: str) -> list[int]:
        return sorted(p for p, o in self._owner.items() if o == owner)

    def _can_bind(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # SO_REUSEADDR as servers set it: a port in TIME_WAIT counts as free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, port))
            except OSError:
                return False
        return True
