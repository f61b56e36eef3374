"""The Kubernetes-style API server over the store.

Layers inside, bottom to top: ``resources`` (the kinds served) and ``kinds/`` (their
defaults and validation, on ``validation``), ``selectors``, ``patch``, ``storage``
(objects in the store), ``objects`` (write semantics), ``watchcache``/``watch``
(list-watch), ``gc`` (owner references), ``auth`` and ``tls``, ``handlers``,
``subresources`` and ``discovery`` (REST), ``server`` (the aiohttp app) and ``main``
(starting it). Entry points: :class:`ApiServer`, :func:`serve`, :func:`run_apiserver`; ``meshctl
apiserver`` is ``control.api.main.run_from_args``.
"""

from control.api.main import ApiServer, ApiServerConfig, run_apiserver, serve

__all__ = ["ApiServer", "ApiServerConfig", "run_apiserver", "serve"]
