"""Manifest loading (files, directories, stdin, multi-document, List) and the three-way
merge patch apply sends. Applying against a server is in test_client_rest_informer.py
and the CLI tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from control.client.manifests import (
    LAST_APPLIED,
    Manifest,
    ManifestError,
    covers,
    desired_object,
    load_paths,
    target_namespace,
    three_way_patch,
)

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox}]
"""
SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{port: 80}]}
"""


def test_multi_document_files_directories_and_stdin_load_in_order(tmp_path: Path) -> None:
    """A directory's manifest files load in name order, multi-document YAML yields each
    document, JSON and stdin work, empty documents and other files are skipped."""
    d = tmp_path / "app"
    d.mkdir()
    (d / "b-svc.yaml").write_text(SVC)
    (d / "a-deploy.yml").write_text("---\n" + DEPLOY + "---\n---\n" + SVC.replace("web", "api"))
    (d / "c-ns.json").write_text(json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
    (d / "README.md").write_text("not a manifest")
    (d / "sub").mkdir()
    (d / "sub" / "x.yaml").write_text(SVC.replace("web", "deep"))
    loaded = load_paths([str(d)])
    assert [(m.obj["kind"], m.name) for m in loaded] == [
        ("Deployment", "web"), ("Service", "api"), ("Service", "web"), ("Namespace", "shop")]
    assert loaded[0].source.endswith("a-deploy.yml#1")
    assert [m.name for m in load_paths([str(d)], recursive=True)][-1] == "deep"
    from_stdin = load_paths(["-"], stdin=io.StringIO(DEPLOY))
    assert from_stdin[0].source == "<stdin>"
    assert from_stdin[0].resource.plural == "deployments"


def test_list_documents_are_expanded(tmp_path: Path) -> None:
    """A `kind: List` (as `meshctl get -o yaml` prints) yields its items."""
    f = tmp_path / "list.yaml"
    f.write_text("apiVersion: v1\nkind: List\nitems:\n"
                 "- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
                 "- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n")
    assert [m.name for m in load_paths([str(f)])] == ["a", "b"]


@pytest.mark.parametrize(("text", "expected"), [
    ("kind: Pod\nmetadata: {name: a}", "missing apiVersion"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {}", "missing metadata.name"),
    ("apiVersion: v1\nkind: Widget\nmetadata: {name: a}", 'no kind "Widget"'),
    ("apiVersion: v1\nkind: Deployment\nmetadata: {name: a}", "served as: apps/v1"),
    ("- a\n- b", "must be a mapping"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed", "not valid YAML"),
])
def test_bad_manifests_name_the_file_and_problem(tmp_path: Path, text: str,
                                                 expected: str) -> None:
    """Each malformed manifest is refused with its file name and what is wrong."""
    f = tmp_path / "bad.yaml"
    f.write_text(DEPLOY + "---\n" + text)
    with pytest.raises(ManifestError) as info:
        load_paths([str(f)])
    assert expected in str(info.value)
    where = str(f) if expected == "not valid YAML" else f"{f}#2"  # YAML errors give a line
    assert where in str(info.value)
    with pytest.raises(ManifestError, match="no such file"):
        load_paths([str(tmp_path / "missing.yaml")])


def test_namespace_comes_from_manifest_flag_or_default_and_must_agree() -> None:
    """Manifest namespace wins over the default; a different explicit -n is an error;
    cluster-scoped kinds get none."""
    svc = Manifest(json.loads(json.dumps({"apiVersion": "v1", "kind": "Service",
                                          "metadata": {"name": "a", "namespace": "shop"}})),
                   "x")
    dep = Manifest({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
                   "y")
    node = Manifest({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}, "z")
    assert target_namespace(svc, None, default="default") == "shop"
    assert target_namespace(dep, None, default="default") == "default"
    assert target_namespace(dep, "prod", default="default") == "prod"
    assert target_namespace(node, "prod", default="default") is None
    with pytest.raises(ManifestError, match=r"\(shop\) does not match .* \(prod\)"):
        target_namespace(svc, "prod", default="default")


def test_desired_object_drops_status_and_server_metadata_and_records_itself() -> None:
    """What apply sends carries no status/resourceVersion/uid, and its last-applied
    annotation is exactly the rest of the object."""
    m = Manifest({"apiVersion": "v1", "kind": "Service",
                  "metadata": {"name": "a", "uid": "u", "resourceVersion": "7",
                               "annotations": {"team": "x"}},
                  "spec": {"ports": [{"port": 80}]}, "status": {"loadBalancer": {}}}, "s")
    obj = desired_object(m, "shop")
    assert "status" not in obj
    assert set(obj["metadata"]) == {"name", "namespace", "annotations"}
    recorded = json.loads(obj["metadata"]["annotations"][LAST_APPLIED])
    assert recorded["metadata"] == {"name": "a", "namespace": "shop",
                                    "annotations": {"team": "x"}}
    assert recorded["spec"] == obj["spec"]


def test_three_way_patch_sets_changes_deletes_dropped_fields_and_keeps_defaults() -> None:
    """Changed fields are sent; fields removed from the manifest are nulled; fields the
    server defaulted (not in any manifest) and status are left alone; a list the server
    enriched with defaults counts as unchanged."""
    original = {"spec": {"replicas": 2, "paused": False, "template": {"x": 1}},
                "metadata": {"labels": {"a": "1", "old": "y"}}}
    modified = {"spec": {"replicas": 3, "template": {"x": 1},
                         "containers": [{"name": "c", "image": "i"}]},
                "metadata": {"labels": {"a": "1"}}}
    current = {"spec": {"replicas": 2, "paused": False, "template": {"x": 1},
                        "strategy": {"type": "RollingUpdate"},
                        "containers": [{"name": "c", "image": "i",
                                        "imagePullPolicy": "IfNotPresent"}]},
               "metadata": {"labels": {"a": "1", "old": "y"}, "uid": "u"},
               "status": {"replicas": 2}}
    assert three_way_patch(original, modified, current) == {
        "spec": {"replicas": 3, "paused": None},
        "metadata": {"labels": {"old": None}},
    }
    assert three_way_patch(modified, modified, {**current, "spec": {
        **current["spec"], "replicas": 3}, "metadata": {"labels": {"a": "1"}}}) == {}


def test_covers_requires_every_manifest_field_and_equal_list_lengths() -> None:
    """covers: extra fields in the live object are fine, missing or different ones are
    not; lists match entry by entry; True is not 1."""
    assert covers({"a": [{"b": 1}]}, {"a": [{"b": 1, "c": 2}], "d": 3})
    assert not covers({"a": [{"b": 1}]}, {"a": [{"b": 1}, {"b": 2}]})
    assert not covers({"a": 1}, {"b": 1})
    assert not covers(True, 1)
    assert covers(1, 1.0)
