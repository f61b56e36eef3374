"""Strategies of the core/v1 kinds: Namespace, Node, Pod, Service, Endpoints, Event.

The Pod spec checks here are reused for the pod templates of Deployments and
ReplicaSets (``workloads.py``). Rules follow Kubernetes' validation for the fields this
system uses (containers, ports, env, resources, probes, volumes, scheduling hints);
fields it does not know are kept as given, as a newer client's fields would be.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from control.api import validation as v
from control.api.kinds.base import Strategy
from control.api.validation import FieldErrors

PROTOCOLS = ("TCP", "UDP", "SCTP")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
# Fields of a Pod's spec that may change after creation (Kubernetes' list, narrowed).
_POD_MUTABLE = ("activeDeadlineSeconds", "tolerations")


class NamespaceStrategy(Strategy):
    name_rule = "label"

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"phase": "Active"}


class NodeStrategy(Strategy):
    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = v.mapping(obj, "spec", "spec", errs) or {}
        v.boolean(spec, "unschedulable", "spec.unschedulable", errs)
        for i, taint in enumerate(v.sequence(spec, "taints", "spec.taints", errs)):
            p = f"spec.taints[{i}]"
            key = v.string(taint, "key", f"{p}.key", errs, required=True)
            if key:
                v.qualified_name(key, f"{p}.key", errs)
            v.string(taint, "value", f"{p}.value", errs)
            if not isinstance(taint, dict) or not taint.get("effect"):
                errs.required(f"{p}.effect")
            else:
                v.enum(taint, "effect", f"{p}.effect", errs, TAINT_EFFECTS)
        self.validate_status(obj, errs)

    def validate_status(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        status = v.mapping(obj, "status", "status", errs) or {}
        v.resource_list(status, "capacity", "status.capacity", errs)
        v.resource_list(status, "allocatable", "status.allocatable", errs)
        _conditions(status, "status.conditions", errs)
        for i, addr in enumerate(v.sequence(status, "addresses", "status.addresses", errs)):
            v.string(addr, "type", f"status.addresses[{i}].type", errs, required=True)
            v.string(addr, "address", f"status.addresses[{i}].address", errs, required=True)

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        # Nodes register with their status (capacity, addresses): keep what is sent.
        status = obj.get("status")
        return status if isinstance(status, dict) else {}


def _conditions(obj: dict[str, Any], path: str, errs: FieldErrors) -> None:
    seen: set[str] = set()
    for i, cond in enumerate(v.sequence(obj, "conditions", path, errs)):
        p = f"{path}[{i}]"
        t = v.string(cond, "type", f"{p}.type", errs, required=True)
        v.enum(cond, "status", f"{p}.status", errs, ("True", "False", "Unknown"))
        if isinstance(cond, dict) and not cond.get("status"):
            errs.required(f"{p}.status")
        if t in seen:
            errs.duplicate(f"{p}.type", t)
        if t:
            seen.add(t)


# -- pods ------------------------------------------------------------------------------------

def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or ():
            if not isinstance(c, dict):
                continue
            image = c.get("image")
            if "imagePullPolicy" not in c and isinstance(image, str):
                tag = image.rsplit("/", 1)[-1]
                latest = ":" not in tag or tag.endswith(":latest")
                c["imagePullPolicy"] = "Always" if latest and "@" not in tag else "IfNotPresent"
            for port in c.get("ports") or ():
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
            for probe_key in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(probe_key)
                if isinstance(probe, dict):
                    probe.setdefault("periodSeconds", 10)
                    probe.setdefault("timeoutSeconds", 1)
                    probe.setdefault("successThreshold", 1)
                    probe.setdefault("failureThreshold", 3)
                    if isinstance(probe.get("httpGet"), dict):
                        probe["httpGet"].setdefault("path", "/")
                        probe["httpGet"].setdefault("scheme", "HTTP")


def validate_pod_spec(spec: dict[str, Any] | None, path: str, errs: FieldErrors) -> None:
    if spec is None:
        errs.required(path)
        return
    containers = v.sequence(spec, "containers", f"{path}.containers", errs, required=True)
    names: set[str] = set()
    host_ports: set[tuple[int, str]] = set()
    for key in ("initContainers", "containers"):
        items = containers if key == "containers" else v.sequence(spec, key, f"{path}.{key}",
                                                                 errs)
        for i, c in enumerate(items):
            _container(c, f"{path}.{key}[{i}]", errs, names, host_ports)
    v.enum(spec, "restartPolicy", f"{path}.restartPolicy", errs, RESTART_POLICIES)
    v.integer(spec, "terminationGracePeriodSeconds", f"{path}.terminationGracePeriodSeconds",
              errs, minimum=0)
    v.integer(spec, "activeDeadlineSeconds", f"{path}.activeDeadlineSeconds", errs, minimum=1)
    node = v.string(spec, "nodeName", f"{path}.nodeName", errs)
    if node:
        v.dns_subdomain(node, f"{path}.nodeName", errs)
    v.labels(spec, "nodeSelector", f"{path}.nodeSelector", errs)
    for i, tol in enumerate(v.sequence(spec, "tolerations", f"{path}.tolerations", errs)):
        p = f"{path}.tolerations[{i}]"
        op = v.enum(tol, "operator", f"{p}.operator", errs, ("Exists", "Equal"))
        if op == "Exists" and isinstance(tol, dict) and tol.get("value"):
            errs.invalid(f"{p}.operator", op, "value must be empty when `operator` is "
                                              "'Exists'")
        if isinstance(tol, dict) and tol.get("effect"):
            v.enum(tol, "effect", f"{p}.effect", errs, TAINT_EFFECTS)
        v.integer(tol, "tolerationSeconds", f"{p}.tolerationSeconds", errs)
    vol_names: set[str] = set()
    for i, vol in enumerate(v.sequence(spec, "volumes", f"{path}.volumes", errs)):
        p = f"{path}.volumes[{i}]"
        name = v.string(vol, "name", f"{p}.name", errs, required=True)
        if name:
            v.dns_label(name, f"{p}.name", errs)
            if name in vol_names:
                errs.duplicate(f"{p}.name", name)
            vol_names.add(name)
        sources = [k for k in ("emptyDir", "hostPath", "configMap", "secret")
                   if isinstance(vol, dict) and k in vol]
        if len(sources) != 1:
            errs.invalid(p, name or "", "must specify exactly one of emptyDir, hostPath")
        if isinstance(vol, dict) and isinstance(vol.get("hostPath"), dict):
            v.string(vol["hostPath"], "path", f"{p}.hostPath.path", errs, required=True)
    for c_key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(c_key) or ()):
            for j, m in enumerate((c.get("volumeMounts") or ()) if isinstance(c, dict)
                                  else ()):
                p = f"{path}.{c_key}[{i}].volumeMounts[{j}]"
                mname = v.string(m, "name", f"{p}.name", errs, required=True)
                if mname and mname not in vol_names:
                    errs.invalid(f"{p}.name", mname, "not found in the pod's volumes")
                v.string(m, "mountPath", f"{p}.mountPath", errs, required=True)


def _container(c: Any, p: str, errs: FieldErrors, names: set[str],
               host_ports: set[tuple[int, str]]) -> None:
    if not isinstance(c, dict):
        errs.invalid(p, c, "must be an object")
        return
    name = v.string(c, "name", f"{p}.name", errs, required=True)
    if name:
        v.dns_label(name, f"{p}.name", errs)
        if name in names:
            errs.duplicate(f"{p}.name", name)
        names.add(name)
    v.string(c, "image", f"{p}.image", errs, required=True)
    v.enum(c, "imagePullPolicy", f"{p}.imagePullPolicy", errs, PULL_POLICIES)
    for key in ("command", "args"):
        for j, arg in enumerate(v.sequence(c, key, f"{p}.{key}", errs)):
            if not isinstance(arg, str):
                errs.invalid(f"{p}.{key}[{j}]", arg, "must be a string")
    port_names: set[str] = set()
    for j, port in enumerate(v.sequence(c, "ports", f"{p}.ports", errs)):
        pp = f"{p}.ports[{j}]"
        if not isinstance(port, dict):
            errs.invalid(pp, port, "must be an object")
            continue
        if "containerPort" not in port:
            errs.required(f"{pp}.containerPort")
        else:
            v.port_number(port["containerPort"], f"{pp}.containerPort", errs)
        proto = v.enum(port, "protocol", f"{pp}.protocol", errs, PROTOCOLS) or "TCP"
        if port.get("hostPort") not in (None, 0):
            v.port_number(port["hostPort"], f"{pp}.hostPort", errs)
            hp = (port["hostPort"], proto)
            if hp in host_ports:
                errs.duplicate(f"{pp}.hostPort", f"{hp[0]}/{hp[1]}")
            host_ports.add(hp)
        pname = v.string(port, "name", f"{pp}.name", errs)
        if pname:
            v.int_or_string_port(pname, f"{pp}.name", errs)
            if pname in port_names:
                errs.duplicate(f"{pp}.name", pname)
            port_names.add(pname)
    for j, env in enumerate(v.sequence(c, "env", f"{p}.env", errs)):
        ename = v.string(env, "name", f"{p}.env[{j}].name", errs, required=True)
        if ename:
            v.env_name(ename, f"{p}.env[{j}].name", errs)
        v.string(env, "value", f"{p}.env[{j}].value", errs)
    res = v.mapping(c, "resources", f"{p}.resources", errs) or {}
    v.resource_list(res, "requests", f"{p}.resources.requests", errs)
    v.resource_list(res, "limits", f"{p}.resources.limits", errs)
    for probe_key in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(c, probe_key, f"{p}.{probe_key}", errs)
    lifecycle = v.mapping(c, "lifecycle", f"{p}.lifecycle", errs) or {}
    for hook in ("postStart", "preStop"):
        _lifecycle_handler(lifecycle, hook, f"{p}.lifecycle.{hook}", errs)


def _lifecycle_handler(lifecycle: dict[str, Any], key: str, p: str,
                       errs: FieldErrors) -> None:
    """Kubernetes' LifecycleHandler: exactly one of exec, httpGet, sleep, tcpSocket."""
    handler = v.mapping(lifecycle, key, p, errs)
    if handler is None:
        return
    actions = [h for h in ("exec", "httpGet", "sleep", "tcpSocket") if h in handler]
    if len(actions) != 1:
        errs.required(p, "must specify exactly one of exec, httpGet, sleep, tcpSocket")
        return
    if "sleep" in handler:
        sleep = v.mapping(handler, "sleep", f"{p}.sleep", errs) or {}
        if "seconds" not in sleep:
            errs.required(f"{p}.sleep.seconds")
        v.integer(sleep, "seconds", f"{p}.sleep.seconds", errs, minimum=0)
    if "exec" in handler:
        v.sequence(handler["exec"], "command", f"{p}.exec.command", errs, required=True)
    if isinstance(handler.get("httpGet"), dict):
        if "port" not in handler["httpGet"]:
            errs.required(f"{p}.httpGet.port")
        else:
            v.int_or_string_port(handler["httpGet"]["port"], f"{p}.httpGet.port", errs)


