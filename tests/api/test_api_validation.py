"""Per-kind defaults and validation (the strategies), without a server: each rule
names the field it refuses."""

from __future__ import annotations

import copy

import pytest

from control.api.kinds import strategy_for
from control.api.resources import by_path
from control.api.validation import FieldErrors, metadata


def check(plural: str, obj: dict, group: str = "", version: str = "v1",
          old: dict | None = None) -> list[str]:
    res = by_path(group, version, plural)
    strategy = strategy_for(res)
    obj = copy.deepcopy(obj)
    strategy.default(obj)
    errs = FieldErrors()
    metadata(obj, errs, namespaced=res.namespaced, name_rule=strategy.name_rule)
    strategy.validate(obj, errs)
    if old is not None:
        old = copy.deepcopy(old)
        strategy.default(old)
        strategy.validate_update(obj, old, errs)
    return [c["field"] for c in errs.causes]


def pod_spec(**extra) -> dict:
    return {"containers": [{"name": "app", "image": "img:1"}], **extra}


def test_valid_pod_has_no_errors():
    assert check("pods", {"metadata": {"name": "p", "labels": {"app": "web"}},
                          "spec": pod_spec()}) == []


@pytest.mark.parametrize(("spec", "field"), [
    ({"containers": []}, "spec.containers"),
    (pod_spec(restartPolicy="Sometimes"), "spec.restartPolicy"),
    ({"containers": [{"name": "a", "image": "i"}, {"name": "a", "image": "i"}]},
     "spec.containers[1].name"),
    ({"containers": [{"name": "a", "image": "i", "resources": {"limits": {"memory": "lots"}}}]},
     "spec.containers[0].resources.limits[memory]"),
    ({"containers": [{"name": "a", "image": "i", "env": [{"name": "1BAD"}]}]},
     "spec.containers[0].env[0].name"),
    ({"containers": [{"name": "a", "image": "i", "livenessProbe": {"periodSeconds": 5}}]},
     "spec.containers[0].livenessProbe"),
    ({"containers": [{"name": "a", "image": "i",
                      "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]},
     "spec.containers[0].volumeMounts[0].name"),
    (pod_spec(terminationGracePeriodSeconds=-1), "spec.terminationGracePeriodSeconds"),
    ({"containers": [{"name": "a", "image": "i", "lifecycle": {"preStop": {}}}]},
     "spec.containers[0].lifecycle.preStop"),
    ({"containers": [{"name": "a", "image": "i",
                      "lifecycle": {"preStop": {"sleep": {"seconds": -2}}}}]},
     "spec.containers[0].lifecycle.preStop.sleep.seconds"),
    ({"containers": [{"name": "a", "image": "i", "lifecycle": {"preStop": {"sleep": {}}}}]},
     "spec.containers[0].lifecycle.preStop.sleep.seconds"),
    ({"containers": [{"name": "a", "image": "i",
                      "lifecycle": {"postStart": {"exec": {"command": []}}}}]},
     "spec.containers[0].lifecycle.postStart.exec.command"),
    ({"containers": [{"name": "a", "image": "i",
                      "lifecycle": {"preStop": {"httpGet": {"path": "/x"}}}}]},
     "spec.containers[0].lifecycle.preStop.httpGet.port"),
])
def test_pod_spec_rules(spec, field):
    assert field in check("pods", {"metadata": {"name": "p"}, "spec": spec})


def test_prestop_hooks_as_kubernetes_writes_them_are_accepted():
    """lifecycle.preStop with sleep, exec or httpGet validates clean."""
    for hook in ({"sleep": {"seconds": 5}}, {"exec": {"command": ["sh", "-c", "true"]}},
                 {"httpGet": {"path": "/drain", "port": 8080}}):
        spec = {"containers": [{"name": "a", "image": "i", "lifecycle": {"preStop": hook}}]}
        assert check("pods", {"metadata": {"name": "p"}, "spec": spec}) == []


def test_pod_defaults_probes_and_pull_policy():
    res = by_path("", "v1", "pods")
    obj = {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "img", "readinessProbe": {"httpGet": {"port": 80}}}]}}
    strategy_for(res).default(obj)
    c = obj["spec"]["containers"][0]
    assert c["imagePullPolicy"] == "Always"  # no tag means latest
    assert c["readinessProbe"] == {"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                                   "periodSeconds": 10, "timeoutSeconds": 1,
                                   "successThreshold": 1, "failureThreshold": 3}


