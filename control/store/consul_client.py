"""py-consul's asyncio client, with the one part of it that current aiohttp rejects
replaced.

``consul.aio.HTTPClient`` builds its ``aiohttp.TCPConnector`` with ``verify_ssl=`` and
``ssl_context=``, both deprecated in aiohttp 3.x and warning on every client created
(an error under this project's warnings-as-errors tests). :class:`Client` is
``consul.aio.Consul`` with a connector built from ``ssl=`` instead; requests,
callbacks and every endpoint (``kv``, ``txn``, ``session``) are py-consul's own.

Used only by ``consul.py``.
"""

from __future__ import annotations

import ssl

import aiohttp
import consul.aio
from consul import base


class _HTTPClient(consul.aio.HTTPClient):
    def __init__(self, host: str, port: int, scheme: str, *, verify: bool | str = True,
                 cert: str | tuple[str, str] | None = None,
                 timeout: float | None = None) -> None:
        base.HTTPClient.__init__(self, host, port, scheme, verify, cert)
        self.loop = None
        tls: ssl.SSLContext | bool = False
        if scheme == "https":
            tls = ssl.create_default_context()
            if isinstance(verify, str):
                tls.load_verify_locations(verify)
            elif not verify:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
            if cert:
                if isinstance(cert, tuple):
                    tls.load_cert_chain(*cert)
                else:
                    tls.load_cert_chain(cert)
        kwargs = {}
        if timeout:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), **kwargs)


class Client(consul.aio.Consul):
    """``consul.aio.Consul`` whose HTTP client does not use aiohttp's deprecated TLS
    arguments. Create it inside a running event loop; ``await close()``."""

    def http_connect(self, host: str, port: int, scheme, verify: bool | str = True,
                     cert=None) -> _HTTPClient:
        return _HTTPClient(host, port, scheme, verify=verify, cert=cert)
