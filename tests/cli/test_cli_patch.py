"""``meshctl patch`` against the real API server: the three patch formats the server
accepts (strategic merge, JSON merge, JSON patch) change the object and say so; a
patch that changes nothing says "(no change)"; a patched object the server refuses
is reported with the field and left as it was; a patch that does not parse, or has
the wrong shape for its type, is refused before anything is sent."""

from __future__ import annotations

import json

from cli_kit import Run

from control.api import ApiServer
from control.client.config import ClientConfig
from control.client.rest import ApiClient

POLICY = """\
apiVersion: mesh.io/v1alpha1
kind: TrafficPolicy
metadata: {name: recommendations}
spec:
  service: recommendations
  cluster:
    breaker: {consecutive_failures: 5}
  degrade:
    mode: auto
    auto: {metric: slow_ratio, slow_call_ms: 500, threshold: 0.5}
    action: {kind: static, status: 200, body: '{"recommended": []}'}
"""


def admin(server: ApiServer) -> ApiClient:
    return ApiClient(ClientConfig(server=server.url, token=server.admin_token,
                                  ca_file=str(server.ca_file)))


async def stored(server: ApiServer, name: str = "recommendations") -> dict:
    async with admin(server) as api:
        return await api.get("trafficpolicies", name, namespace="default")


async def test_merge_patch_flips_the_degradation_switch_and_says_no_change_after(
        meshctl: Run, apiserver: ApiServer) -> None:
    """``--type merge`` merges into the stored spec (the rest of ``degrade`` stays);
    the same patch again writes nothing and says "(no change)"."""
    assert (await meshctl("apply", "-f", "-", stdin=POLICY)).returncode == 0
    patch = '{"spec":{"degrade":{"mode":"on"}}}'
    rc, out, err = await meshctl("patch", "trafficpolicy", "recommendations", "-p", patch,
                                 "--type", "merge")
    assert (rc, out, err) == (0, "trafficpolicy.mesh.io/recommendations patched\n", "")
    degrade = (await stored(apiserver))["spec"]["degrade"]
    assert degrade["mode"] == "on"
    assert degrade["action"]["kind"] == "static"
    rv = (await stored(apiserver))["metadata"]["resourceVersion"]
    rc, out, _ = await meshctl("patch", "trafficpolicy/recommendations", "-p", patch,
                               "--type", "merge")
    assert (rc, out) == (0, "trafficpolicy.mesh.io/recommendations patched (no change)\n")
    assert (await stored(apiserver))["metadata"]["resourceVersion"] == rv


async def test_json_patch_operations_apply_and_a_failed_test_changes_nothing(
        meshctl: Run, apiserver: ApiServer) -> None:
    """RFC 6902 operations reach the server as a JSON patch; a ``test`` that fails is
    the server's 422 and the object keeps its value."""
    await meshctl("apply", "-f", "-", stdin=POLICY)
    ops = json.dumps([{"op": "test", "path": "/spec/degrade/mode", "value": "auto"},
                      {"op": "replace", "path": "/spec/degrade/mode", "value": "off"}])
    rc, out, _ = await meshctl("patch", "trafficpolicy", "recommendations", "--type", "json",
                               "-p", ops)
    assert (rc, out) == (0, "trafficpolicy.mesh.io/recommendations patched\n")
    assert (await stored(apiserver))["spec"]["degrade"]["mode"] == "off"
    rc, out, err = await meshctl("patch", "trafficpolicy", "recommendations", "--type",
                                 "json", "-p", ops)  # the test op now fails: mode is off
    assert rc == 1
    assert out == ""
    assert err.startswith("Error from server (Invalid): the patch cannot be applied")
    assert (await stored(apiserver))["spec"]["degrade"]["mode"] == "off"


async def test_strategic_patch_is_the_default_and_accepts_yaml(
        meshctl: Run, apiserver: ApiServer) -> None:
    """Without ``--type`` the patch is a strategic merge patch (kubectl's default); a
    YAML patch is read too, with ``"on"`` quoted as YAML requires."""
    await meshctl("apply", "-f", "-", stdin=POLICY)
    rc, out, _ = await meshctl("patch", "trafficpolicy", "recommendations",
                               "-p", 'spec: {degrade: {mode: "on"}, route: {priority: low}}')
    assert (rc, out) == (0, "trafficpolicy.mesh.io/recommendations patched\n")
    spec = (await stored(apiserver))["spec"]
    assert (spec["degrade"]["mode"], spec["route"]["priority"]) == ("on", "low")
    assert spec["cluster"]["breaker"] == {"consecutive_failures": 5}


