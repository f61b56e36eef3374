"""The indexed cache: keys, the namespace index, custom indexes kept in step."""

from __future__ import annotations

import pytest

from control.client.cache import (
    Indexer,
    index_by_namespace,
    index_by_owner_uid,
    object_key,
    pods_by_node,
    split_key,
)


def pod(name: str, ns: str = "default", node: str | None = None, owner: str | None = None,
        rv: str = "1") -> dict:
    meta: dict = {"name": name, "namespace": ns, "resourceVersion": rv}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "kind": "ReplicaSet", "name": "rs"}]
    spec = {"nodeName": node} if node else {}
    return {"kind": "Pod", "metadata": meta, "spec": spec}


def test_keys_are_namespace_slash_name_or_bare_name_for_cluster_objects() -> None:
    """object_key/split_key round-trip for namespaced and cluster-scoped objects, and a
    malformed key is refused with a message naming it."""
    assert object_key(pod("a", "shop")) == "shop/a"
    assert object_key({"metadata": {"name": "node-1"}}) == "node-1"
    assert split_key("shop/a") == ("shop", "a")
    assert split_key("node-1") == (None, "node-1")
    with pytest.raises(ValueError, match="a/b/c"):
        split_key("a/b/c")
    with pytest.raises(ValueError, match=r"metadata\.name"):
        object_key({"kind": "Pod", "metadata": {}})


def test_pods_by_node_index_follows_binding_moves_and_deletes() -> None:
    """A custom index is updated when a Pod is bound, moved and deleted: by_index never
    returns a stale entry."""
    store = Indexer({"node": pods_by_node})
    store.add(pod("a"))
    store.add(pod("b", node="n1"))
    assert store.by_index("node", "n1") == [pod("b", node="n1")]
    assert store.index_values("node") == ["n1"], "an unbound pod is not indexed"
    store.update(pod("a", node="n1", rv="2"))
    assert store.index_keys("node", "n1") == ["default/a", "default/b"]
    store.update(pod("a", node="n2", rv="3"))
    assert store.index_keys("node", "n1") == ["default/b"]
    assert store.index_keys("node", "n2") == ["default/a"]
    store.delete("default/b")
    assert store.index_values("node") == ["n2"]
    assert len(store) == 1


def test_namespace_index_and_list_by_namespace() -> None:
    """list(namespace) uses the always-present namespace index."""
    store = Indexer()
    store.add(pod("a", "shop"))
    store.add(pod("b", "shop"))
    store.add(pod("a", "other"))
    assert [o["metadata"]["name"] for o in store.list("shop")] == ["a", "b"]
    assert len(store.list()) == 3
    assert store.get("other", "a") is not None
    assert store.get("nope", "a") is None


def test_replace_rebuilds_indexes_and_late_indexer_files_existing_objects() -> None:
    """replace() leaves exactly the given objects (indexes too); an index added later
    is filled from what is already stored; re-adding an index with the same function is
    harmless, with another function an error."""
    store = Indexer({"node": pods_by_node})
    store.add(pod("old", node="n1"))
    store.replace([pod("x", node="n2", owner="u1"), pod("y", owner="u1")])
    assert store.keys() == ["default/x", "default/y"]
    assert store.by_index("node", "n1") == []
    store.add_indexer("owner", index_by_owner_uid)
    assert store.index_keys("owner", "u1") == ["default/x", "default/y"]
    with pytest.raises(KeyError, match="no index named 'missing'"):
        store.by_index("missing", "v")
    store.add_indexer("owner", index_by_owner_uid)  # the same index again: a no-op
    assert store.index_keys("owner", "u1") == ["default/x", "default/y"]
    with pytest.raises(ValueError, match="already exists with another function"):
        store.add_indexer("owner", pods_by_node)
    explicit = Indexer({"namespace": index_by_namespace})  # the built-in, asked for by name
    explicit.add(pod("a", "shop"))
    assert explicit.index_keys("namespace", "shop") == ["shop/a"]
