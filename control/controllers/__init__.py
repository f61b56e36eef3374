"""Controllers: level-triggered reconcilers that keep the cluster converged.

Each controller follows sample-controller: informers feed a work queue with keys; one
worker per key; ``reconcile(key)`` reads the cache, converges, writes status and never
asks which event fired (machinery in ``control/client``). Pure decision logic lives in
modules of its own so it is tested without a server:

- decisions: ``podutil`` (ready, available, deletion order), ``rollout`` (maxSurge /
  maxUnavailable arithmetic, template hash), ``endpoints`` (Endpoints from Pods),
  ``nodehealth`` (NotReady, rate-limited eviction, disruption states);
- controllers: ``replicaset``, ``deployment`` (+ ``rollout_ops`` for undo, pause,
  resume, history, status), ``endpoints_controller``, ``nodelifecycle``;
- machinery: ``events`` (aggregating Event recorder), ``leader`` (leader election by
  compare-and-swap on a leader record), ``manager`` (runs the scheduler and every
  controller under one election), ``main`` (``meshctl controller-manager`` and
  ``meshctl rollout``).
"""
