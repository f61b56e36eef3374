"""HostPorts: host ports from a range, owned per Pod, never handed out twice, and never
a port some other process is listening on.

The bookkeeping tests pass a ``bindable`` predicate (a set of "busy" ports) so that
other programs on this shared machine cannot change the answer; one test checks the
real bind against a socket it holds itself."""

from __future__ import annotations

import socket

import pytest

from control.agent.ports import HostPorts, PortInUse, PortRangeExhausted


def _ports(lo: int, hi: int, busy: set[int]) -> HostPorts:
    return HostPorts("127.0.0.1", (lo, hi), bindable=lambda p: p not in busy)


def test_allocation_skips_held_and_busy_ports_and_rotates():
    """Ports come from the range in order, skipping ones a Pod holds and ones another
    process listens on; released ports are not reused at once; a full range says so."""
    ports = _ports(100, 103, busy={101})
    assert ports.allocate("pod-a") == 100
    assert ports.allocate("pod-b") == 102  # 101 is busy
    assert ports.release("pod-a") == [100]
    assert ports.allocate("pod-c") == 103  # the cursor moved on past the released one
    assert ports.allocate("pod-d") == 100  # wrapped around
    with pytest.raises(PortRangeExhausted, match="100-103"):
        ports.allocate("pod-e")


def test_requested_host_port_is_exclusive():
    """An explicit hostPort: granted once (idempotently for its owner); another Pod
    asking for it, or a busy port, is PortInUse with the address in the message."""
    ports = _ports(100, 101, busy={5000})
    assert ports.allocate("pod-a", 100) == 100
    assert ports.allocate("pod-a", 100) == 100
    with pytest.raises(PortInUse, match="held by another pod"):
        ports.allocate("pod-b", 100)
    with pytest.raises(PortInUse, match=r"127\.0\.0\.1:5000 is already in use"):
        ports.allocate("pod-b", 5000)
    ports.release_port("pod-a", 100)
    assert ports.allocate("pod-b", 100) == 100


def test_adopted_ports_are_not_handed_out_again():
    """Ports read back from running containers after a restart count as held."""
    ports = _ports(100, 101, busy=set())
    ports.adopt("pod-a", [100])
    assert ports.allocate("pod-b") == 101
    assert ports.held("pod-a") == [100]


def test_a_port_another_process_listens_on_is_never_allocated():
    """With the real bind check, a port held by a listening socket is skipped, and
    asking for it explicitly is PortInUse."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        ports = HostPorts("127.0.0.1", (taken, taken))
        with pytest.raises(PortRangeExhausted):
            ports.allocate("pod-a")
        with pytest.raises(PortInUse, match=f"127.0.0.1:{taken} is already in use"):
            ports.allocate("pod-a", taken)


def test_invalid_range_is_refused():
    with pytest.raises(ValueError, match="invalid host port range"):
        HostPorts("127.0.0.1", (5000, 4000))