async def test_a_patch_making_the_policy_invalid_is_refused_naming_the_field(
        meshctl: Run, apiserver: ApiServer) -> None:
    """The server validates the patched TrafficPolicy with the proxy's own schema: a
    threshold above 1 is a 422 naming ``spec.degrade.auto.threshold``; nothing changes."""
    await meshctl("apply", "-f", "-", stdin=POLICY)
    before = await stored(apiserver)
    rc, out, err = await meshctl("patch", "trafficpolicy", "recommendations", "--type",
                                 "merge", "-p", '{"spec":{"degrade":{"auto":{"threshold":2}}}}')
    assert rc == 1
    assert out == ""
    assert 'TrafficPolicy.mesh.io "recommendations" is invalid' in err
    assert "spec.degrade.auto.threshold" in err
    assert await stored(apiserver) == before


async def test_bad_patch_text_and_shapes_are_refused_before_sending(
        meshctl: Run, apiserver: ApiServer) -> None:
    """Unparsable text, an object for ``--type json``, a list for a merge type, a JSON
    patch operation without a path, two objects and an unknown object each fail with
    exit 1 and a message saying what is wrong; the stored object is unchanged."""
    await meshctl("apply", "-f", "-", stdin=POLICY)
    before = await stored(apiserver)
    cases = [
        (["-p", '{"spec": '], "unable to parse the patch as JSON"),
        (["--type", "json", "-p", '{"spec": {}}'], "is a list of operations"),
        (["--type", "merge", "-p", '[{"op": "remove", "path": "/spec"}]'],
         "a merge patch is a JSON object"),
        (["--type", "json", "-p", '[{"op": "remove"}]'],
         "operation 0 must be an object with 'op' and 'path'"),
        (["-p", "   "], "the patch is empty"),
    ]
    for flags, message in cases:
        rc, out, err = await meshctl("patch", "trafficpolicy", "recommendations", *flags)
        assert (rc, out) == (1, ""), flags
        assert err.startswith("error: "), (flags, err)
        assert message in err, (flags, err)
    rc, _, err = await meshctl("patch", "trafficpolicy", "a", "b", "-p", "{}")
    assert rc == 1
    assert "exactly one object" in err
    rc, _, err = await meshctl("patch", "trafficpolicy", "nope", "-p", "{}")
    assert rc == 1
    assert err.startswith("Error from server (NotFound)")
    rc, _, err = await meshctl("patch", "trafficpolicy", "recommendations")
    assert rc == 2  # argparse: one of -p/--patch-file is required
    assert "-p/--patch" in err
    assert await stored(apiserver) == before


async def test_patch_from_a_file_or_stdin(meshctl: Run, apiserver: ApiServer,
                                          tmp_path) -> None:
    """``--patch-file FILE`` and ``--patch-file -`` (stdin) carry the patch."""
    await meshctl("apply", "-f", "-", stdin=POLICY)
    f = tmp_path / "patch.json"
    f.write_text('{"spec": {"degrade": {"enforced": false}}}')
    assert (await meshctl("patch", "trafficpolicy", "recommendations", "--patch-file",
                          str(f))).returncode == 0
    assert (await stored(apiserver))["spec"]["degrade"]["enforced"] is False
    rc, _, _ = await meshctl("patch", "trafficpolicy", "recommendations", "--patch-file", "-",
                             stdin='{"spec": {"degrade": {"enforced": true}}}')
    assert rc == 0
    assert (await stored(apiserver))["spec"]["degrade"]["enforced"] is True
    rc, _, err = await meshctl("patch", "trafficpolicy", "recommendations", "--patch-file",
                               str(tmp_path / "missing.json"))
    assert rc == 1
    assert "cannot read --patch-file" in err


async def test_switch_name_that_would_not_fit_is_refused_by_the_api(meshctl: Run) -> None:
    """The switch of a policy is named ``<namespace>.<service>``: a service name so
    long that the name passes 63 characters is a 422 on ``spec.degrade``."""
    long = "s" * 60
    rc, _, err = await meshctl("apply", "-f", "-", stdin=POLICY.replace(
        "service: recommendations", f"service: {long}"))
    assert rc == 1
    assert "spec.degrade" in err
    assert "longer than 63 characters" in err
