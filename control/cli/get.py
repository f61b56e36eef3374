"""``meshctl get``: list or get objects as a table, YAML, JSON or names; ``-w`` watches.

``meshctl get TYPE [NAME...]``, ``get TYPE/NAME...`` or ``get TYPE,TYPE`` (one table per
type); ``-n NS`` or ``-A``; ``-l``
label and ``--field-selector`` selectors; ``-o wide|yaml|json|name``. Named objects that
do not exist are reported per name (exit 1) after printing the ones that do.

``-w`` prints the current state, then one row (or document) per change, following the
watch from the list's resourceVersion: when the stream ends it resumes from the last
version seen, and when that version has been compacted (410) it lists again and prints
every object, as a relisting client must. It runs until Ctrl-C (exit 0).

Neighbours: :mod:`control.cli.printers` (formats), :mod:`control.cli.common`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from control.cli import printers
from control.cli.common import (
    FAILED,
    OK,
    UsageError,
    add_namespace_flags,
    client_parent,
    print_error,
    run_client,
    split_type_and_names,
)
from control.client import errors

if TYPE_CHECKING:
    from control.client.resources import Resource
    from control.client.rest import ApiClient

Obj = dict[str, Any]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", parents=[client_parent()],
                       help="list or get objects (table, -o yaml|json|wide|name, -w to watch)",
                       description="Print objects of one type as a table (or YAML/JSON).")
    p.add_argument("words", nargs="*", metavar="TYPE[/NAME]",
                   help="a type then names (pods web-1), or TYPE/NAME words")
    add_namespace_flags(p, all_namespaces=True)
    p.add_argument("-o", "--output", choices=("wide", "yaml", "json", "name"),
                   help="output format (default: table)")
    p.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("--field-selector", help="field selector, e.g. spec.nodeName=node-1")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, watch for changes")
    p.add_argument("--watch-only", action="store_true", help="watch without listing first")
    p.add_argument("--no-headers", action="store_true", help="table without its header line")
    p.set_defaults(handler=lambda args: run_client(args, get))


class _Printer:
    """Prints objects of one resource in the chosen format, to stdout, flushed."""

    def __init__(self, res: Resource, args: argparse.Namespace) -> None:
        self.res = res
        self.fmt = args.output
        self.namespaces = bool(args.all_namespaces)
        self.headers = not args.no_headers
        self.printed_header = False

    def many(self, objs: list[Obj], *, single: bool = False) -> None:
        out = sys.stdout
        if self.fmt in ("yaml", "json"):
            data = objs[0] if single and len(objs) == 1 else printers.as_list(self.res, objs)
            out.write(printers.dump(data, self.fmt))
        elif self.fmt == "name":
            out.writelines(printers.object_name(self.res, o) + "\n" for o in objs)
        else:
            self.rows(objs)
        out.flush()

    def rows(self, objs: list[Obj]) -> None:
        header, rows = printers.table_rows(self.res, objs, now=time.time(),
                                           wide=self.fmt == "wide", namespaces=self.namespaces)
        show = self.headers and not self.printed_header
        if rows or show:
            sys.stdout.write(printers.render_table(header if show else None, rows))
        self.printed_header = self.printed_header or show

    def event(self, obj: Obj) -> None:
        if self.fmt in ("yaml", "json"):
            sys.stdout.write(("---\n" if self.fmt == "yaml" else "")
                             + printers.dump(obj, self.fmt))
            sys.stdout.flush()
        else:
            self.many([obj])


async def get(api: ApiClient, args: argparse.Namespace) -> int:
    from control.client.resources import lookup

    kind, names = split_type_and_names(args.words)
    if "," in kind:
        if names or args.watch or args.watch_only:
            raise UsageError("several types (TYPE,TYPE) can be listed, not named or watched")
        return await _list_types(api, [lookup(k) for k in kind.split(",") if k], args)
    res = lookup(kind)
    if args.all_namespaces and names:
        raise UsageError("a resource cannot be retrieved by name across all namespaces")
    namespace = None if (args.all_namespaces or not res.namespaced) else args.namespace
    printer = _Printer(res, args)
    if args.watch or args.watch_only:
        if len(names) > 1:
            raise UsageError("watch is only supported on one named object")
        return await _watch(api, res, namespace, names[0] if names else None, args, printer)
    if names:
        found, status = [], OK
        for name in names:
            try:
                found.append(await api.get(res, name, namespace=namespace))
            except errors.NotFound as e:
                print_error(e)
                status = FAILED
        if found:
            printer.many(found, single=len(names) == 1)
        return status
    items, _ = await api.list_all(res, namespace=namespace, label_selector=args.selector,
                                  field_selector=args.field_selector)
    if not items and args.output not in ("yaml", "json"):
        where = "" if namespace is None else f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return OK
    printer.many(items)
    return OK


async def _list_types(api: ApiClient, resources: list[Resource],
                      args: argparse.Namespace) -> int:
    """``get pods,svc``: one table per type (blank line between), or one List."""
    listed: list[tuple[Resource, list[Obj]]] = []
    for res in resources:
        namespace = None if (args.all_namespaces or not res.namespaced) else args.namespace
        items, _ = await api.list_all(res, namespace=namespace, label_selector=args.selector,
                                      field_selector=args.field_selector)
        listed.append((res, items))
    if args.output in ("yaml", "json"):
        everything = [o for _, items in listed for o in items]
        sys.stdout.write(printers.dump(printers.as_list(resources[0], everything), args.output))
        return OK
    shown = [(res, items) for res, items in listed if items]
    if not shown:
        where = "" if args.all_namespaces else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    for i, (res, items) in enumerate(shown):
        if i and args.output != "name":
            sys.stdout.write("\n")
        _Printer(res, args).many(items)
    return OK


async def _watch(api: ApiClient, res: Resource, namespace: str | None, name: str | None,
                 args: argparse.Namespace, printer: _Printer) -> int:
    fields = ",".join(f for f in (args.field_selector,
                                  f"metadata.name={name}" if name else None) if f) or None
    rv: str | None = None
    relist = first = True
    while True:
        if relist:
            items, rv = await api.list_all(res, namespace=namespace,
                                           label_selector=args.selector, field_selector=fields)
            # --watch-only skips the first listing, never a relist after 410 Gone.
            if not (args.watch_only and first):
                if args.output in ("yaml", "json", "name"):
                    for obj in items:
                        printer.event(obj)
                else:
                    printer.rows(items)
            relist = first = False
        try:
            async with api.watch(res, namespace=namespace, resource_version=rv,
                                 label_selector=args.selector, field_selector=fields,
                                 timeout_seconds=300) as stream:
                async for ev in stream:
                    if ev.resource_version:
                        rv = ev.resource_version
                    if ev.type != "BOOKMARK":
                        printer.event(ev.object)
        except errors.Gone:
            relist = True
