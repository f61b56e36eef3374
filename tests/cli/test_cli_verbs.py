"""The real ``meshctl`` against the real API server: apply/get/scale/describe/delete
output and exit codes, and errors carrying the server's message. The installed script
runs as a subprocess where the process matters (apply, stdin, watch and SIGTERM); the
other tests run the same ``main`` in-process (see cli_kit.py)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import yaml
from cli_kit import MESHCTL, Run

from control.api import ApiServer
from control.client.config import ClientConfig
from control.client.rest import ApiClient

NS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"""
DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, team: blue}
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
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def admin(server: ApiServer) -> ApiClient:
    return ApiClient(ClientConfig(server=server.url, token=server.admin_token,
                                  ca_file=str(server.ca_file)))


def write_app(root: Path, deploy: str = DEPLOY) -> Path:
    d = root / "app"
    d.mkdir(exist_ok=True)
    (d / "00-ns.yaml").write_text(NS)
    (d / "10-web.yaml").write_text(deploy + "---\n" + SVC)
    return d


async def test_apply_reports_created_unchanged_configured(
        meshctl_script: Run, apiserver: ApiServer, tmp_path: Path) -> None:
    """apply -f DIR creates everything (kubectl's lines, in file order); applying again
    changes nothing; a changed field is configured; a label dropped from the manifest is
    removed from the live object while labels others set are kept."""
    app = write_app(tmp_path)
    rc, out, err = await meshctl_script("apply", "-f", str(app))
    assert (rc, err) == (0, "")
    assert out == ("namespace/shop created\ndeployment.apps/web created\nservice/web created\n")
    rc, out, _ = await meshctl_script("apply", "-f", str(app))
    assert out == ("namespace/shop unchanged\ndeployment.apps/web unchanged\n"
                   "service/web unchanged\n")
    async with admin(apiserver) as api:
        await api.patch("deploy", "web", {"metadata": {"labels": {"owner": "ops"}}},
                        namespace="shop")
    changed = DEPLOY.replace("replicas: 2", "replicas: 3").replace(", team: blue", "")
    write_app(tmp_path, changed)
    rc, out, _ = await meshctl_script("apply", "-f", str(app))
    assert (rc, out) == (0, "namespace/shop unchanged\ndeployment.apps/web configured\n"
                            "service/web unchanged\n")
    async with admin(apiserver) as api:
        live = await api.get("deploy", "web", namespace="shop")
    assert live["spec"]["replicas"] == 3
    assert live["metadata"]["labels"] == {"app": "web", "owner": "ops"}


async def test_apply_from_stdin_and_namespace_flag(meshctl_script: Run) -> None:
    """-f - reads stdin; -n puts namespace-less manifests there; a manifest naming
    another namespace than -n is refused before anything is written."""
    svc = SVC.replace(", namespace: shop", "")
    rc, out, err = await meshctl_script("apply", "-f", "-", "-n", "default", stdin=svc)
    assert (rc, out, err) == (0, "service/web created\n", "")
    rc, out, err = await meshctl_script("apply", "-f", "-", "-n", "other",
                                        stdin=svc + "---\n" + SVC)
    assert rc == 1
    assert "does not match the namespace given (other)" in err
    assert out == ""


