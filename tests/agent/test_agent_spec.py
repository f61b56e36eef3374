"""parse_pod: the Pod fields the agent supports become typed objects; anything it
cannot run is refused with the path of the offending field."""

from __future__ import annotations

import pytest

from control.agent.spec import PodSpecError, expand, parse_pod


def _pod(**spec_overrides) -> dict:
    spec = {"containers": [{"name": "web", "image": "localhost/web:1",
                            "command": ["srv"], "args": ["--port", "$(PORT)"],
                            "env": [{"name": "MODE", "value": "prod"}],
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                                          "requests": {"cpu": "0.1", "memory": "32M"}},
                            "livenessProbe": {"httpGet": {"path": "/healthz",
                                                          "port": "http"},
                                              "periodSeconds": 5},
                            "readinessProbe": {"tcpSocket": {"port": 8080}},
                            "startupProbe": {"exec": {"command": ["true"]},
                                             "failureThreshold": 30}}]}
    spec.update(spec_overrides)
    return {"metadata": {"name": "p", "namespace": "shop", "uid": "u1"}, "spec": spec}


def test_supported_fields_are_parsed_with_units_and_defaults():
    """Quantities become millicores/bytes, probes keep their timing with Kubernetes'
    defaults, restartPolicy and grace period default to Always and 30 s."""
    p = parse_pod(_pod())
    c = p.containers[0]
    assert (p.key, p.restart_policy, p.termination_grace_period) == ("shop/p", "Always", 30.0)
    assert (c.cpu_limit_millis, c.memory_limit_bytes) == (500, 64 * 2**20)
    assert (c.cpu_request_millis, c.memory_request_bytes) == (100, 32_000_000)
    assert c.liveness.http_get == ("/healthz", "http")
    assert (c.liveness.period, c.liveness.timeout, c.liveness.failure_threshold) == (5, 1, 3)
    assert c.readiness.tcp_port == 8080
    assert c.startup.exec_command == ("true",)
    assert c.port_number("http") == 8080
    assert c.pull_policy == "IfNotPresent"
    assert parse_pod(_pod(containers=[{"name": "a", "image": "x:latest"}])
                     ).containers[0].pull_policy == "Always"


@pytest.mark.parametrize(("spec", "path"), [
    ({"containers": []}, "spec.containers"),
    ({"containers": [{"name": "Web", "image": "x"}]}, "spec.containers[0].name"),
    ({"containers": [{"name": "a"}]}, "spec.containers[0].image"),
    ({"containers": [{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]},
     "spec.containers[1].name"),
    ({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]},
     "spec.containers[0].ports[0].containerPort"),
    ({"containers": [{"name": "a", "image": "x",
                      "resources": {"limits": {"memory": "lots"}}}]},
     "spec.containers[0].resources.limits.memory"),
    ({"containers": [{"name": "a", "image": "x",
                      "livenessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}}]},
     "spec.containers[0].livenessProbe"),
    ({"containers": [{"name": "a", "image": "x",
                      "readinessProbe": {"tcpSocket": {"port": "nope"}}}]},
     "spec.containers[0].readinessProbe"),
    ({"containers": [{"name": "a", "image": "x",
                      "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0}}]},
     "spec.containers[0].livenessProbe.periodSeconds"),
    ({"containers": [{"name": "a", "image": "x",
                      "volumeMounts": [{"name": "missing", "mountPath": "/d"}]}]},
     "spec.containers[0].volumeMounts[0].name"),
    ({"containers": [{"name": "a", "image": "x"}], "restartPolicy": "Sometimes"},
     "spec.restartPolicy"),
    ({"containers": [{"name": "a", "image": "x"}], "terminationGracePeriodSeconds": -1},
     "spec.terminationGracePeriodSeconds"),
    ({"containers": [{"name": "a", "image": "x"}], "volumes": [{"name": "v", "nfs": {}}]},
     "spec.volumes[0]"),
    ({"containers": [{"name": "a", "image": "x", "lifecycle": {"preStop": {}}}]},
     "spec.containers[0].lifecycle.preStop"),
    ({"containers": [{"name": "a", "image": "x",
                      "lifecycle": {"preStop": {"sleep": {"seconds": -1}}}}]},
     "spec.containers[0].lifecycle.preStop.sleep.seconds"),
    ({"containers": [{"name": "a", "image": "x",
                      "lifecycle": {"preStop": {"tcpSocket": {"port": 80}}}}]},
     "spec.containers[0].lifecycle.preStop.tcpSocket"),
    ({"containers": [{"name": "a", "image": "x",
                      "lifecycle": {"preStop": {"exec": {"command": []}}}}]},
     "spec.containers[0].lifecycle.preStop.exec.command"),
])
def test_unsupported_or_invalid_fields_are_refused_with_their_path(spec, path):
    """Each bad Pod raises PodSpecError whose path names exactly the wrong field."""
    with pytest.raises(PodSpecError) as err:
        parse_pod({"metadata": {"name": "p", "uid": "u"}, "spec": spec})
    assert err.value.path == path


@pytest.mark.parametrize(("hook", "sleep", "exec_command", "http_get"), [
    ({"sleep": {"seconds": 5}}, 5.0, None, None),
    ({"exec": {"command": ["nginx", "-s", "quit"]}}, None, ("nginx", "-s", "quit"), None),
    ({"httpGet": {"path": "/drain", "port": "http"}}, None, None, ("/drain", "http")),
])
def test_prestop_hooks_are_parsed(hook, sleep, exec_command, http_get):
    """lifecycle.preStop: Kubernetes' sleep, exec and httpGet actions."""
    raw = _pod()
    raw["spec"]["containers"][0]["lifecycle"] = {"preStop": hook}
    c = parse_pod(raw).containers[0]
    assert c.pre_stop is not None
    assert c.pre_stop.sleep_seconds == sleep
    action = c.pre_stop.action
    assert (action.exec_command if action else None) == exec_command
    assert (action.http_get if action else None) == http_get
    assert parse_pod(_pod()).containers[0].pre_stop is None


def test_missing_metadata_uid_is_refused():
    """A Pod without a uid cannot be tracked across restarts: refused."""
    with pytest.raises(PodSpecError, match=r"metadata\.uid"):
        parse_pod({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x"}]}})


def test_dollar_paren_expansion_follows_kubernetes_rules():
    """$(VAR) expands from the environment, $$ escapes, unknown references stay."""
    env = {"PORT": "8080", "HOST": "h"}
    assert expand("-p $(PORT) $(HOST):$(NOPE) $$(PORT) $HOME", env) == \
        "-p 8080 h:$(NOPE) $(PORT) $HOME"
