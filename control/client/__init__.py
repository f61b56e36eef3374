"""The control plane's client library: every component talks to the API server with it.

Layers, bottom to top (each module's docstring has the details):

- ``clock``, ``ratelimit``, ``workqueue``, ``workers``: the controller machinery, a
  rate-limited, deduplicating work queue with one worker per key and the loop that
  calls ``reconcile(key)``;
- ``cache``: the indexed local store informers fill;
- ``config``: where the server is and the credentials (kubeconfig-like file, env, flags);
- ``errors``, ``resources``, ``rest``: typed errors, resource names and paths, the async
  REST client (list, watch, create, replace, merge-patch, delete, scale, bind);
- ``informer``: list-then-watch into the cache with resume, relist on 410, resync;
- ``manifests``: loading YAML/JSON manifests and ``apply``.

Import from the modules (``from control.client.informer import Informer``); this package
re-exports nothing so importing one piece does not drag in aiohttp.
"""