async def test_get_tables_formats_selectors_and_not_found(meshctl: Run, tmp_path: Path) -> None:
    """get prints kubectl's table for the kind; -o yaml/json/name/wide; -l filters;
    -A adds NAMESPACE; TYPE,TYPE prints a table per type that has objects; an empty list
    says so; a missing name prints the server's message and exits 1."""
    await meshctl("apply", "-f", str(write_app(tmp_path)))
    rc, out, _ = await meshctl("get", "deployments", "-n", "shop")
    assert rc == 0
    lines = out.splitlines()
    assert re.fullmatch(r"NAME\s+READY\s+UP-TO-DATE\s+AVAILABLE\s+AGE", lines[0])
    assert re.fullmatch(r"web\s+0/2\s+0\s+0\s+\d+s", lines[1])
    rc, out, _ = await meshctl("get", "deploy", "-n", "shop", "-o", "wide")
    assert re.search(r"web\s+0/2\s+0\s+0\s+\d+s\s+web\s+busybox\s+app=web$", out.splitlines()[1])
    rc, out, _ = await meshctl("get", "svc/web", "-n", "shop", "-o", "yaml")
    svc = yaml.safe_load(out)
    assert (svc["kind"], svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]) == (
        "Service", "web", 80)
    rc, out, _ = await meshctl("get", "services", "-A", "-o", "json")
    listed = json.loads(out)
    assert listed["kind"] == "List"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["web"]
    rc, out, _ = await meshctl("get", "svc", "-A")
    assert re.match(r"NAMESPACE\s+NAME\s+TYPE\s+CLUSTER-IP", out)
    assert re.search(r"^shop\s+web\s+ClusterIP", out, re.M)
    rc, out, _ = await meshctl("get", "deploy", "-n", "shop", "-l", "app=web", "-o", "name")
    assert out == "deployment.apps/web\n"
    rc, out, _ = await meshctl("get", "deploy,svc,pods", "-n", "shop")
    tables = out.split("\n\n")
    assert [t.split()[0:2] for t in tables] == [["NAME", "READY"], ["NAME", "TYPE"]]
    rc, out, _ = await meshctl("get", "deploy,svc", "-n", "shop", "-o", "name")
    assert out == "deployment.apps/web\nservice/web\n"
    rc, out, _ = await meshctl("get", "deploy", "-n", "shop", "-l", "app=other")
    assert (rc, out) == (0, "")
    rc, out, err = await meshctl("get", "pods")
    assert (rc, out, err) == (0, "", "No resources found in default namespace.\n")
    rc, out, err = await meshctl("get", "deploy", "nope", "-n", "shop")
    assert rc == 1
    assert err == 'Error from server (NotFound): deployments.apps "nope" not found\n'
    rc, _, err = await meshctl("get", "widgets")
    assert rc == 1
    assert 'doesn\'t have a resource type "widgets"' in err


async def test_scale_sets_replicas_and_honours_current_replicas(meshctl: Run,
                                                                 tmp_path: Path) -> None:
    """scale changes spec.replicas; a --current-replicas mismatch changes nothing and
    exits 1; a kind without a scale subresource and a negative count are refused."""
    await meshctl("apply", "-f", str(write_app(tmp_path)))
    rc, out, _ = await meshctl("scale", "deploy", "web", "--replicas", "5", "-n", "shop")
    assert (rc, out) == (0, "deployment.apps/web scaled\n")
    rc, out, _ = await meshctl("get", "deploy", "web", "-n", "shop", "-o", "json")
    assert json.loads(out)["spec"]["replicas"] == 5
    rc, _, err = await meshctl("scale", "deploy/web", "--replicas", "1",
                               "--current-replicas", "3", "-n", "shop")
    assert rc == 1
    assert "has 5 replicas, not --current-replicas=3" in err
    rc, _, err = await meshctl("scale", "svc", "web", "--replicas", "1", "-n", "shop")
    assert (rc, "cannot be scaled" in err) == (1, True)
    rc, _, err = await meshctl("scale", "deploy", "web", "--replicas", "-2", "-n", "shop")
    assert rc == 2
    assert "--replicas must be >= 0" in err
    rc, out, _ = await meshctl("get", "deploy", "web", "-n", "shop", "-o", "json")
    assert json.loads(out)["spec"]["replicas"] == 5


