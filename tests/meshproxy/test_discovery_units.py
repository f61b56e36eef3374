"""Discovery's pure parts: resolving a Service port to an endpoint set, the config
section's validation, back-off with full jitter, and the cache file's atomic write and
refusals. The wire protocol and the proxy are tested in test_discovery.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshproxy.config import ConfigError, parse_config
from meshproxy.config.discovery import BackoffConfig
from meshproxy.discovery import cache
from meshproxy.discovery.policy import PolicyRefused, merge, parse_policy, policy_for
from meshproxy.discovery.resolve import Unresolved, endpoint_set
from meshproxy.discovery.watch import Backoff

SERVICE = {"metadata": {"name": "catalog"},
           "spec": {"ports": [{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]}}
ENDPOINTS = {"metadata": {"name": "catalog"}, "subsets": [
    {"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}],
     "notReadyAddresses": [{"ip": "10.0.0.9"}],
     "ports": [{"name": "http", "port": 31001}, {"name": "admin", "port": 31002}]},
    {"addresses": [{"ip": "10.0.0.3"}, {"ip": "10.0.0.1"}],
     "ports": [{"name": "http", "port": 31005}]},
]}


def test_port_by_name_or_number_gives_ready_addresses_sorted_without_duplicates():
    """A name picks that port in every subset; a number is resolved to its name through
    the Service; no port: the Service's first; not-ready addresses never appear."""
    by_name = endpoint_set(ENDPOINTS, port="http", service=None)
    assert by_name == [("10.0.0.1", 31001, 1), ("10.0.0.1", 31005, 1),
                       ("10.0.0.2", 31001, 1), ("10.0.0.3", 31005, 1)]
    assert endpoint_set(ENDPOINTS, port=80, service=SERVICE) == by_name
    assert endpoint_set(ENDPOINTS, port=None, service=SERVICE) == by_name
    assert endpoint_set(ENDPOINTS, port=9000, service=SERVICE) == [
        ("10.0.0.1", 31002, 1), ("10.0.0.2", 31002, 1)]
    assert endpoint_set(None, port="http", service=SERVICE) == []


def test_unresolvable_ports_say_why():
    """A number needs the Service (not known yet) and must be one of its ports; an
    unknown Service with no port asked uses a subset's only port, else nothing."""
    with pytest.raises(Unresolved, match="not known yet"):
        endpoint_set(ENDPOINTS, port=80, service=None)
    with pytest.raises(Unresolved, match="no port 81"):
        endpoint_set(ENDPOINTS, port=81, service=SERVICE)
    # Without the Service: only subsets with a single port count.
    assert endpoint_set(ENDPOINTS, port=None, service=None) == [
        ("10.0.0.1", 31005, 1), ("10.0.0.3", 31005, 1)]


BASE = """
listeners:
  - {protocol: http, name: out, port: 0, routes: [{name: all, cluster: catalog}]}
clusters:
  - {name: catalog%s}
discovery:
  server: %s
  clusters: [%s]
"""


@pytest.mark.parametrize(("endpoints", "server", "follow", "path", "message"), [
    (", endpoints: [127.0.0.1:1]", "https://a:1", "{cluster: catalog, service: catalog}",
     "discovery.clusters[0].cluster", "remove its static endpoints"),
    ("", "https://a:1", "{cluster: nope, service: catalog}",
     "discovery.clusters[0].cluster", "no cluster named 'nope'"),
    ("", "https://a:1", "{cluster: catalog, service: Catalog}",
     "discovery.clusters[0].service", "not a DNS-1123 label"),
    ("", "ftp://a:1", "{cluster: catalog, service: catalog}",
     "discovery.server", "not an API server URL"),
    ("", "https://a:1", "{cluster: catalog, service: a}, {cluster: catalog, service: b}",
     "discovery.clusters", "follows more than one service"),
])
def test_bad_discovery_sections_name_the_field(endpoints, server, follow, path, message):
    """Each mistake is refused with the field's path and the reason."""
    with pytest.raises(ConfigError) as ei:
        parse_config(BASE % (endpoints, server, follow))
    assert any(p.startswith(path) and message in m for p, m in ei.value.problems), \
        ei.value.problems


def test_good_section_resolves_service_keys_and_namespaces():
    cfg = parse_config(BASE % ("", "https://api:6443/", "{cluster: catalog, service: "
                                                       "shop/catalog, port: 80}")).config
    assert cfg.discovery is not None
    assert cfg.discovery.server == "https://api:6443"
    assert cfg.discovery.service_key(cfg.discovery.clusters[0]) == ("shop", "catalog")
    assert cfg.discovery.namespaces() == ("shop",)
    assert cfg.discovery.clusters[0].port == 80


