"""The ``scale`` and ``binding`` subresources (``status`` is a mode of ``objects.py``).

``scale`` (Deployments, ReplicaSets) shows and sets ``spec.replicas`` through an
``autoscaling/v1`` ``Scale`` object: GET builds it from the owner, PUT and PATCH
(merge or strategic, as ``kubectl scale`` and the Python client send) change only
``spec.replicas`` of the owner, with its resourceVersion as the precondition when the
client gives one. ``binding`` (Pods) is how the scheduler assigns a node: it sets
``spec.nodeName`` once; binding an already bound pod is a 409.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from aiohttp import web

from control.api import validation as v
from control.api.auth import Attributes, User
from control.api.codec import json_response, read_object, read_patch
from control.api.errors import ApiError, bad_request, conflict, invalid
from control.api.patch import PatchError, apply_patch
from control.api.resources import by_path
from control.api.selectors import LabelSelector
from control.api.storage import parse_resource_version
from control.api.validation import FieldErrors

if TYPE_CHECKING:
    from control.api.handlers import Api

PODS = by_path("", "v1", "pods")


def to_scale(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj["metadata"]
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    selector = spec.get("selector") or {}
    try:
        sel = LabelSelector.from_object(selector)
        text = ",".join(
            f"{r.key}={next(iter(r.values))}" if r.op == "=" else
            f"{r.key} {r.op} ({','.join(sorted(r.values))})" if r.op in ("in", "notin") else
            (r.key if r.op == "exists" else f"!{r.key}")
            for r in sel.requirements)
    except ValueError:
        text = ""
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                            "creationTimestamp") if k in md},
            "spec": {"replicas": spec.get("replicas", 0)},
            "status": {"replicas": status.get("replicas", 0), "selector": text}}


async def handle(request: web.Request, api: Api, attrs: Attributes, user: User,
                 namespace: str | None, name: str) -> web.StreamResponse:
    if attrs.subresource == "binding":
        body = await read_object(request, api.body_limit)
        return json_response(await bind(api, namespace, name, body), 201)
    res = attrs.resource
    objects = api.objects
    if attrs.verb == "get":
        obj, _ = await objects.storage.get(res, namespace, name)
        return json_response(to_scale(obj))
    if attrs.verb == "update":
        scale = await read_object(request, api.body_limit)
    elif attrs.verb == "patch":
        kind, patch = await read_patch(request, api.body_limit)
        current, _ = await objects.storage.get(res, namespace, name)
        try:
            scale = apply_patch(kind, to_scale(current), patch)
        except PatchError as e:
            raise ApiError(422, "Invalid", f"the patch cannot be applied: {e}") from None
        if (scale.get("metadata") or {}).get("resourceVersion") == \
                current["metadata"]["resourceVersion"]:
            scale["metadata"].pop("resourceVersion")  # not a precondition the client set
    else:
        raise ApiError(405, "MethodNotAllowed", f"scale does not support {attrs.verb}")
    if scale.get("kind") not in (None, "Scale"):
        raise bad_request(f"the body must be a Scale, not {scale.get('kind')!r}")
    errs = FieldErrors()
    spec = v.mapping(scale, "spec", "spec", errs, required=True) or {}
    replicas = v.integer(spec, "replicas", "spec.replicas", errs, required=True, minimum=0)
    if errs:
        raise invalid("Scale", name, "autoscaling", errs.causes)
    md = scale.get("metadata") if isinstance(scale.get("metadata"), dict) else {}
    if md.get("name") not in (None, "", name):
        raise bad_request(f"the name of the Scale ({md.get('name')!r}) does not match the "
                          f"request ({name!r})")
    precondition = parse_resource_version(md.get("resourceVersion"),
                                          field="metadata.resourceVersion")
    patch: dict[str, Any] = {"spec": {"replicas": replicas}}
    if precondition is not None:
        patch["metadata"] = {"resourceVersion": str(precondition)}
    updated = await objects.patch(res, namespace, name, "merge", patch)
    return json_response(to_scale(updated))


async def bind(api: Api, namespace: str | None, name: str, body: dict[str, Any]
               ) -> dict[str, Any]:
    """Set a pending pod's ``spec.nodeName`` from a ``Binding``."""
    errs = FieldErrors()
    target = v.mapping(body, "target", "target", errs, required=True) or {}
    node = v.string(target, "name", "target.name", errs, required=True)
    if node:
        v.dns_subdomain(node, "target.name", errs)
    if target.get("kind") not in (None, "", "Node"):
        errs.not_supported("target.kind", target.get("kind"), ("Node",))
    md = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    if md.get("name") not in (None, "", name):
        errs.invalid("metadata.name", md.get("name"), "must match the pod's name")
    if errs:
        raise invalid("Binding", name, "", errs.causes)
    pods = api.objects.storage
    res = PODS
    pod, kv = await pods.get(res, namespace, name)
    if md.get("uid") and md["uid"] != pod["metadata"]["uid"]:
        raise conflict("pods", name, "", why="the pod's UID does not match the binding")
    bound = (pod.get("spec") or {}).get("nodeName")
    if bound:
        raise conflict("pods", name, "", why=f"pod {name} is already assigned to node "
                                             f"{bound!r}")
    if pod["metadata"].get("deletionTimestamp"):
        raise conflict("pods", name, "", why="the pod is being deleted")
    new = copy.deepcopy(pod)
    new["spec"]["nodeName"] = node
    await pods.update(res, new, expected=kv.mod_revision)
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "code": 201}
