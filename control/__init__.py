"""control: the control plane (store, API server, scheduler, controllers, node agent).

Layered like kopf: the store and the API machinery at the bottom, then the API server,
then the client library (informers, work queues), then the scheduler, controllers,
agent and autoscaler, then the ``meshctl`` CLI. Lower layers never import higher ones.
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
