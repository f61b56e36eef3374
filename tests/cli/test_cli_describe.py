"""describe's rendering as a pure function of an object and its Events (the verb itself
runs against the real server in test_cli_verbs.py)."""

from __future__ import annotations

import re
import time

from control.cli.describe import describe
from control.client.manifests import LAST_APPLIED
from control.client.resources import lookup

NOW = 1_800_000_000.0


def ts(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


def test_pod_description_has_containers_conditions_owner_and_counted_events() -> None:
    """A Pod shows node, kubectl's STATUS, each container's image, ports, state, ready
    and restarts, the conditions table and its controller; the last-applied annotation
    is hidden; repeated Events show their count; fields without a summary line are kept
    in the Spec tree."""
    pod = {"metadata": {"name": "web-1", "namespace": "shop", "creationTimestamp": ts(60),
                        "labels": {"app": "web", "tier": "front"},
                        "annotations": {LAST_APPLIED: "{}", "team": "blue"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc",
                                             "controller": True, "uid": "u"}]},
           "spec": {"nodeName": "node-a", "restartPolicy": "Always",
                    "containers": [{"name": "app", "image": "busybox",
                                    "ports": [{"containerPort": 8080}]}]},
           "status": {"phase": "Running", "podIP": "127.0.0.1",
                      "conditions": [{"type": "Ready", "status": "False",
                                      "reason": "ContainersNotReady"}],
                      "containerStatuses": [{
                          "name": "app", "ready": False, "restartCount": 4,
                          "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    events = [{"type": "Warning", "reason": "BackOff", "count": 7, "lastTimestamp": ts(5),
               "source": {"component": "agent"},
               "message": "Back-off restarting failed container app"}]
    out = describe(lookup("pods"), pod, events=events, now=NOW)
    assert re.search(r"^Labels:\s+app=web\n\s{20}tier=front$", out, re.M)
    assert re.search(r"^Annotations:\s+team=blue$", out, re.M)
    assert re.search(r"^Controlled By:\s+ReplicaSet/web-abc$", out, re.M)
    assert re.search(r"^Status:\s+CrashLoopBackOff$", out, re.M)
    assert re.search(r"^    Ports:\s+8080/TCP$", out, re.M)
    assert re.search(r"^    State:\s+Waiting \(reason=CrashLoopBackOff\)$", out, re.M)
    assert re.search(r"^    Restart Count:\s+4$", out, re.M)
    assert re.search(r"^  Ready\s+False\s+ContainersNotReady$", out, re.M)
    assert re.search(r"^Spec:\n  restartPolicy:  Always$", out, re.M)
    assert re.search(r"^  Warning\s+BackOff\s+5s \(x7\)\s+agent\s+Back-off restarting", out,
                     re.M)
    assert "{}" not in out


def test_hpa_description_shows_current_against_target_per_metric() -> None:
    """An HPA shows its target reference, one line per metric with current / target
    (<unknown> before the first measurement), replica bounds and counts."""
    hpa = {"metadata": {"name": "web", "namespace": "shop"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"},
                    "minReplicas": 2, "maxReplicas": 10,
                    "metrics": [
                        {"type": "Resource", "resource": {"name": "cpu", "target": {
                            "type": "Utilization", "averageUtilization": 60}}},
                        {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": "100"}}}]},
           "status": {"currentReplicas": 3, "desiredReplicas": 4, "currentMetrics": [
               {"type": "Resource", "resource": {"name": "cpu", "current": {
                   "averageUtilization": 85}}}]}}
    out = describe(lookup("hpa"), hpa, events=[], now=NOW)
    assert re.search(r"^Reference:\s+Deployment/web$", out, re.M)
    assert re.search(r"^  cpu:\s+85% / 60%$", out, re.M)
    assert re.search(r"^  requests_per_second:\s+<unknown> / 100$", out, re.M)
    assert re.search(r"^Replicas:\s+3 current / 4 desired$", out, re.M)
    assert "Spec:" not in out, "every spec field is in the summary"
