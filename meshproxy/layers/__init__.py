"""The per-route request path as a stack of layers (linkerd2-proxy's ``Layer``s).

A :class:`~meshproxy.layers.base.Handler` turns an :class:`Exchange` into a
:class:`Response`; a layer is a ``Handler`` built around an inner ``Handler``. One
module per concern:

- ``base``: the ``Handler`` / ``Layer`` protocols
- ``forward``: the innermost handler, one attempt to one endpoint of the cluster
- ``timeout``: the route timeout (all attempts), as ``UpstreamTimeout``
- ``rescue``: the one place that maps the error tree (:mod:`meshproxy.errors`) to local
  replies

:mod:`meshproxy.stack` assembles them, in one ordered list, per route.
"""

from meshproxy.layers.base import Handler, Layer
from meshproxy.layers.forward import Forward
from meshproxy.layers.rescue import Rescue
from meshproxy.layers.timeout import RouteTimeout

__all__ = ["Forward", "Handler", "Layer", "Rescue", "RouteTimeout"]
