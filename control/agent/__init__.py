"""The node agent (the kubelet of this system): runs the Pods bound to its node.

``spec`` parses the Pod fields it supports; ``runtime/`` runs containers (Docker Engine
API or local processes) behind one protocol; ``ports`` allocates host ports; ``probes``
and ``restart`` hold the probe and back-off state machines on a controllable
``clock``; ``pod_worker`` reconciles one Pod and renders its status; ``node`` reads the
machine's capacity; ``main`` is the command line entry point.
"""