def test_pod_spec_is_immutable_except_images():
    old = {"metadata": {"name": "p"}, "spec": pod_spec()}
    new_image = copy.deepcopy(old)
    new_image["spec"]["containers"][0]["image"] = "img:2"
    assert check("pods", new_image, old=old) == []
    moved = copy.deepcopy(old)
    moved["spec"]["nodeName"] = "n1"
    assert check("pods", moved, old=old) == ["spec"]


def deployment(**spec_changes) -> dict:
    spec = {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()}}
    spec.update(spec_changes)
    return {"metadata": {"name": "web"}, "spec": spec}


def test_deployment_defaults():
    res = by_path("apps", "v1", "deployments")
    obj = deployment()
    strategy_for(res).default(obj)
    assert obj["spec"]["replicas"] == 1
    assert obj["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": "25%", "maxUnavailable": "25%"}}
    assert obj["spec"]["revisionHistoryLimit"] == 10


@pytest.mark.parametrize(("changes", "field"), [
    ({"replicas": -1}, "spec.replicas"),
    ({"selector": {}}, "spec.selector"),
    ({"selector": {"matchLabels": {"app": "db"}}}, "spec.template.metadata.labels"),
    ({"strategy": {"type": "Blue"}}, "spec.strategy.type"),
    ({"strategy": {"type": "RollingUpdate",
                   "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}},
     "spec.strategy.rollingUpdate.maxUnavailable"),
    ({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots"}}},
     "spec.strategy.rollingUpdate.maxSurge"),
    ({"template": {"metadata": {"labels": {"app": "web"}},
                   "spec": pod_spec(restartPolicy="Never")}},
     "spec.template.spec.restartPolicy"),
])
def test_deployment_rules(changes, field):
    assert field in check("deployments", deployment(**changes), group="apps")


def test_deployment_selector_is_immutable():
    old = deployment()
    new = deployment(selector={"matchLabels": {"app": "web", "v": "2"}})
    new["spec"]["template"]["metadata"]["labels"]["v"] = "2"
    assert check("deployments", new, group="apps", old=old) == ["spec.selector"]


@pytest.mark.parametrize(("spec", "field"), [
    ({"ports": []}, "spec.ports"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"port": 80, "targetPort": "this-is-far-too-long"}]},
     "spec.ports[0].targetPort"),
    ({"ports": [{"port": 80}], "type": "Magic"}, "spec.type"),
])
def test_service_rules(spec, field):
    assert field in check("services", {"metadata": {"name": "s"}, "spec": spec})


def test_service_defaults_target_port():
    res = by_path("", "v1", "services")
    obj = {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
    strategy_for(res).default(obj)
    assert obj["spec"] == {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                           "type": "ClusterIP", "sessionAffinity": "None"}


def test_endpoints_need_ip_addresses():
    fields = check("endpoints", {"metadata": {"name": "e"}, "subsets": [
        {"addresses": [{"ip": "10.0.0.1"}, {"ip": "not-an-ip"}], "ports": [{"port": 80}]}]})
    assert fields == ["subsets[0].addresses[1].ip"]


def hpa(**spec) -> dict:
    base = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 5}
    base.update(spec)
    return {"metadata": {"name": "web"}, "spec": base}


def test_hpa_defaults_to_cpu_80_percent():
    res = by_path("autoscaling", "v2", "horizontalpodautoscalers")
    obj = hpa()
    strategy_for(res).default(obj)
    assert obj["spec"]["minReplicas"] == 1
    assert obj["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]


@pytest.mark.parametrize(("spec", "field"), [
    ({"minReplicas": 6}, "spec.maxReplicas"),
    ({"maxReplicas": None}, "spec.maxReplicas"),
    ({"scaleTargetRef": {"kind": "Deployment"}}, "spec.scaleTargetRef.name"),
    ({"metrics": [{"type": "Pods", "pods": {"metric": {"name": "rps"},
                                            "target": {"type": "Utilization",
                                                       "averageUtilization": 50}}}]},
     "spec.metrics[0].pods.target.type"),
    ({"metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                    "target": {"type": "AverageValue"}}}]},
     "spec.metrics[0].resource.target.averageValue"),
    ({"behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 4,
                                             "periodSeconds": 4000}]}}},
     "spec.behavior.scaleUp.policies[0].periodSeconds"),
])
def test_hpa_rules(spec, field):
    assert field in check("horizontalpodautoscalers", hpa(**spec), group="autoscaling",
                          version="v2")


