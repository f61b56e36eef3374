"""The Node object: capacity from this machine, allocatable after reservations,
conditions from the readings with transition times that move only on a change."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from control.agent.node import NodeConditions, allocatable, node_object, read_machine
from control.quantity import bytes_value, cpu_millis

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_capacity_is_read_from_this_machine():
    """CPU count and MemTotal (from /proc/meminfo) become the Node's capacity."""
    m = read_machine("/")
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    node = node_object("n1", address="127.0.0.1", labels={"zone": "a"}, m=m, conditions=[],
                       runtime_version="process", agent_version="0.1.0")
    cap = node["status"]["capacity"]
    assert cpu_millis(cap["cpu"]) == len(os.sched_getaffinity(0)) * 1000
    assert bytes_value(cap["memory"]) == total_kib * 1024
    assert node["metadata"]["labels"]["zone"] == "a"
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}


def test_allocatable_subtracts_reservations_and_never_goes_negative():
    m = read_machine("/")
    alloc = allocatable(m, reserved_cpu_millis=500, reserved_memory=2**30)
    assert cpu_millis(alloc["cpu"]) == m.cpus * 1000 - 500
    assert bytes_value(alloc["memory"]) == max(0, m.memory_total - 2**30)
    assert allocatable(m, reserved_cpu_millis=10**9)["cpu"] == "0"


def test_conditions_report_pressure_and_keep_transition_times():
    """MemoryPressure below 100Mi available, DiskPressure below 10% free; heartbeats
    refresh lastHeartbeatTime while lastTransitionTime stays until a status flips."""
    from dataclasses import replace
    m = replace(read_machine("/"), memory_available=2**30, disk_total=100, disk_free=50)
    conds = NodeConditions()
    first = {c["type"]: c for c in conds.render(m, runtime_ok=True, runtime_message="",
                                                now=T0)}
    assert [first[k]["status"] for k in ("Ready", "MemoryPressure", "DiskPressure")] == \
        ["True", "False", "False"]
    later = T0 + timedelta(seconds=10)
    low = replace(m, memory_available=50 * 2**20, disk_free=5)
    second = {c["type"]: c for c in conds.render(low, runtime_ok=False,
                                                 runtime_message="engine down", now=later)}
    assert second["MemoryPressure"]["status"] == "True"
    assert second["DiskPressure"]["status"] == "True"
    assert second["Ready"]["status"] == "False"
    assert second["Ready"]["message"] == "engine down"
    third = {c["type"]: c for c in conds.render(low, runtime_ok=False, runtime_message="x",
                                                now=later + timedelta(seconds=10))}
    assert third["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:10Z"
    assert third["Ready"]["lastHeartbeatTime"] == "2026-01-01T00:00:20Z"