def test_backoff_is_full_jitter_capped_and_resets():
    """The n-th wait is rng * min(max, initial * 2**n): with rng = 1 the caps double up
    to max; with rng = 0 the wait is 0 (full jitter); reset starts over."""
    top = Backoff(BackoffConfig(initial=0.5, max=3.0), rng=lambda: 1.0)
    assert [top.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    top.reset()
    assert top.next() == 0.5
    assert Backoff(BackoffConfig(), rng=lambda: 0.0).next() == 0.0
    half = Backoff(BackoffConfig(initial=1.0, max=8.0), rng=lambda: 0.5)
    assert [half.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_cache_round_trips_and_refuses_other_servers_and_garbage(tmp_path: Path):
    """What is saved loads back for the same server; a file for another server, a
    corrupt file or a foreign format is ignored (None), never half-used; no temp file
    is left after a save."""
    path = tmp_path / "d" / "cache.json"
    snap = cache.Snapshot(server="https://a:1", synced_at=123.5,
                          objects={"endpoints": {"default/catalog": ENDPOINTS}})
    cache.save(path, snap)
    assert os.listdir(path.parent) == ["cache.json"]
    back = cache.load(path, server="https://a:1")
    assert back == snap
    assert cache.load(path, server="https://b:1") is None
    path.write_text("{not json")
    assert cache.load(path, server="https://a:1") is None
    path.write_text(json.dumps({"format": 99, "objects": {}}))
    assert cache.load(path, server="https://a:1") is None
    assert cache.load(tmp_path / "missing.json", server="https://a:1") is None


POLICY_BASE = """
listeners:
  - protocol: http
    name: out
    port: 0
    routes:
      - {name: pinned, match: {prefix: /pinned}, cluster: catalog, retry: {attempts: 4}}
      - {name: rest, cluster: catalog}
      - {name: other, match: {prefix: /x}, cluster: local}
clusters:
  - {name: catalog, lb_policy: least_request}
  - {name: local, endpoints: [127.0.0.1:1]}
"""


def test_policy_fields_fill_what_the_file_leaves_unset_per_field():
    """A policy's cluster and route fields land on the followed cluster and its routes,
    except where the file set the field itself (file wins, field by field); routes to
    other clusters are untouched."""
    cfg = parse_config(POLICY_BASE).config
    sp = parse_policy({"metadata": {"name": "p", "namespace": "default"}, "spec": {
        "service": "catalog",
        "cluster": {"load_balancer": {"policy": "peak_ewma"},
                    "breaker": {"consecutive_failures": 3}},
        "route": {"retry": {"attempts": 3}, "rate_limit": {"rate": 50}}}})
    merged = merge(cfg, {"catalog": sp})
    catalog, local = merged.clusters
    assert catalog.load_balancer.policy == "least_request"  # the file's
    assert catalog.breaker is not None
    assert catalog.breaker.consecutive_failures == 3         # the policy's
    assert local == cfg.clusters[1]
    pinned, rest, other = merged.listeners[0].routes
    assert pinned.retry is not None
    assert pinned.retry.attempts == 4                        # the file's
    assert rest.retry is not None
    assert rest.retry.attempts == 3                          # the policy's
    assert pinned.rate_limit is not None
    assert rest.rate_limit is not None
    assert rest.rate_limit.rate == 50
    assert other == cfg.listeners[0].routes[2]
    assert merge(cfg, {}) is cfg


def test_unparsable_policy_is_refused_with_field_paths():
    """A spec the ServicePolicy model rejects is a PolicyRefused naming the object and
    the field; a spec that is not an object is refused too."""
    with pytest.raises(PolicyRefused) as ei:
        parse_policy({"metadata": {"name": "p", "namespace": "shop"}, "spec": {
            "service": "catalog", "cluster": {"breaker": {"consecutive_failures": 0}}}})
    [(where, _)] = ei.value.problems
    assert where == "trafficpolicy shop/p: spec.cluster.breaker.consecutive_failures"
    with pytest.raises(PolicyRefused, match="must be an object"):
        parse_policy({"metadata": {"name": "p"}, "spec": "nope"})


def test_first_policy_by_name_governs_a_service():
    policies = {"default/b": {"spec": {"service": "catalog"}},
                "default/a": {"spec": {"service": "catalog"}},
                "default/c": {"spec": {"service": "cart"}},
                "shop/a": {"spec": {"service": "catalog"}}}
    assert policy_for(policies, namespace="default", service="catalog") is policies["default/a"]
    assert policy_for(policies, namespace="default", service="payment") is None
