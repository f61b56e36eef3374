"""The scheduler: binds pending Pods to Nodes, filtering then scoring (kube-scheduler's
framework, reduced to what this system serves).

- ``podinfo``: what a Pod asks for (requests, host ports, selectors, tolerations, owner).
- ``cache``: per-node accounting of what is bound, including bindings just made
  ("assumed") before the API server confirms them.
- ``plugins``: filter and score plugins; each returns a status or a score, never raises.
- ``framework``: runs the plugins for one Pod and explains a failure
  ("0/3 nodes are available: 2 Insufficient memory, 1 node(s) were not ready").
- ``scheduler``: the loop: informers for Pods and Nodes, a queue of pending Pods,
  concurrent bindings through ``pods/{name}/binding``, FailedScheduling conditions and
  Events, retries when the cluster changes.
"""
