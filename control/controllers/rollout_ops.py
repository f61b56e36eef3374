"""What ``meshctl rollout`` does to a Deployment: undo, pause, resume, history, status.

The user's side of the Deployment controller (``deployment.py``), as kubectl does it:
:func:`rollback` copies an older ReplicaSet's template (without its
``pod-template-hash`` label) back into the Deployment with a conditional replace, and the
controller then treats that ReplicaSet as the new one (next revision number);
:func:`pause`/:func:`resume` flip ``spec.paused``; :func:`history` lists the revisions;
:func:`rollout_status` words the progress as ``kubectl rollout status`` does.

Neighbours: ``deployment.py`` (revisions, the controller), ``main.py`` (the command).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from control.client import errors
from control.client.rest import ApiClient
from control.controllers.deployment import HASH_LABEL, REVISION, revision_of
from control.controllers.replicaset import owned_by

Obj = dict[str, Any]
__all__ = ["REVISION", "history", "pause", "resume", "rollback", "rollout_status"]


async def _owned_replicasets(api: ApiClient, d: Obj) -> list[Obj]:
    items, _ = await api.list_all("replicasets", namespace=d["metadata"].get("namespace"))
    return [rs for rs in items if owned_by(rs, d)]


async def history(api: ApiClient, namespace: str, name: str) -> list[tuple[int, Obj]]:
    """(revision, ReplicaSet) pairs of a Deployment, oldest first."""
    d = await api.get("deployments", name, namespace=namespace)
    return sorted(((revision_of(rs), rs) for rs in await _owned_replicasets(api, d)),
                  key=lambda pair: pair[0])


async def rollback(api: ApiClient, namespace: str, name: str, *, to_revision: int = 0) -> str:
    """Point the Deployment's template back at an older revision (the previous one when
    ``to_revision`` is 0); returns kubectl's message. Raises ValueError when there is
    no such revision."""
    if to_revision < 0:
        raise ValueError(f"--to-revision must be >= 0, got {to_revision}")
    for _ in range(5):  # the controller's status writes may race with ours: read again
        try:
            return await _rollback_once(api, namespace, name, to_revision)
        except errors.Conflict:
            continue
    return await _rollback_once(api, namespace, name, to_revision)


async def _rollback_once(api: ApiClient, namespace: str, name: str, to_revision: int) -> str:
    d = await api.get("deployments", name, namespace=namespace)
    revisions = dict((rev, rs) for rev, rs in
                     ((revision_of(rs), rs) for rs in await _owned_replicasets(api, d)))
    current = revision_of(d) or max(revisions, default=0)
    if to_revision == 0:
        earlier = [r for r in revisions if r < current]
        if not earlier:
            raise ValueError(f'no rollout history found for deployment "{name}"')
        to_revision = max(earlier)
    target = revisions.get(to_revision)
    if target is None:
        raise ValueError(f"unable to find specified revision {to_revision} in history")
    template = copy.deepcopy((target.get("spec") or {}).get("template") or {})
    labels = (template.get("metadata") or {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    if template == (d.get("spec") or {}).get("template"):
        return (f"deployment.apps/{name} skipped rollback (current template already "
                f"matches revision {to_revision})")
    # A whole replace, not a merge patch: keys the old template lacks must go too. The
    # resourceVersion it carries makes it conditional (409 if the Deployment changed).
    d["spec"]["template"] = template
    await api.replace("deployments", d, namespace=namespace)
    return f"deployment.apps/{name} rolled back"


async def pause(api: ApiClient, namespace: str, name: str) -> str:
    await api.patch("deployments", name, {"spec": {"paused": True}}, namespace=namespace)
    return f"deployment.apps/{name} paused"


async def resume(api: ApiClient, namespace: str, name: str) -> str:
    await api.patch("deployments", name, {"spec": {"paused": None}}, namespace=namespace)
    return f"deployment.apps/{name} resumed"


RolloutState = Literal["progressing", "done", "failed"]


def rollout_status(d: Obj) -> tuple[RolloutState, str]:
    """Where a rollout stands, in the words of ``kubectl rollout status``."""
    name = d["metadata"]["name"]
    spec, status = d.get("spec") or {}, d.get("status") or {}
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    prefix = f'Waiting for deployment "{name}" rollout to finish: '
    if d["metadata"].get("generation", 1) > status.get("observedGeneration", 0):
        return "progressing", "Waiting for deployment spec update to be observed..."
    if any(c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
           for c in status.get("conditions") or ()):
        return "failed", f'deployment "{name}" exceeded its progress deadline'
    if updated < want:
        return "progressing", (f"{prefix}{updated} out of {want} new replicas have been "
                               f"updated...")
    if total > updated:
        return "progressing", f"{prefix}{total - updated} old replicas are pending termination..."
    if available < updated:
        return "progressing", (f"{prefix}{available} of {updated} updated replicas are "
                               f"available...")
    return "done", f'deployment "{name}" successfully rolled out'
