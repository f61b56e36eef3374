"""``meshctl patch``: change fields of one live object, as ``kubectl patch`` does.

``meshctl patch trafficpolicy recommendations -p '{"spec":{"degrade":{"mode":"on"}}}'``
(or ``trafficpolicy/recommendations``) sends the patch and prints
``trafficpolicy.mesh.io/recommendations patched``, or ``... patched (no change)`` when
the object came out as it was (the server then writes nothing). ``--type`` says which of
the three formats the API server accepts (``control/api/patch.py``) the patch is in:

- ``strategic`` (the default, as kubectl's): a merge patch whose lists of objects merge
  by key (containers by ``name``...);
- ``merge``: JSON merge patch (RFC 7386): objects merge, ``null`` deletes a key, lists
  are replaced;
- ``json``: JSON patch (RFC 6902): a list of ``add``/``remove``/``replace``/``move``/
  ``copy``/``test`` operations, e.g. ``[{"op": "replace", "path":
  "/spec/degrade/mode", "value": "off"}]``.

The patch comes from ``-p/--patch`` or ``--patch-file`` (``-`` for stdin), JSON or YAML.
It is checked before anything is sent: it must parse, and be an object (merge types) or
a list of operations (``json``). The server validates the patched object as a whole and
refuses it (422, naming each field: ``spec.degrade.auto.threshold``) without changing
anything; a JSON patch whose ``test`` fails or whose path is missing is a 422 too.

Neighbours: :mod:`control.client.rest` (``get``, ``patch``; the JSON and strategic
patches go through its ``request`` with their media type), :mod:`control.cli.common`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Literal

import yaml

from control.cli.common import OK, UsageError, add_namespace_flags, client_parent, run_client
from control.cli.common import split_type_and_names as split

if TYPE_CHECKING:
    from control.client.rest import ApiClient

PatchType = Literal["strategic", "merge", "json"]
MEDIA_TYPES: dict[PatchType, str] = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", parents=[client_parent()],
                       help="change fields of one object with a strategic merge, JSON merge "
                            "or JSON patch",
                       description="Patch one object; the server validates the result.")
    p.add_argument("words", nargs="+", metavar="TYPE[/NAME]", help="TYPE NAME or TYPE/NAME")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--patch", help="the patch, JSON or YAML")
    src.add_argument("--patch-file", metavar="FILE", help="file holding the patch ('-': stdin)")
    p.add_argument("--type", dest="patch_type", choices=tuple(MEDIA_TYPES),
                   default="strategic", help="the patch format (default: strategic)")
    add_namespace_flags(p)
    p.set_defaults(handler=lambda args: run_client(args, patch_verb))


def parse_patch(text: str, patch_type: PatchType) -> Any:
    """The patch document, or UsageError saying what is wrong with it."""
    if not text.strip():
        raise UsageError("the patch is empty")
    try:
        doc = json.loads(text)
    except ValueError as json_error:
        # YAML second: easier to type in a shell, but YAML 1.1 reads a bare on/off as a
        # boolean, so JSON (where "on" is a string) is tried first.
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UsageError(f"unable to parse the patch as JSON ({json_error}) or "
                             "YAML") from None
    if patch_type == "json":
        if not isinstance(doc, list):
            raise UsageError('a JSON patch (--type json) is a list of operations, e.g. '
                             '[{"op": "replace", "path": "/spec/x", "value": 1}]')
        for i, op in enumerate(doc):
            if not isinstance(op, dict) or "op" not in op or "path" not in op:
                raise UsageError(f"JSON patch operation {i} must be an object with 'op' "
                                 f"and 'path', not {json.dumps(op)}")
    elif not isinstance(doc, dict):
        raise UsageError(f"a {patch_type} patch is a JSON object, e.g. "
                         '{"spec": {"replicas": 3}}; for a list of operations use '
                         "--type json")
    return doc


def _read_source(args: argparse.Namespace) -> str:
    if args.patch is not None:
        return str(args.patch)
    if args.patch_file == "-":
        return sys.stdin.read()
    try:
        with open(args.patch_file, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read --patch-file: {e}") from None


async def patch_verb(api: ApiClient, args: argparse.Namespace) -> int:
    from control.client.manifests import display_name
    from control.client.resources import lookup, path

    kind, names = split(args.words)
    if len(names) != 1:
        raise UsageError("patch takes exactly one object: TYPE NAME or TYPE/NAME")
    patch_type: PatchType = args.patch_type
    doc = parse_patch(_read_source(args), patch_type)
    res = lookup(kind)
    name = names[0]
    ns = args.namespace if res.namespaced else None
    before = await api.get(res, name, namespace=ns)  # NotFound here names the object
    if patch_type == "merge":
        after = await api.patch(res, name, doc, namespace=ns)
    else:
        after = await api.request("PATCH", path(res, namespace=ns, name=name), body=doc,
                                  content_type=MEDIA_TYPES[patch_type])
    same = ((before.get("metadata") or {}).get("resourceVersion")
            == (after.get("metadata") or {}).get("resourceVersion"))
    print(f"{display_name(res, name)} patched{' (no change)' if same else ''}", flush=True)
    return OK
