"""REST handlers: from an HTTP request to an authorized call on ``objects.py``.

One dispatcher serves every resource path, ``/api/v1/...`` and ``/apis/{g}/{v}/...``:
it parses the path into (resource, namespace, name, subresource) against
``resources.py`` (unknown resources are a 404 ``Status``), derives the verb from the
method and query (``GET`` + ``watch=true`` is ``watch``), asks the authorizer, and then
runs the verb: get, list (label/field selectors, ``limit``/``continue``), watch
(``watch.py``), create, update, patch, delete (with ``DeleteOptions``: preconditions,
``propagationPolicy``, ``gracePeriodSeconds`` in the body or the query), deletecollection,
and the ``status``, ``scale`` and ``binding`` subresources (``subresources.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from control.api import subresources
from control.api.auth import USER, Attributes, Authorizer, User
from control.api.codec import encode, json_response, read_body, read_object, read_patch
from control.api.errors import ApiError, bad_request, method_not_allowed
from control.api.objects import Objects
from control.api.resources import Resource, by_path
from control.api.selectors import FieldSelector, LabelSelector
from control.api.storage import parse_resource_version
from control.api.watch import WatchLimits, stream_watch
from control.api.watchcache import WatchCache

TRUE = ("true", "True", "1")


@dataclass(frozen=True, slots=True)
class Target:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass
class Api:
    """What the handlers need; one per server (``server.build_app`` makes it)."""

    objects: Objects
    cache: WatchCache
    authorizer: Authorizer
    body_limit: int
    watch_limits: WatchLimits


def parse_target(group: str, version: str, rest: str) -> Target:
    parts = [p for p in rest.split("/") if p] if rest else []
    ns: str | None = None
    if len(parts) >= 3 and parts[0] == "namespaces" and not group:
        if parts[2] in ("status", "finalize") and len(parts) == 3:
            res = by_path(group, version, "namespaces")
            return Target(res, None, parts[1], _sub(res, parts[2]))
        ns, parts = parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "namespaces":
        ns, parts = parts[1], parts[2:]
    if not parts or len(parts) > 3:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    res = by_path(group, version, parts[0])
    if ns is not None and not res.namespaced:
        raise ApiError(404, "NotFound", f"{res.plural} are not namespaced")
    name = parts[1] if len(parts) > 1 else None
    sub = _sub(res, parts[2]) if len(parts) > 2 else None
    return Target(res, ns, name, sub)


def _sub(res: Resource, sub: str) -> str:
    if sub not in res.subresources:
        raise ApiError(404, "NotFound", f'{res.plural} have no subresource "{sub}"')
    return sub


def _verb(method: str, target: Target, query: Any) -> str:
    if method == "GET":
        if target.name is not None:
            return "get"
        return "watch" if query.get("watch") in TRUE else "list"
    if method == "POST":
        if target.name is None or target.subresource == "binding":
            return "create"
    elif method == "PUT" and target.name is not None:
        return "update"
    elif method == "PATCH" and target.name is not None:
        return "patch"
    elif method == "DELETE":
        return "delete" if target.name is not None else "deletecollection"
    raise method_not_allowed(method, "this path")


def _selectors(res: Resource, query: Any) -> tuple[LabelSelector, FieldSelector]:
    try:
        return (LabelSelector.parse(query.get("labelSelector")),
                FieldSelector.parse(query.get("fieldSelector"), res.kind))
    except ValueError as e:
        raise bad_request(str(e)) from None


def _int_param(query: Any, key: str) -> int | None:
    value = query.get(key)
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise bad_request(f"{key} must be a non-negative integer, got {value!r}")
    return n


API = web.AppKey("api", Api)


async def handle(request: web.Request) -> web.StreamResponse:
    api = request.app[API]
    user = request[USER]
    group = request.match_info.get("group", "")
    target = parse_target(group, request.match_info["version"],
                          request.match_info.get("rest", ""))
    query = request.query
    if query.get("dryRun"):
        raise bad_request("dryRun is not supported by this server")
    verb = _verb(request.method, target, query)
    res = target.resource
    labels, fields = _selectors(res, query) if verb in ("list", "watch", "deletecollection") \
        else (None, None)
    if res.namespaced and target.namespace is None and verb not in ("list", "watch"):
        raise ApiError(404, "NotFound", f"{res.plural} are namespaced: use "
                                        f"/namespaces/{{namespace}}/{res.plural}")
    attrs = Attributes(verb, res, target.subresource, target.namespace, target.name,
                       fields)
    if verb == "create" and target.name is None and not res.namespaced:
        attrs = None  # the name is in the body: authorize after reading it
    else:
        api.authorizer.check(user, attrs)
    objects = api.objects
    ns, name = target.namespace, target.name

    if verb in ("list", "watch"):
        return await _list_or_watch(request, api, res, ns, labels, fields, verb)
    if target.subresource in ("scale", "binding"):
        assert attrs is not None
        assert name is not None
        return await subresources.handle(request, api, attrs, user, ns, name)
    if verb == "get":
        assert name is not None
        assert attrs is not None
        obj, _ = await objects.storage.get(res, ns, name)
        api.authorizer.check_object(user, attrs, obj)
        return json_response(obj)
    if verb == "create":
        body = await read_object(request, api.body_limit)
        if attrs is None:
            md = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            attrs = Attributes(verb, res, None, None, md.get("name"))
            api.authorizer.check(user, attrs)
        return json_response(await objects.create(res, ns, body), 201)
    if verb == "update":
        assert name is not None
        assert attrs is not None
        body = await read_object(request, api.body_limit)
        await _check_existing(api, user, attrs)
        return json_response(await objects.update(res, ns, name, body,
                                                  subresource=target.subresource))
    if verb == "patch":
        assert name is not None
        assert attrs is not None
        kind, patch = await read_patch(request, api.body_limit)
        await _check_existing(api, user, attrs)
        return json_response(await objects.patch(res, ns, name, kind, patch,
                                                 subresource=target.subresource))
    if verb == "delete":
        assert name is not None
        assert attrs is not None
        opts = await _delete_options(request, api)
        await _check_existing(api, user, attrs)
        obj, gone = await objects.delete(res, ns, name, **opts)
        return json_response(obj, 200 if gone else 202)
    # deletecollection
    opts = await _delete_options(request, api)
    opts.pop("precondition_rv", None)
    opts.pop("precondition_uid", None)
    items, rv, _ = await objects.storage.list(res, ns, labels=labels, fields=fields)
    deleted = []
    for item in items:
        try:
            deleted.append((await objects.delete(res, item["metadata"].get("namespace"),
                                                 item["metadata"]["name"], **opts)).obj)
        except ApiError as e:
            if e.code != 404:
                raise
    return json_response({"kind": res.list_kind, "apiVersion": res.api_version,
                          "metadata": {"resourceVersion": str(rv)}, "items": deleted})


async def _check_existing(api: Api, user: User, attrs: Attributes) -> None:
    """Object-dependent authorization (a node writing a pod's status must own it)."""
    if "admin" in user.roles or attrs.resource.plural != "pods":
        return
    assert attrs.name is not None
    obj, _ = await api.objects.storage.get(attrs.resource, attrs.namespace, attrs.name)
    api.authorizer.check_object(user, attrs, obj)


async def _delete_options(request: web.Request, api: Api) -> dict[str, Any]:
    query = request.query
    body: dict[str, Any] = {}
    if request.can_read_body:
        raw = await read_body(request, api.body_limit)
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise bad_request(f"DeleteOptions are not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise bad_request("DeleteOptions must be an object")
    policy = body.get("propagationPolicy") or query.get("propagationPolicy")
    if policy is None and (body.get("orphanDependents") is True
                           or query.get("orphanDependents") in TRUE):
        policy = "Orphan"
    if policy not in (None, "Orphan", "Background", "Foreground"):
        raise bad_request(f"propagationPolicy must be Orphan, Background or Foreground, "
                          f"got {policy!r}")
    pre = body.get("preconditions") or {}
    if not isinstance(pre, dict):
        raise bad_request("preconditions must be an object")
    grace = body.get("gracePeriodSeconds")
    if grace is None:
        grace = _int_param(query, "gracePeriodSeconds")
    elif isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise bad_request(f"gracePeriodSeconds must be a non-negative integer, got "
                          f"{grace!r}")
    return {"propagation": policy, "grace_period": grace,
            "precondition_rv": parse_resource_version(pre.get("resourceVersion"),
                                                      field="preconditions.resourceVersion"),
            "precondition_uid": pre.get("uid") or None}


async def _list_or_watch(request: web.Request, api: Api, res: Resource, ns: str | None,
                         labels: LabelSelector | None, fields: FieldSelector | None,
                         verb: str) -> web.StreamResponse:
    query = request.query
    limit = _int_param(query, "limit") or None
    if verb == "list":
        items, rv, token = await api.objects.storage.list_encoded(
            res, ns, labels=labels, fields=fields, limit=limit,
            continue_token=query.get("continue") or None)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if token:
            meta["continue"] = token
        head = encode({"kind": res.list_kind, "apiVersion": res.api_version,
                       "metadata": meta})
        body = head[:-1] + b',"items":[' + b",".join(items) + b"]}"
        return web.Response(body=body, content_type="application/json")
    rv = parse_resource_version(query.get("resourceVersion"))
    matcher = None
    if (labels is not None and not labels.empty) or (fields is not None and not fields.empty):
        def matcher(obj: dict[str, Any]) -> bool:
            return (labels is None or labels.matches(obj["metadata"].get("labels"))) and \
                (fields is None or fields.matches(obj))

    async def initial() -> tuple[list[dict[str, Any]], int]:
        items, list_rv, _ = await api.objects.storage.list(res, ns, labels=labels,
                                                           fields=fields)
        return items, list_rv
    timeout = _int_param(query, "timeoutSeconds")
    return await stream_watch(
        request, api.cache, res, res.key_prefix(ns), from_revision=rv or None,
        matcher=matcher, initial=initial,
        bookmarks=query.get("allowWatchBookmarks") in TRUE,
        timeout=float(timeout) if timeout else None, limits=api.watch_limits)