def _probe(c: dict[str, Any], key: str, p: str, errs: FieldErrors) -> None:
    probe = v.mapping(c, key, p, errs)
    if probe is None:
        return
    handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe]
    if len(handlers) != 1:
        errs.required(p, "must specify exactly one of httpGet, tcpSocket, exec")
    if isinstance(probe.get("httpGet"), dict):
        hg = probe["httpGet"]
        if "port" not in hg:
            errs.required(f"{p}.httpGet.port")
        else:
            v.int_or_string_port(hg["port"], f"{p}.httpGet.port", errs)
        v.enum(hg, "scheme", f"{p}.httpGet.scheme", errs, ("HTTP", "HTTPS"))
    if isinstance(probe.get("tcpSocket"), dict):
        if "port" not in probe["tcpSocket"]:
            errs.required(f"{p}.tcpSocket.port")
        else:
            v.int_or_string_port(probe["tcpSocket"]["port"], f"{p}.tcpSocket.port", errs)
    if "exec" in probe:
        v.sequence(probe["exec"], "command", f"{p}.exec.command", errs, required=True)
    for f, lo in (("initialDelaySeconds", 0), ("periodSeconds", 1), ("timeoutSeconds", 1),
                  ("successThreshold", 1), ("failureThreshold", 1)):
        v.integer(probe, f, f"{p}.{f}", errs, minimum=lo)
    if key in ("livenessProbe", "startupProbe") and probe.get("successThreshold", 1) != 1:
        errs.invalid(f"{p}.successThreshold", probe.get("successThreshold"), "must be 1")


