"""One informer per resource for a whole process: client-go's SharedInformerFactory.

A controller manager runs several controllers that all watch Pods; each opening its own
list and watch would multiply the API server's load and the memory held. Controllers
ask the factory instead: ``factory.informer("pods")`` returns the same
:class:`~control.client.informer.Informer` for the same resource, namespace and
selectors, and indexes asked for by different controllers are added to that one cache.
``start()`` starts every informer made so far, ``wait_synced()`` waits for all of them.

Neighbours: :mod:`control.client.informer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from control.client.cache import IndexFunc
from control.client.clock import Clock
from control.client.informer import Informer
from control.client.resources import Resource, lookup
from control.client.rest import ApiClient

_Key = tuple[str, str | None, str | None, str | None]


class InformerFactory:
    """Shared informers over one :class:`ApiClient`."""

    def __init__(self, client: ApiClient, *, resync_period: float | None = None,
                 clock: Clock | None = None) -> None:
        self.client = client
        self.resync_period = resync_period
        self._clock = clock
        self._informers: dict[_Key, Informer] = {}
        self._started = False

    def informer(self, resource: Resource | str, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 indexers: Mapping[str, IndexFunc] | None = None) -> Informer:
        """The shared informer for this resource and scope, created on first use.

        An index name already present must be the same function (two controllers that
        call different functions by one name would read each other's index)."""
        res = resource if isinstance(resource, Resource) else lookup(resource)
        key = (f"{res.plural}.{res.group}", namespace, label_selector, field_selector)
        inf = self._informers.get(key)
        if inf is None:
            inf = Informer(self.client, res, namespace=namespace, label_selector=label_selector,
                           field_selector=field_selector, resync_period=self.resync_period,
                           indexers=indexers, clock=self._clock)
            self._informers[key] = inf
            if self._started:
                inf.start()
            return inf
        for name, fn in (indexers or {}).items():
            existing = inf.store.index_function(name)
            if existing is None:
                inf.store.add_indexer(name, fn)
            elif existing is not fn:
                raise ValueError(f"index {name!r} on {res.plural} is already defined by "
                                 f"another function ({existing!r})")
        return inf

    def start(self) -> None:
        """Start every informer made so far (and those made later, on creation)."""
        self._started = True
        for inf in self._informers.values():
            inf.start()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait until every informer has completed its first list."""
        await asyncio.wait_for(
            asyncio.gather(*(inf.wait_synced() for inf in self._informers.values())), timeout)

    async def stop(self) -> None:
        self._started = False
        await asyncio.gather(*(inf.stop() for inf in self._informers.values()))

    async def __aenter__(self) -> InformerFactory:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __len__(self) -> int:
        return len(self._informers)
