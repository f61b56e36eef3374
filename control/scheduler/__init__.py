"""The scheduler: binds pending Pods to Nodes, filtering then scoring (kube-scheduler's
framework, reduced to what this system serves).

- ``podinfo``: what a Pod asks for (requests, host ports, selectors, tolerations, owner).
- ``cache``: per-node accounting of what is bound, including bindings just made
  ("assumed") before the API server confirms them, kept incrementally (requests, owners
  per node, host ports in use), and the zone-interleaved order nodes are examined in.
- ``plugins``: filter plugins (with a PreFilter that skips what a Pod does not ask for)
  and list-wise score plugins; each returns a reason or scores, never raises.
- ``framework``: runs the plugins for one Pod (stopping early on big clusters,
  ``percentageOfNodesToScore``) and explains a failure
  ("0/3 nodes are available: 2 Insufficient memory, 1 node(s) were not ready").
- ``scheduler``: the loop: informers for Pods and Nodes, a queue of pending Pods,
  concurrent bindings through ``pods/{name}/binding``, FailedScheduling conditions and
  Events, retries when the cluster changes.
"""