class PodStrategy(Strategy):
    def default(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("spec"), dict):
            default_pod_spec(obj["spec"])

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        validate_pod_spec(v.mapping(obj, "spec", "spec", errs, required=True), "spec", errs)

    def validate_update(self, new: dict[str, Any], old: dict[str, Any],
                        errs: FieldErrors) -> None:
        a, b = dict(new.get("spec") or {}), dict(old.get("spec") or {})
        for key in _POD_MUTABLE:
            a.pop(key, None)
            b.pop(key, None)
        # Container images may change in place (Kubernetes allows it); nothing else.
        for spec in (a, b):
            for key in ("containers", "initContainers"):
                if isinstance(spec.get(key), list):
                    spec[key] = [{k: x for k, x in c.items() if k != "image"}
                                 if isinstance(c, dict) else c for c in spec[key]]
        if a != b:
            errs.forbidden("spec", "pod updates may not change fields other than "
                                   "`spec.containers[*].image`, `spec.initContainers[*]"
                                   ".image`, `spec.activeDeadlineSeconds` or "
                                   "`spec.tolerations`; `spec.nodeName` is set through the "
                                   "binding subresource")

    def validate_status(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        status = v.mapping(obj, "status", "status", errs) or {}
        v.enum(status, "phase", "status.phase", errs, POD_PHASES)
        _conditions(status, "status.conditions", errs)
        for key in ("podIP", "hostIP"):
            ip = v.string(status, key, f"status.{key}", errs)
            if ip:
                _ip(ip, f"status.{key}", errs)

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"phase": "Pending"}

    def deletion_grace(self, obj: dict[str, Any], requested: int | None) -> int:
        """Kubernetes' pod rule: a Pod bound to a node stays (Terminating) until that
        node's agent has stopped its containers and deletes it with grace 0; the wait is
        the request's ``gracePeriodSeconds``, else ``spec.terminationGracePeriodSeconds``.
        A Pod no agent runs (unbound) or one whose containers have all finished goes at
        once."""
        spec = obj.get("spec") or {}
        if not spec.get("nodeName"):
            return 0
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return requested
        return int(spec.get("terminationGracePeriodSeconds", 30))


