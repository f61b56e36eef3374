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
  ``factory``: one shared informer per resource for all controllers of a process;
- ``manifests``: loading YAML/JSON manifests and ``apply``.

A controller, sample-controller style (handlers only enqueue; reconcile reads the
cache, is idempotent and never asks which event fired)::

    api = ApiClient(resolve())                     # or ClientConfig(server=..., token=...)
    pods = Informer(api, "pods", indexers={"node": pods_by_node}, resync_period=300)
    queue: WorkQueue[str] = WorkQueue(name="my-controller")
    pods.add_handler(on_add=lambda o: queue.add(object_key(o)),
                     on_update=lambda old, new: queue.add(object_key(new)),
                     on_delete=lambda o: queue.add(object_key(o)))

    async def reconcile(key: str) -> float | None:
        ns, name = split_key(key)
        pod = pods.get(ns, name)                   # read-only: deepcopy before changing
        ...                                        # converge; raise to retry with back-off,
        return None                                # PermanentError to drop, n to look again

    async with api, pods:
        await pods.wait_synced()
        await run_workers(queue, reconcile, workers=2)   # until queue.shut_down()

Import from the modules (``from control.client.informer import Informer``); this package
re-exports nothing so importing one piece does not drag in aiohttp.
"""
