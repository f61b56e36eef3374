"""meshproxy: the data plane, a uvloop HTTP/1.1 and TCP proxy run as a sidecar.

It never imports ``control``: it runs alone from a static config file and keeps
serving on its last known endpoints when the control plane is gone.
See docs/ARCHITECTURE.md for the map of its modules.
"""

__version__ = "0.1.0"
