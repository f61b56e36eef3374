"""Container runtimes behind one protocol (``base.Runtime``).

``docker``: the Docker Engine API over a unix socket (Docker or Podman). ``process``:
local process groups supervised by ``shim.py``, limited by ``cgroups.py``. The pod
worker uses either through the protocol only.
"""
