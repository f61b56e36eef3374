"""The HorizontalPodAutoscaler: replica counts from live metrics (autoscaling/v2).

- ``algorithm``: Kubernetes' arithmetic (per-metric proposals with tolerance, missing
  and not-ready Pods, stabilisation windows and rate policies), pure, on a caller-given
  clock;
- ``source``: the metrics API read into per-Pod values (the ``MetricsSource`` seam) and
  the mesh metric names an HPA can target;
- ``evaluate``: one metric spec of an HPA → a proposal, its ``currentMetrics`` entry and
  the numbers in words;
- ``controller``: the HPA controller (scale subresource, status, Events), run by the
  controller manager;
- ``capacity``: the capacity report behind ``meshctl capacity``.

The metrics themselves come from ``control/metrics`` (collector, window) through the API
server's ``metrics.k8s.io`` API.
"""
