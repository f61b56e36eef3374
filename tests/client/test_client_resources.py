"""Resource names and REST paths as kubectl users expect; Status bodies -> typed errors."""

from __future__ import annotations

import pytest

from control.client import errors, resources
from control.client.rest import _event


def test_resource_names_resolve_like_kubectl() -> None:
    """Plural, singular, kind, short names and plural.group all name one resource; an
    unknown name lists what exists."""
    deploy = resources.lookup("deployments")
    for name in ("deployment", "Deployment", "deploy", "deployments.apps"):
        assert resources.lookup(name) is deploy
    assert resources.lookup("po").kind == "Pod"
    assert resources.for_object("apps/v1", "Deployment") is deploy
    with pytest.raises(resources.UnknownResource, match=r"known: .*pods"):
        resources.lookup("widgets")
    with pytest.raises(resources.UnknownResource, match="served as: apps/v1"):
        resources.for_object("v1", "Deployment")


def test_paths_for_collections_objects_and_subresources() -> None:
    """REST paths follow Kubernetes: core under /api/v1, groups under /apis; cluster
    scoped kinds ignore the namespace; an unknown subresource is refused."""
    pods, deploy, nodes = (resources.lookup(n) for n in ("pods", "deploy", "nodes"))
    assert resources.path(pods) == "/api/v1/pods"
    assert resources.path(pods, namespace="shop") == "/api/v1/namespaces/shop/pods"
    assert resources.path(pods, namespace="shop", name="a", subresource="binding") == \
        "/api/v1/namespaces/shop/pods/a/binding"
    assert resources.path(deploy, namespace="d", name="web", subresource="scale") == \
        "/apis/apps/v1/namespaces/d/deployments/web/scale"
    assert resources.path(nodes, namespace="ignored", name="n1") == "/api/v1/nodes/n1"
    with pytest.raises(ValueError, match="no 'scale' subresource"):
        resources.path(pods, namespace="d", name="a", subresource="scale")


@pytest.mark.parametrize(("code", "reason", "cls"), [
    (404, "NotFound", errors.NotFound),
    (409, "AlreadyExists", errors.AlreadyExists),
    (409, "Conflict", errors.Conflict),
    (410, "Expired", errors.Gone),
    (401, "Unauthorized", errors.Unauthorized),
    (403, "Forbidden", errors.Forbidden),
    (422, "Invalid", errors.Invalid),
    (500, "InternalError", errors.ServerError),
])
def test_status_bodies_map_to_typed_errors(code: int, reason: str, cls: type) -> None:
    """Each Status code/reason becomes its error class, keeping message and causes."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": f"msg {code}",
            "details": {"causes": [{"field": "spec.replicas", "message": "must be >= 0"}]}}
    err = errors.from_status(code, body)
    assert type(err) is cls
    assert (err.code, err.reason, str(err)) == (code, reason, f"msg {code}")
    assert err.causes[0]["field"] == "spec.replicas"
    plain = errors.from_status(502, "bad gateway text")
    assert isinstance(plain, errors.ServerError)
    assert str(plain) == "bad gateway text"


def test_watch_error_events_raise_typed_errors() -> None:
    """A watch line of type ERROR carrying a 410 Status raises Gone (how kube-apiserver
    ends a watch that fell behind); other lines decode or fail as ConnectionFailed."""
    line = (b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","code":410,'
            b'"reason":"Expired","message":"too old resource version: 5 (42)"}}')
    with pytest.raises(errors.Gone, match="too old resource version"):
        _event(line)
    ev = _event(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}')
    assert (ev.type, ev.resource_version) == ("BOOKMARK", "9")
    with pytest.raises(errors.ConnectionFailed, match="unknown event type 'SYNC'"):
        _event(b'{"type":"SYNC","object":{}}')
    with pytest.raises(errors.ConnectionFailed, match="not JSON"):
        _event(b"<html>")
