"""HostPorts: host ports from a range, owned per Pod, never handed out twice, and never
a port some other process is listening on."""

from __future__ import annotations

import socket

import pytest

from control.agent.ports import HostPorts, PortInUse, PortRangeExhausted


def _range(n: int) -> tuple[int, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
    base = min(base, 65535 - n)
    return base, base + n - 1


def test_allocation_skips_held_and_busy_ports_and_rotates():
    """Ports come from the range in order, skipping ones a Pod holds and ones another
    process listens on; released ports are not reused at once."""
    lo, hi = _range(4)
    ports = HostPorts("127.0.0.1", (lo, hi))
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        busy.bind(("127.0.0.1", lo + 1))
        busy.listen()
    except OSError:
        busy.close()
        pytest.skip("the test's port range is in use by someone else")
    try:
        a = ports.allocate("pod-a")
        b = ports.allocate("pod-b")
        assert a == lo
        assert b == lo + 2  # lo + 1 is busy
        assert ports.release("pod-a") == [lo]
        assert ports.allocate("pod-c") == lo + 3  # the cursor moved on past the released one
        assert ports.allocate("pod-d") == lo  # wrapped around
        with pytest.raises(PortRangeExhausted, match=f"{lo}-{hi}"):
            ports.allocate("pod-e")
    finally:
        busy.close()


def test_requested_host_port_is_exclusive():
    """An explicit hostPort: granted once; another Pod asking for it, or a port another
    process listens on, is PortInUse with the address in the message."""
    lo, hi = _range(2)
    ports = HostPorts("127.0.0.1", (lo, hi))
    assert ports.allocate("pod-a", lo) == lo
    assert ports.allocate("pod-a", lo) == lo  # idempotent for the owner
    with pytest.raises(PortInUse, match="held by another pod"):
        ports.allocate("pod-b", lo)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        other = s.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{other} is already in use"):
            ports.allocate("pod-b", other)


def test_adopted_ports_are_not_handed_out_again():
    """Ports read back from running containers after a restart count as held."""
    lo, hi = _range(20)
    ports = HostPorts("127.0.0.1", (lo, hi))
    ports.adopt("pod-a", [lo])
    assert ports.allocate("pod-b") != lo  # (lo + 1 unless another process holds it)
    assert ports.held("pod-a") == [lo]


def test_invalid_range_is_refused():
    with pytest.raises(ValueError, match="invalid host port range"):
        HostPorts("127.0.0.1", (5000, 4000))
