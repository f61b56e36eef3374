"""The metrics pipeline: live CPU, memory and mesh traffic per Pod, for the autoscaler.

- ``window``: the samples (Pod, Node, mesh) and the short in-memory window that keeps
  them; pure, so the API server holds it (``control/api/metrics_api.py`` serves it as
  ``metrics.k8s.io/v1beta1``);
- ``scrape``: a sidecar's Prometheus ``/metrics`` → inbound request rate, p99 from the
  histogram buckets' difference over the window, in-flight requests;
- ``collector``: runs in the controller manager, polls the agents' ``/stats/summary``
  and the sidecars, pushes samples to the API server.

Readers: ``control/autoscaler/controller.py`` (the HPA), ``control/cli/top.py`` and the
capacity report (``control/autoscaler/capacity.py``).
"""
