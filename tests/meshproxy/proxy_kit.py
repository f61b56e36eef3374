"""Config snippets shared by the proxy tests (importable; conftest modules are not)."""

from __future__ import annotations


def http_config(cluster_endpoints: list[str], *, routes: str | None = None,
                limits: str = "", cluster_extra: str = "", listener_extra: str = "") -> str:
    """A one-listener config on a kernel-chosen port, cluster ``c``."""
    eps = ", ".join(f'"{e}"' for e in cluster_endpoints)
    routes = routes or "[{name: all, cluster: c}]"
    return f"""
admin: {{enabled: false}}
listeners:
  - {{protocol: http, name: web, port: 0, routes: {routes} {limits} {listener_extra}}}
clusters:
  - {{name: c, endpoints: [{eps}] {cluster_extra}}}
"""