def _ip(value: str, path: str, errs: FieldErrors) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        errs.invalid(path, value, "must be a valid IP address")


# -- services, endpoints, events -------------------------------------------------------------

class ServiceStrategy(Strategy):
    name_rule = "label"

    def default(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or ():
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "targetPort" not in port and "port" in port:
                    port["targetPort"] = port["port"]

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        spec = v.mapping(obj, "spec", "spec", errs, required=True) or {}
        svc_type = v.enum(spec, "type", "spec.type", errs,
                          ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"))
        ports = v.sequence(spec, "ports", "spec.ports", errs,
                           required=svc_type != "ExternalName")
        seen_names: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for i, port in enumerate(ports):
            p = f"spec.ports[{i}]"
            if not isinstance(port, dict):
                errs.invalid(p, port, "must be an object")
                continue
            if "port" not in port:
                errs.required(f"{p}.port")
            else:
                v.port_number(port["port"], f"{p}.port", errs)
            proto = v.enum(port, "protocol", f"{p}.protocol", errs, PROTOCOLS)
            if isinstance(port.get("port"), int):
                if (port["port"], proto or "") in seen_ports:
                    errs.duplicate(p, f"{port['port']}/{proto}")
                seen_ports.add((port["port"], proto or ""))
            if "targetPort" in port:
                v.int_or_string_port(port["targetPort"], f"{p}.targetPort", errs)
            name = v.string(port, "name", f"{p}.name", errs)
            if len(ports) > 1 and not name:
                errs.required(f"{p}.name", "must be given when there is more than one port")
            if name:
                v.dns_label(name, f"{p}.name", errs)
                if name in seen_names:
                    errs.duplicate(f"{p}.name", name)
                seen_names.add(name)
            if port.get("nodePort") not in (None, 0):
                v.port_number(port["nodePort"], f"{p}.nodePort", errs)
        v.labels(spec, "selector", "spec.selector", errs)
        v.enum(spec, "sessionAffinity", "spec.sessionAffinity", errs, ("None", "ClientIP"))
        cip = v.string(spec, "clusterIP", "spec.clusterIP", errs)
        if cip and cip != "None":
            _ip(cip, "spec.clusterIP", errs)

    def validate_update(self, new: dict[str, Any], old: dict[str, Any],
                        errs: FieldErrors) -> None:
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and (new.get("spec") or {}).get("clusterIP", old_ip) != old_ip:
            errs.invalid("spec.clusterIP", new["spec"].get("clusterIP"),
                         "field is immutable")


class EndpointsStrategy(Strategy):
    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        for i, subset in enumerate(v.sequence(obj, "subsets", "subsets", errs)):
            p = f"subsets[{i}]"
            for key in ("addresses", "notReadyAddresses"):
                for j, addr in enumerate(v.sequence(subset, key, f"{p}.{key}", errs)):
                    ip = v.string(addr, "ip", f"{p}.{key}[{j}].ip", errs, required=True)
                    if ip:
                        _ip(ip, f"{p}.{key}[{j}].ip", errs)
                    v.string(addr, "nodeName", f"{p}.{key}[{j}].nodeName", errs)
            for j, port in enumerate(v.sequence(subset, "ports", f"{p}.ports", errs)):
                if not isinstance(port, dict) or "port" not in port:
                    errs.required(f"{p}.ports[{j}].port")
                    continue
                v.port_number(port["port"], f"{p}.ports[{j}].port", errs)
                v.enum(port, "protocol", f"{p}.ports[{j}].protocol", errs, PROTOCOLS,
                       default="TCP")
                v.string(port, "name", f"{p}.ports[{j}].name", errs)

    def initial_status(self, obj: dict[str, Any]) -> None:
        return None


class EventStrategy(Strategy):
    def default(self, obj: dict[str, Any]) -> None:
        obj.setdefault("type", "Normal")
        obj.setdefault("count", 1)

    def validate(self, obj: dict[str, Any], errs: FieldErrors) -> None:
        io = v.mapping(obj, "involvedObject", "involvedObject", errs, required=True) or {}
        v.string(io, "kind", "involvedObject.kind", errs, required=True)
        v.string(io, "name", "involvedObject.name", errs, required=True)
        v.string(obj, "reason", "reason", errs)
        v.string(obj, "message", "message", errs)
        v.enum(obj, "type", "type", errs, ("Normal", "Warning"))
        v.integer(obj, "count", "count", errs, minimum=1)
        ns = (obj.get("metadata") or {}).get("namespace")
        io_ns = io.get("namespace")
        if io_ns and ns and io_ns != ns:
            errs.invalid("involvedObject.namespace", io_ns,
                         "does not match event.namespace")

    def initial_status(self, obj: dict[str, Any]) -> None:
        return None
