"""Controllers: level-triggered reconcilers that keep the cluster converged.

Each controller follows sample-controller: informers feed a work queue with keys; one
worker per key; ``reconcile(key)`` reads the cache, converges, writes status and never
asks which event fired. Pure decision logic lives in modules of its own (``podutil``,
``rollout``) so it is tested without a server.
"""