async def test_describe_shows_the_object_and_only_its_events(
        meshctl: Run, apiserver: ApiServer, tmp_path: Path) -> None:
    """describe prints the header, the workload summary with what the object controls
    (a Deployment's ReplicaSets, a ReplicaSet's Pods by phase) and the Events whose
    involvedObject is this object, oldest first; others' Events are not shown."""
    await meshctl("apply", "-f", str(write_app(tmp_path)))
    async with admin(apiserver) as api:
        live = await api.get("deploy", "web", namespace="shop")
        for i, (reason, message, target) in enumerate([
                ("ScalingReplicaSet", "Scaled up replica set web-abc to 2", "web"),
                ("ScalingReplicaSet", "Scaled up replica set other-x to 1", "other"),
                ("Paused", "Deployment paused by user", "web")]):
            await api.create("events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"web.{i}", "namespace": "shop"},
                "involvedObject": {"kind": "Deployment", "name": target, "namespace": "shop",
                                   "uid": live["metadata"]["uid"] if target == "web" else "x"},
                "reason": reason, "message": message,
                "source": {"component": "deployment-controller"},
                "lastTimestamp": f"2026-01-01T00:00:0{i}Z"})
        rs = await api.create("replicasets", {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "web", "uid": live["metadata"]["uid"],
                                              "controller": True}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                         "containers": [{"name": "web", "image": "busybox"}]}}}})
        await api.create("pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-abc-1", "namespace": "shop",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-abc", "uid": rs["metadata"]["uid"],
                                              "controller": True}]},
            "spec": {"containers": [{"name": "web", "image": "busybox"}]}})
    rc, out, err = await meshctl("describe", "deployment", "web", "-n", "shop")
    assert (rc, err) == (0, "")
    assert re.search(r"^ReplicaSets:\s+web-abc \(0/2 ready\)$", out, re.M)
    assert re.search(r"^Name:\s+web$", out, re.M)
    assert re.search(r"^Namespace:\s+shop$", out, re.M)
    assert re.search(r"^Replicas:\s+2 desired \| 0 updated", out, re.M)
    assert "last-applied-configuration" not in out
    events = out[out.index("Events:"):].splitlines()
    assert re.match(r"\s+Type\s+Reason\s+Age\s+From\s+Message", events[1])
    assert re.match(r"\s+Normal\s+ScalingReplicaSet\s+\S+\s+deployment-controller\s+"
                    r"Scaled up replica set web-abc to 2", events[3])
    assert "Deployment paused by user" in events[4]
    assert "other-x" not in out
    rc, out, _ = await meshctl("describe", "rs", "web-abc", "-n", "shop")
    assert re.search(r"^Pods Status:\s+0 Running / 1 Waiting / 0 Succeeded / 0 Failed$",
                     out, re.M)
    assert re.search(r"^Controlled By:\s+Deployment/web$", out, re.M)
    rc, out, _ = await meshctl("describe", "svc/web", "-n", "shop")
    assert re.search(r"^Ports:\s+80/TCP$", out, re.M)
    assert out.rstrip().endswith("Events:  <none>")


async def test_delete_by_name_and_by_file(meshctl: Run, tmp_path: Path) -> None:
    """delete TYPE NAME prints kubectl's line; deleting it again exits 1 with the
    server's message unless --ignore-not-found; delete -f removes a manifest's objects."""
    app = write_app(tmp_path)
    await meshctl("apply", "-f", str(app))
    rc, out, _ = await meshctl("delete", "deploy", "web", "-n", "shop")
    assert (rc, out) == (0, 'deployment.apps "web" deleted\n')
    rc, _, err = await meshctl("delete", "deploy", "web", "-n", "shop")
    assert rc == 1
    assert 'Error from server (NotFound): deployments.apps "web" not found' in err
    rc, out, err = await meshctl("delete", "-f", str(app / "10-web.yaml"), "--ignore-not-found")
    assert (rc, out, err) == (0, 'service "web" deleted\n', "")
    rc, out, _ = await meshctl("get", "svc", "-n", "shop")
    assert out == ""


async def test_invalid_object_prints_the_server_message_and_others_still_apply(
        meshctl: Run) -> None:
    """An object the server refuses (422) is reported with the server's message and
    field, exit 1; the valid objects in the same run are still applied."""
    bad = SVC.replace("name: web", "name: api").replace("port: 80", "port: 70000")
    rc, out, err = await meshctl("apply", "-f", "-", stdin=NS + "---\n" + bad)
    assert rc == 1
    assert out == "namespace/shop created\n"
    assert err.startswith('Error from server (Invalid): Service "api" is invalid: ')
    assert "spec.ports[0].port" in err


async def test_get_watch_prints_rows_as_objects_change(
        client_env: dict[str, str], apiserver: ApiServer) -> None:
    """get -w prints the table, then a row per change; SIGTERM ends it with status 0."""
    async with admin(apiserver) as api:
        await api.create("services", yaml.safe_load(SVC.replace(", namespace: shop", "")))
        proc = await asyncio.create_subprocess_exec(
            MESHCTL, "get", "svc", "-w", env=client_env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            header = await asyncio.wait_for(proc.stdout.readline(), 30)
            first = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert header.split()[:2] == [b"NAME", b"TYPE"]
            assert first.split()[0] == b"web"
            second = yaml.safe_load(SVC.replace(", namespace: shop", "").replace(
                "name: web", "name: api"))
            await api.create("services", second)
            row = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert row.split()[:2] == [b"api", b"ClusterIP"]
            await api.delete("services", "web")
            row = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert row.split()[0] == b"web"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 30)
    assert rc == 0


