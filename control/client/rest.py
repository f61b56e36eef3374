"""An asyncio REST client for the Kubernetes-style API server (aiohttp).

:class:`ApiClient` speaks the API's conventions and nothing more: JSON bodies, bearer
tokens, TLS verified against a CA file (or, when told, not verified), ``Status`` error
bodies mapped to typed errors (:mod:`control.client.errors`), list paging with
``limit``/``continue``, JSON merge patches, the ``status``/``scale``/``binding``
subresources, and watches: ``?watch=true&resourceVersion=N`` answered by
newline-delimited JSON events (``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK``,
``ERROR``). A watch asking for a compacted revision raises :class:`~errors.Gone`
whether the server says so with HTTP 410 or with an ``ERROR`` event carrying a 410
``Status``, as kube-apiserver does.

Resources are named by a :class:`~control.client.resources.Resource` or any name
:func:`~control.client.resources.lookup` understands (``"pods"``, ``"deploy"``).
For namespaced kinds, the namespace is the argument, else the object's
``metadata.namespace``, else the config's default namespace; ``list``/``watch`` with
``namespace=None`` span all namespaces.

Neighbours: :mod:`control.client.informer` (list-then-watch on top of this),
:mod:`control.client.manifests` (apply), :mod:`control.cli` (meshctl verbs).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from control.client import errors
from control.client.config import ClientConfig
from control.client.resources import Resource, lookup, path

Obj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
PropagationPolicy = Literal["Foreground", "Background", "Orphan"]
MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500  # objects per list page: bounded memory per request, few round trips


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: Obj

    @property
    def resource_version(self) -> str | None:
        return (self.object.get("metadata") or {}).get("resourceVersion")


def _resource(res: Resource | str) -> Resource:
    return res if isinstance(res, Resource) else lookup(res)


def _transport_error(e: BaseException, what: str) -> errors.ConnectionFailed:
    return errors.ConnectionFailed(f"{what}: {type(e).__name__}: {e}".rstrip(": "))


class ApiClient:
    """One API server, one connection pool. Use ``async with ApiClient(cfg) as api``."""

    def __init__(self, config: ClientConfig, *, timeout: float = 30.0,
                 user_agent: str = "mesh-client") -> None:
        self.config = config
        self.timeout = timeout
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.config.server.startswith("https:"):
            return True
        if self.config.insecure:
            return False
        return ssl.create_default_context(cafile=self.config.ca_file)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=64)
            self._session = aiohttp.ClientSession(
                base_url=self.config.server, headers=self._headers, connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- raw requests ----------------------------------------------------------------

    async def request(self, method: str, url: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        """Send one request; return the decoded JSON answer or raise a typed error."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else None
        try:
            async with self.session.request(method, url, params=params, data=data,
                                            headers=headers) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise errors.from_status(resp.status, _decode(raw),
                                             fallback_message=resp.reason or "")
                return _decode(raw) if raw else None
        except errors.ClientError:
            raise
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as e:
            raise _transport_error(e, f"{method} {self.config.server}{url}") from e

    # -- verbs -----------------------------------------------------------------------

    def _ns(self, res: Resource, namespace: str | None, obj: Obj | None = None) -> str | None:
        if not res.namespaced:
            return None
        if namespace:
            return namespace
        if obj is not None and (obj.get("metadata") or {}).get("namespace"):
            return str(obj["metadata"]["namespace"])
        return self.config.namespace

    async def get(self, res: Resource | str, name: str, *, namespace: str | None = None) -> Obj:
        r = _resource(res)
        return await self.request("GET", path(r, namespace=self._ns(r, namespace), name=name))

    async def list(self, res: Resource | str, *, namespace: str | None = None,
                   label_selector: str | None = None, field_selector: str | None = None,
                   limit: int | None = None, continue_token: str | None = None) -> Obj:
        """One page of a list (a ``*List`` object). ``namespace=None``: all namespaces."""
        r = _resource(res)
        params = _selectors(label_selector, field_selector)
        if limit:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        return await self.request("GET", path(r, namespace=namespace), params=params)

    async def list_all(self, res: Resource | str, *, namespace: str | None = None,
                       label_selector: str | None = None, field_selector: str | None = None,
                       page_size: int = LIST_PAGE) -> tuple[list[Obj], str]:
        """Every matching object, following ``continue`` tokens, and the list's
        resourceVersion (where a watch should start). Items get ``kind``/``apiVersion``."""
        r = _resource(res)
        items: list[Obj] = []
        token: str | None = None
        rv = ""
        while True:
            page = await self.list(r, namespace=namespace, label_selector=label_selector,
                                   field_selector=field_selector, limit=page_size,
                                   continue_token=token)
            meta = page.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion") or "")
            for item in page.get("items") or []:
                item.setdefault("kind", r.kind)
                item.setdefault("apiVersion", r.api_version)
                items.append(item)
            token = meta.get("continue")
            if not token:
                return items, rv

    async def create(self, res: Resource | str, obj: Obj, *,
                     namespace: str | None = None) -> Obj:
        r = _resource(res)
        return await self.request("POST", path(r, namespace=self._ns(r, namespace, obj)),
                                  body=obj)

    async def replace(self, res: Resource | str, obj: Obj, *, namespace: str | None = None,
                      subresource: Literal["status", "scale"] | None = None) -> Obj:
        """PUT ``obj`` (its ``metadata.resourceVersion`` makes it conditional: 409 when
        stale)."""
        r = _resource(res)
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise ValueError("replace needs metadata.name in the object")
        url = path(r, namespace=self._ns(r, namespace, obj), name=name, subresource=subresource)
        return await self.request("PUT", url, body=obj)

    async def replace_status(self, res: Resource | str, obj: Obj) -> Obj:
        return await self.replace(res, obj, subresource="status")

    async def patch(self, res: Resource | str, name: str, patch: Obj, *,
                    namespace: str | None = None,
                    subresource: Literal["status", "scale"] | None = None) -> Obj:
        """Apply a JSON merge patch (RFC 7386): keys set replace, ``None`` deletes."""
        r = _resource(res)
        url = path(r, namespace=self._ns(r, namespace), name=name, subresource=subresource)
        return await self.request("PATCH", url, body=patch, content_type=MERGE_PATCH)

    async def delete(self, res: Resource | str, name: str, *, namespace: str | None = None,
                     propagation_policy: PropagationPolicy | None = None,
                     resource_version: str | None = None, uid: str | None = None,
                     grace_period_seconds: int | None = None) -> Obj:
        """Delete one object (conditional on ``resource_version`` and/or ``uid`` when
        given); returns what the server answers (the object, or a ``Status``).
        ``grace_period_seconds``: a bound Pod's grace (None: its own
        ``terminationGracePeriodSeconds``; 0: at once, without waiting for its node)."""
        r = _resource(res)
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            if grace_period_seconds < 0:
                raise ValueError(f"grace_period_seconds must be >= 0, got "
                                 f"{grace_period_seconds}")
            body["gracePeriodSeconds"] = grace_period_seconds
        preconditions = {k: v for k, v in (("resourceVersion", resource_version),
                                           ("uid", uid)) if v}
        if preconditions:
            body["preconditions"] = preconditions
        url = path(r, namespace=self._ns(r, namespace), name=name)
        return await self.request("DELETE", url, body=body)

    async def get_scale(self, res: Resource | str, name: str, *,
                        namespace: str | None = None) -> Obj:
        r = _resource(res)
        url = path(r, namespace=self._ns(r, namespace), name=name, subresource="scale")
        return await self.request("GET", url)

    async def scale(self, res: Resource | str, name: str, replicas: int, *,
                    namespace: str | None = None) -> Obj:
        """Set ``spec.replicas`` through the ``scale`` subresource."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        return await self.patch(res, name, {"spec": {"replicas": replicas}},
                                namespace=namespace, subresource="scale")

    async def bind(self, pod: str, node: str, *, namespace: str | None = None) -> Obj:
        """Bind a Pod to a node (``pods/{name}/binding``), as the scheduler does."""
        r = lookup("pods")
        ns = self._ns(r, namespace)
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": pod, "namespace": ns},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        url = path(r, namespace=ns, name=pod, subresource="binding")
        return await self.request("POST", url, body=binding)

    def watch(self, res: Resource | str, *, namespace: str | None = None,
              resource_version: str | None = None, label_selector: str | None = None,
              field_selector: str | None = None, timeout_seconds: int | None = None,
              bookmarks: bool = True) -> WatchStream:
        """A watch stream: ``async with api.watch("pods", resource_version=rv) as w:
        async for event in w: ...``. Ends when the server closes the stream."""
        r = _resource(res)
        params = _selectors(label_selector, field_selector)
        params["watch"] = "true"
        if bookmarks:
            params["allowWatchBookmarks"] = "true"
        if resource_version:
            params["resourceVersion"] = resource_version
        if timeout_seconds:
            params["timeoutSeconds"] = str(timeout_seconds)
        return WatchStream(self, path(r, namespace=namespace), params, timeout_seconds)


class WatchStream:
    """One open watch: an async context manager and an async iterator of
    :class:`WatchEvent`. Leaving the ``async with`` closes the connection."""

    def __init__(self, client: ApiClient, url: str, params: dict[str, str],
                 timeout_seconds: int | None) -> None:
        self._client = client
        self._url = url
        self._params = params
        # No total timeout: a watch lives long. A read timeout catches a silent peer;
        # the server closes the stream at timeoutSeconds, so allow that plus a margin.
        read = (timeout_seconds + 30) if timeout_seconds else None
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=client.timeout,
                                              sock_read=read)
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> WatchStream:
        where = f"watch {self._client.config.server}{self._url}"
        try:
            resp = await self._client.session.get(self._url, params=self._params,
                                                  timeout=self._timeout)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as e:
            raise _transport_error(e, where) from e
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                resp.release()
                raise _transport_error(e, where) from e
            resp.release()
            raise errors.from_status(resp.status, _decode(raw), fallback_message=resp.reason or "")
        self._resp = resp
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Drop the stream's connection. Aborted, not closed: a TLS close waits for the
        server's close_notify (up to half a minute), and a caller that ends its event
        loop right after (a CLI verb) would leave that socket to the garbage collector.
        Nothing is lost: a watch has nothing more to send."""
        resp, self._resp = self._resp, None
        if resp is None:
            return
        conn = resp.connection
        transport = conn.transport if conn is not None else None
        resp.close()
        if transport is not None:
            transport.abort()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        if self._resp is None:
            raise RuntimeError("use 'async with client.watch(...) as stream' before iterating")
        buf = b""
        try:
            # Split lines ourselves: StreamReader.readline caps line length, and one
            # event carries a whole object.
            async for chunk in self._resp.content.iter_any():
                *lines, buf = (buf + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(line.strip())
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _transport_error(e, f"watch {self._url} broke") from e
        if buf.strip():
            yield _event(buf.strip())


def _event(line: bytes) -> WatchEvent:
    try:
        data = json.loads(line)
    except ValueError as e:
        raise errors.ConnectionFailed(f"watch stream sent a line that is not JSON: "
                                      f"{line[:200]!r}") from e
    etype = data.get("type")
    obj = data.get("object") or {}
    if etype == "ERROR":
        code = int(obj.get("code") or 500) if isinstance(obj, dict) else 500
        raise errors.from_status(code, obj)
    if etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        raise errors.ConnectionFailed(f"watch stream sent an unknown event type {etype!r}")
    return WatchEvent(etype, obj)


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    return params


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()


async def wait_ready(client: ApiClient, *, timeout: float = 10.0) -> None:
    """Wait until ``/readyz`` answers 200 (a helper for starting components)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Exception | None = None
    while loop.time() < deadline:
        try:
            await client.request("GET", "/readyz")
            return
        except errors.ClientError as e:
            last = e
            await asyncio.sleep(0.05)
    raise errors.ConnectionFailed(f"API server at {client.config.server} not ready after "
                                  f"{timeout}s: {last}")
