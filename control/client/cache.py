"""The informer's local store: objects by ``namespace/name`` with custom indexes.

client-go's ``cache.Indexer``: a dict of objects keyed by :func:`object_key`, plus any
number of named indexes, each a function from an object to the index values it files
under (``pods_by_node`` files a Pod under its ``spec.nodeName``). ``by_index(name, v)``
returns the objects filed under ``v`` without scanning the store, which is what makes a
scheduler's "what is already on node X" or an endpoints controller's "pods in this
namespace" cheap with thousands of objects.

Objects are the API's JSON dicts and are shared, not copied: callers must treat them as
read-only and ``copy.deepcopy`` before changing one (as client-go requires). The store
is asyncio-local and not thread-safe: one event loop owns it.

Neighbours: :mod:`control.client.informer` fills it; controllers read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]

NAMESPACE_INDEX = "namespace"


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for namespaced objects, ``name`` for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError(f"object has no metadata.name: kind={obj.get('kind')!r}")
    ns = meta.get("namespace")
    return f"{ns}/{name}" if ns else str(name)


def split_key(key: str) -> tuple[str | None, str]:
    """``"ns/name"`` -> ``("ns", "name")``; ``"name"`` -> ``(None, "name")``."""
    ns, sep, name = key.partition("/")
    if not sep:
        return None, key
    if not ns or not name or "/" in name:
        raise ValueError(f"malformed object key {key!r}: expected 'namespace/name' or 'name'")
    return ns, name


def index_by_namespace(obj: Obj) -> list[str]:
    ns = (obj.get("metadata") or {}).get("namespace")
    return [ns] if ns else []


def index_by_field(path: str) -> IndexFunc:
    """An index on a dotted field path, e.g. ``index_by_field("spec.nodeName")`` files
    each Pod under its node; objects where the field is empty are not indexed."""
    parts = path.split(".")

    def index(obj: Obj) -> list[str]:
        cur: Any = obj
        for p in parts:
            if not isinstance(cur, Mapping):
                return []
            cur = cur.get(p)
        return [str(cur)] if cur not in (None, "") else []

    index.__name__ = f"index_by_{path.replace('.', '_')}"
    return index


def index_by_owner_uid(obj: Obj) -> list[str]:
    """Files an object under the uid of each of its ``ownerReferences``."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return [r["uid"] for r in refs if isinstance(r, Mapping) and r.get("uid")]


pods_by_node = index_by_field("spec.nodeName")


class Indexer:
    """Objects by key, with named secondary indexes kept in step on every change.

    A namespace index is always present (``by_index("namespace", ns)``).
    """

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self._items: dict[str, Obj] = {}
        self._index_funcs: dict[str, IndexFunc] = {NAMESPACE_INDEX: index_by_namespace}
        self._indices: dict[str, dict[str, set[str]]] = {NAMESPACE_INDEX: {}}
        for name, fn in (indexers or {}).items():
            self.add_indexer(name, fn)

    def add_indexer(self, name: str, fn: IndexFunc) -> None:
        """Add an index; existing objects are filed into it at once. Adding the same
        function under the same name again is a no-op (the namespace index is built in,
        and several controllers may ask for one index); another function is an error."""
        existing = self._index_funcs.get(name)
        if existing is fn:
            return
        if existing is not None:
            raise ValueError(f"index {name!r} already exists with another function "
                             f"({existing!r})")
        self._index_funcs[name] = fn
        self._indices[name] = {}
        for key, obj in self._items.items():
            self._file(name, key, obj)

    def index_function(self, name: str) -> IndexFunc | None:
        """The function behind index ``name`` (None when there is no such index)."""
        return self._index_funcs.get(name)

    # -- writes (the informer calls these) -------------------------------------------

    def add(self, obj: Obj) -> Obj | None:
        """Insert or replace ``obj``; return the object it replaced, if any."""
        key = object_key(obj)
        old = self._items.get(key)
        if old is not None:
            self._unfile_all(key, old)
        self._items[key] = obj
        for name in self._index_funcs:
            self._file(name, key, obj)
        return old

    update = add

    def delete(self, obj_or_key: Obj | str) -> Obj | None:
        """Remove an object (by object or key); return what was stored, if anything."""
        key = obj_or_key if isinstance(obj_or_key, str) else object_key(obj_or_key)
        old = self._items.pop(key, None)
        if old is not None:
            self._unfile_all(key, old)
        return old

    def replace(self, objs: Iterable[Obj]) -> None:
        """Make the store hold exactly ``objs`` (after a relist)."""
        self._items = {}
        self._indices = {name: {} for name in self._index_funcs}
        for obj in objs:
            self.add(obj)

    # -- reads -----------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def get_by_key(self, key: str) -> Obj | None:
        return self._items.get(key)

    def list(self, namespace: str | None = None) -> list[Obj]:
        """All objects, or those in ``namespace``."""
        if namespace is None:
            return list(self._items.values())
        return self.by_index(NAMESPACE_INDEX, namespace)

    def keys(self) -> list[str]:
        return list(self._items)

    def by_index(self, index: str, value: str) -> list[Obj]:
        """Objects filed under ``value`` in ``index`` (KeyError for an unknown index)."""
        keys = self._index(index).get(value, ())
        return [self._items[k] for k in sorted(keys)]

    def index_keys(self, index: str, value: str) -> list[str]:
        return sorted(self._index(index).get(value, ()))

    def index_values(self, index: str) -> list[str]:
        """Every value that has at least one object in ``index``."""
        return sorted(self._index(index))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return f"<Indexer {len(self._items)} objects, indexes={sorted(self._index_funcs)}>"

    # -- internals -------------------------------------------------------------------

    def _index(self, name: str) -> dict[str, set[str]]:
        try:
            return self._indices[name]
        except KeyError:
            raise KeyError(f"no index named {name!r}; have {sorted(self._indices)}") from None

    def _file(self, name: str, key: str, obj: Obj) -> None:
        idx = self._indices[name]
        for value in self._index_funcs[name](obj):
            idx.setdefault(value, set()).add(key)

    def _unfile_all(self, key: str, obj: Obj) -> None:
        for name, fn in self._index_funcs.items():
            idx = self._indices[name]
            for value in fn(obj):
                keys = idx.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del idx[value]