def test_traffic_policy_with_the_proxy_groups_is_accepted():
    spec = {"service": "web", "cluster": {"lb_policy": "least_request"}, "route": {}}
    assert check("trafficpolicies", {"metadata": {"name": "p"}, "spec": spec},
                 group="mesh.io", version="v1alpha1") == []


@pytest.mark.parametrize(("spec", "field"), [
    ({}, "spec.service"),
    ({"service": "Not_A_Label"}, "spec.service"),
    ({"service": "web", "teleport": {}}, "spec.teleport"),
    ({"service": "web", "route": 3}, "spec.route"),
    ({"service": "web", "retries": {}}, "spec.retries"),
])
def test_traffic_policy_envelope(spec, field):
    assert field in check("trafficpolicies", {"metadata": {"name": "p"}, "spec": spec},
                          group="mesh.io", version="v1alpha1")


@pytest.mark.parametrize(("md", "field"), [
    ({"name": "ok", "labels": {"bad key!": "v"}}, "metadata.labels"),
    ({"name": "ok", "labels": {"k": "v" * 64}}, "metadata.labels[k]"),
    ({"name": "ok", "annotations": {"a": 1}}, "metadata.annotations[a]"),
    ({"name": "ok", "ownerReferences": [{"kind": "ReplicaSet", "name": "r"}]},
     "metadata.ownerReferences[0].uid"),
])
def test_metadata_rules(md, field):
    assert field in check("pods", {"metadata": md, "spec": pod_spec()})


@pytest.mark.parametrize(("spec", "field"), [
    ({"service": "web", "cluster": {"lb_policy": "fastest"}}, "spec.cluster.load_balancer"),
    ({"service": "web", "cluster": {"breaker": {"reset_timeout": -1}}},
     "spec.cluster.breaker.reset_timeout"),
    ({"service": "web", "route": {"retry": {"attempts": 0}}}, "spec.route.retry.attempts"),
    ({"service": "web", "route": {"priority": "urgent"}}, "spec.route.priority"),
    ({"service": "web", "cluster": {"no_such_knob": 1}}, "spec.cluster.no_such_knob"),
])
def test_traffic_policy_contents_are_the_proxy_schema(spec, field):
    """A TrafficPolicy is refused exactly where the proxy's ServicePolicy would refuse
    it, with the field path in the 422 cause."""
    causes = check("trafficpolicies", {"metadata": {"name": "p"}, "spec": spec},
                   group="mesh.io", version="v1alpha1")
    assert any(c.startswith(field) for c in causes), causes


def test_traffic_policy_reports_every_bad_field_not_only_the_first():
    """As Kubernetes lists every field error of an object, each bad field of each policy
    section gets its own 422 cause (the proxy schema's parse validates each part on its
    own once the whole fails), with the value found there and the reason."""
    spec = {"service": "web",
            "cluster": {"breaker": {"reset_timeout": -1}, "lb_policy": "fastest"},
            "route": {"retry": {"attempts": 0}, "priority": "urgent"},
            "degrade": {"action": {"kind": "static", "status": 99}}}
    obj = {"metadata": {"name": "p"}, "spec": spec}
    res = by_path("mesh.io", "v1alpha1", "trafficpolicies")
    errs = FieldErrors()
    strategy_for(res).validate(obj, errs)
    causes = {c["field"]: c["message"] for c in errs.causes}
    assert sorted(causes) == ["spec.cluster.breaker.reset_timeout",
                              "spec.cluster.load_balancer.policy",
                              "spec.degrade.action.status",
                              "spec.route.priority",
                              "spec.route.retry.attempts"]
    assert "-1" in causes["spec.cluster.breaker.reset_timeout"]
    assert "> 0" in causes["spec.cluster.breaker.reset_timeout"]
    assert "'round_robin'" in causes["spec.cluster.load_balancer.policy"]
