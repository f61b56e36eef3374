"""Table printing: kubectl's columns per kind, pod STATUS logic, ages, alignment.

Pure functions of the objects and a fixed ``now``, so the output is pinned exactly.
The same tables printed by the real meshctl against a real server are in
test_cli_verbs.py.
"""

from __future__ import annotations

import time

import pytest

from control.cli import printers
from control.client.resources import lookup

NOW = 1_800_000_000.0


def ts(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (119, "119s"), (120, "2m"), (192, "3m12s"), (600, "10m"), (10799, "179m"),
    (3 * 3600 + 300, "3h5m"), (8 * 3600, "8h"), (47 * 3600, "47h"), (50 * 3600, "2d2h"),
    (8 * 86400, "8d"), (3 * 365 * 86400 + 86400 * 10, "3y10d"), (9 * 365 * 86400, "9y"),
])
def test_ages_read_like_kubectl(seconds: int, text: str) -> None:
    """human_duration follows kubectl's HumanDuration thresholds."""
    assert printers.human_duration(seconds) == text


def _pod(name: str, *, phase: str = "Running", statuses: list | None = None,
         deleting: bool = False, node: str | None = "node-1") -> dict:
    meta = {"name": name, "namespace": "shop", "creationTimestamp": ts(90)}
    if deleting:
        meta["deletionTimestamp"] = ts(1)
    return {"metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "app"}, {"name": "proxy"}]},
            "status": {"phase": phase, "podIP": "10.0.0.7", "containerStatuses": statuses or []}}


RUNNING = {"ready": True, "restartCount": 0, "state": {"running": {}}}


def test_pod_table_shows_ready_status_restarts_and_wide_columns() -> None:
    """READY counts ready running containers; STATUS takes a waiting reason
    (CrashLoopBackOff) over the phase, shows Terminating for a deleting pod and an exit
    code for a reasonless termination; RESTARTS sums containers; -o wide adds IP, NODE."""
    pods = [
        _pod("ok", statuses=[RUNNING, dict(RUNNING, restartCount=2)]),
        _pod("crash", statuses=[RUNNING, {"ready": False, "restartCount": 5, "state": {
            "waiting": {"reason": "CrashLoopBackOff"}}}]),
        _pod("bye", statuses=[RUNNING, RUNNING], deleting=True),
        _pod("done", phase="Failed", statuses=[{"state": {"terminated": {"exitCode": 3}}}]),
        _pod("new", phase="Pending", node=None),
    ]
    header, rows = printers.table_rows(lookup("pods"), pods, now=NOW)
    assert printers.render_table(header, rows) == (
        "NAME    READY   STATUS             RESTARTS   AGE\n"
        "ok      2/2     Running            2          90s\n"
        "crash   1/2     CrashLoopBackOff   5          90s\n"
        "bye     2/2     Terminating        0          90s\n"
        "done    0/2     ExitCode:3         0          90s\n"
        "new     0/2     Pending            0          90s\n")
    header, rows = printers.table_rows(lookup("pods"), pods[:1], now=NOW, wide=True,
                                       namespaces=True)
    assert header == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert rows[0] == ["shop", "ok", "2/2", "Running", "2", "90s", "10.0.0.7", "node-1"]


def test_deployment_service_node_endpoints_event_columns() -> None:
    """Each kind prints kubectl's columns from spec and status."""
    deploy = {"metadata": {"name": "web", "creationTimestamp": ts(300)},
              "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"spec": {"containers": [{"name": "w", "image": "img:1"}]}}},
              "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    _, rows = printers.table_rows(lookup("deploy"), [deploy], now=NOW, wide=True)
    assert rows == [["web", "2/3", "3", "2", "5m", "w", "img:1", "app=web"]]
    svc = {"metadata": {"name": "web", "creationTimestamp": ts(5)},
           "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "nodePort": 30443}]}}
    _, rows = printers.table_rows(lookup("svc"), [svc], now=NOW)
    assert rows == [["web", "ClusterIP", "10.96.0.10", "<none>", "80/TCP,443:30443/TCP", "5s"]]
    node = {"metadata": {"name": "n1", "creationTimestamp": ts(7200),
                         "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    _, rows = printers.table_rows(lookup("nodes"), [node], now=NOW)
    assert rows == [["n1", "NotReady,SchedulingDisabled", "control-plane", "120m", "<none>"]]
    ep = {"metadata": {"name": "web"}, "subsets": [
        {"addresses": [{"ip": f"10.0.0.{i}"} for i in range(1, 6)], "ports": [{"port": 8080}]}]}
    _, rows = printers.table_rows(lookup("endpoints"), [ep], now=NOW)
    assert rows[0][1] == "10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080 + 2 more..."
    ev = {"metadata": {"name": "e"}, "type": "Warning", "reason": "FailedScheduling",
          "involvedObject": {"kind": "Pod", "name": "web-1"}, "lastTimestamp": ts(30),
          "message": "0/3 nodes: 3 insufficient memory"}
    _, rows = printers.table_rows(lookup("events"), [ev], now=NOW)
    assert rows == [["30s", "Warning", "FailedScheduling", "pod/web-1",
                     "0/3 nodes: 3 insufficient memory"]]


def test_hpa_targets_show_current_over_target_and_unknown_kinds_get_name_age() -> None:
    """HPA TARGETS pairs status.currentMetrics with spec.metrics; a kind without a
    table prints NAME and AGE."""
    hpa = {"metadata": {"name": "web"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                    "metrics": [{"type": "Resource", "resource": {
                        "name": "cpu", "target": {"type": "Utilization",
                                                  "averageUtilization": 80}}}]},
           "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {
               "name": "cpu", "current": {"averageUtilization": 45}}}]}}
    _, rows = printers.table_rows(lookup("hpa"), [hpa], now=NOW)
    assert rows == [["web", "Deployment/web", "cpu: 45%/80%", "1", "5", "2", "<unknown>"]]
    header, _ = printers.table_rows(lookup("namespaces"), [], now=NOW)
    assert header == ["NAME", "STATUS", "AGE"]


def test_yaml_json_and_name_outputs() -> None:
    """-o json/yaml dump objects (several as a kind: List); -o name is kind.group/name."""
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    assert printers.object_name(lookup("deploy"), obj) == "deployment.apps/web"
    assert printers.object_name(lookup("svc"), obj) == "service/web"
    assert printers.dump(obj, "yaml").startswith("apiVersion: apps/v1\nkind: Deployment\n")
    listed = printers.as_list(lookup("deploy"), [obj])
    assert '"kind": "List"' in printers.dump(listed, "json")


def test_pod_ready_counts_an_injected_sidecar() -> None:
    """The agent adds the mesh sidecar to a Pod whose spec lists one container: READY
    counts the containers reported running (2/2), never more ready than total."""
    pod = _pod("meshed", statuses=[RUNNING, RUNNING])
    pod["spec"]["containers"] = [{"name": "app"}]
    _, rows = printers.table_rows(lookup("pods"), [pod], now=NOW)
    assert rows[0][1] == "2/2"
