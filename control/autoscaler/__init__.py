"""The HorizontalPodAutoscaler: replica counts from live metrics (autoscaling/v2).

``algorithm`` holds Kubernetes' arithmetic (per-metric proposals with tolerance,
missing and not-ready Pods, stabilisation windows and rate policies) as pure code on a
caller-given clock; the controller that reads metrics and writes ``scale`` builds on it.
"""