async def test_delete_pod_grace_period_now_and_force(meshctl: Run,
                                                     apiserver: ApiServer) -> None:
    """A bound Pod is deleted gracefully (Terminating with its own grace); --grace-period
    shortens it, --now is 1 s, --grace-period=0 without --force is refused before
    anything is sent, and --force removes the Pod at once with kubectl's warning."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "default"},
           "spec": {"nodeName": "gone-node", "terminationGracePeriodSeconds": 20,
                    "containers": [{"name": "c", "image": "busybox"}]}}
    async with admin(apiserver) as api:
        await api.create("pods", pod)
        await api.create("pods", {**pod, "metadata": {"name": "q", "namespace": "default"}})

        rc, _, err = await meshctl("delete", "pod", "p", "--grace-period", "0")
        assert rc == 1
        assert "--force" in err
        assert "deletionTimestamp" not in (await api.get("pods", "p"))["metadata"]

        rc, out, _ = await meshctl("delete", "pod", "p")
        assert (rc, out) == (0, 'pod "p" deleted\n')
        md = (await api.get("pods", "p"))["metadata"]  # Terminating, still there
        assert md["deletionGracePeriodSeconds"] == 20
        assert md["deletionTimestamp"]

        assert (await meshctl("delete", "pod", "p", "--grace-period", "5"))[0] == 0
        assert (await api.get("pods", "p"))["metadata"]["deletionGracePeriodSeconds"] == 5
        assert (await meshctl("delete", "pod", "q", "--now"))[0] == 0
        assert (await api.get("pods", "q"))["metadata"]["deletionGracePeriodSeconds"] == 1

        rc, out, err = await meshctl("delete", "pod", "p", "q", "--force")
        assert rc == 0
        assert out.count("deleted") == 2
        assert "immediate deletion does not wait" in err
        pods, _ = await api.list_all("pods", namespace="default")
        assert pods == []


def _bound_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "gone-node", "terminationGracePeriodSeconds": 20,
                     "containers": [{"name": "c", "image": "busybox"}]}}


async def test_delete_wait_returns_once_the_node_has_finalized_the_pod(
        meshctl: Run, apiserver: ApiServer) -> None:
    """--wait returns only after the Pod is really gone: here the node finalizes it
    (grace-0 delete with its uid) a moment after the graceful delete; the CLI was
    still waiting then and returns 0 right after."""
    async with admin(apiserver) as api:
        created = await api.create("pods", _bound_pod("w"))
        uid = created["metadata"]["uid"]
        run = asyncio.ensure_future(meshctl("delete", "pod", "w", "--wait"))
        for _ in range(200):  # until the graceful delete has marked it
            if "deletionTimestamp" in (await api.get("pods", "w"))["metadata"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert not run.done()  # still Terminating: still waiting
        await api.delete("pods", "w", namespace="default", grace_period_seconds=0, uid=uid)
        rc, out, _ = await asyncio.wait_for(run, 30)
        assert (rc, out) == (0, 'pod "w" deleted\n')


async def test_delete_wait_times_out_with_the_objects_left_named(
        meshctl: Run, apiserver: ApiServer) -> None:
    """With nobody to stop the Pod, --timeout ends the wait with exit 1 naming it; the
    deletion stands (the Pod stays Terminating); an unbound Pod in the same command is
    gone at once and not named; --timeout without --wait is refused."""
    async with admin(apiserver) as api:
        await api.create("pods", _bound_pod("stuck"))
        unbound = _bound_pod("free")
        del unbound["spec"]["nodeName"]
        await api.create("pods", unbound)
        rc, _, err = await meshctl("delete", "pod", "stuck", "free", "--wait", "--timeout", "1")
        assert rc == 1
        assert 'pod "stuck"' in err
        assert "free" not in err
        assert "deletionTimestamp" in (await api.get("pods", "stuck"))["metadata"]
        rc, _, err = await meshctl("delete", "pod", "stuck", "--timeout", "1")
        assert rc == 1
        assert "--timeout goes with --wait" in err
