"""A TEST DOUBLE of Consul's HTTP API: the endpoints ``control/store/consul.py`` uses,
nothing more. No Consul binary can be installed on this project's build machines, so
the store's contract suite runs against this double (and against a real agent whenever
``CONSUL_HTTP_ADDR`` is set, which is the check on the double's faithfulness).

Written from Consul's API documentation (developer.hashicorp.com/consul/api-docs:
``kv``, ``txn``, ``session``, ``features/blocking``, ``acl``):

- ``GET /v1/kv/<key>`` with ``recurse``, ``keys``, ``index``/``wait`` (blocking),
  answering a JSON array of entries (``Key``, base64 ``Value``, ``Flags``,
  ``CreateIndex``, ``ModifyIndex``, ``LockIndex``, ``Session``), 404 when nothing
  matches, and ``X-Consul-Index``: for a prefix the highest ``ModifyIndex`` among its
  keys and its deleted keys' tombstones (so deletes wake blocking queries), else the
  KV table's index.
- ``PUT /v1/kv/<key>`` with ``cas`` (0 = only if absent), ``flags``, ``acquire`` and
  ``release`` (session locks; ``LockIndex`` counts acquisitions), answering ``true`` or
  ``false``. ``DELETE /v1/kv/<key>`` with ``recurse`` and ``cas``.
- ``PUT /v1/txn`` with KV verbs ``set``, ``cas``, ``get``, ``get-or-empty``,
  ``check-index``, ``check-not-exists``, ``delete``, ``delete-cas``: atomic, all writes
  at one index, 200 with ``Results`` (``Value`` null except for gets; no entry for
  deletes) or 409 with ``Errors`` (``OpIndex``, ``What``) and nothing applied.
- ``PUT /v1/session/create`` (``Name``, ``TTL`` between 10s and 24h, ``Behavior``
  release|delete, ``LockDelay``), ``PUT /v1/session/destroy/<id>``,
  ``PUT /v1/session/renew/<id>`` (404 when unknown), ``GET /v1/session/info/<id>``.
  A session whose TTL passed is invalidated (its locks released or its keys deleted per
  ``Behavior``); Consul may take up to twice the TTL, the double does it at exactly the
  TTL, on its injectable clock, checked at every request.
- ACLs: when the double has a token, every request must carry it (``X-Consul-Token``
  header or ``?token=``): none → 403 "Permission denied", another → 403 "ACL not found".

Simplifications (not used by the backend): no datacenters, no ``separator``, no
``raw``, no lock-delay enforcement, no jitter added to ``wait``, one token with every
right.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go duration strings as Consul reads them ("10s", "100ms", "1m")."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class _Entry:
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0
    session: str | None = None

    def to_json(self, key: str, *, with_value: bool = True) -> dict:
        out = {"Key": key, "Flags": self.flags, "CreateIndex": self.create_index,
               "ModifyIndex": self.modify_index, "LockIndex": self.lock_index,
               "Value": base64.b64encode(self.value).decode() if with_value else None}
        if self.session:
            out["Session"] = self.session
        return out


@dataclass
class _Session:
    id: str
    name: str
    ttl: float
    behavior: str
    lock_delay: float
    expires_at: float
    create_index: int

    def to_json(self) -> dict:
        return {"ID": self.id, "Name": self.name, "TTL": f"{self.ttl:g}s",
                "Behavior": self.behavior, "LockDelay": int(self.lock_delay * 1e9),
                "Checks": [], "NodeChecks": [], "ServiceChecks": None,
                "CreateIndex": self.create_index, "ModifyIndex": self.create_index}


class _TxnFailed(Exception):
    def __init__(self, op_index: int, what: str) -> None:
        self.op_index, self.what = op_index, what


class ConsulDouble:
    """The double's state and its aiohttp app. ``await start()`` binds 127.0.0.1 on a
    free port; ``address`` is then ``host:port``."""

    def __init__(self, *, token: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self.clock = clock
        self.kv: dict[str, _Entry] = {}
        self.tombstones: dict[str, int] = {}
        self.sessions: dict[str, _Session] = {}
        self.index = 10  # Consul's raft index never starts at 0
        self.kv_index = 0
        self._changed = asyncio.Event()
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.address = ""

    # -- lifecycle ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("GET", "/v1/kv/{key:.*}", self._kv_get)
        app.router.add_route("PUT", "/v1/kv/{key:.*}", self._kv_put)
        app.router.add_route("DELETE", "/v1/kv/{key:.*}", self._kv_delete)
        app.router.add_route("PUT", "/v1/txn", self._txn)
        app.router.add_route("PUT", "/v1/session/create", self._session_create)
        app.router.add_route("PUT", "/v1/session/destroy/{id}", self._session_destroy)
        app.router.add_route("PUT", "/v1/session/renew/{id}", self._session_renew)
        app.router.add_route("GET", "/v1/session/info/{id}", self._session_info)
        return app

    async def start(self, port: int = 0) -> str:
        """Serve on ``port`` (0: a free one); after ``stop()`` it can start again with
        its state kept, like an agent restarting."""
        self._stopping = False
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        self._stopping = True
        self._notify()  # blocking queries answer now, so shutdown need not cancel them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests += 1
        if self.token is not None:
            given = request.headers.get("X-Consul-Token") or request.query.get("token")
            if not given:
                return web.Response(status=403, text="Permission denied")
            if given != self.token:
                return web.Response(status=403, text="ACL not found")
        self._expire_sessions()
        try:
            return await handler(request)
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))

    def _next_index(self) -> int:
        self.index += 1
        return self.index

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _headers(self, index: int) -> dict[str, str]:
        return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0"}

    def _prefix_index(self, prefix: str, exact: bool) -> int:
        if exact:
            idx = max(self.kv[prefix].modify_index if prefix in self.kv else 0,
                      self.tombstones.get(prefix, 0))
        else:
            idx = max([e.modify_index for k, e in self.kv.items() if k.startswith(prefix)]
                      + [i for k, i in self.tombstones.items() if k.startswith(prefix)]
                      + [0])
        return idx or self.kv_index or 1

    def _write(self, key: str, entry: _Entry | None) -> None:
        if entry is None:
            if key in self.kv:
                del self.kv[key]
                self.tombstones[key] = self.index
        else:
            self.kv[key] = entry
            self.tombstones.pop(key, None)
        self.kv_index = self.index

    def _expire_sessions(self) -> None:
        now = self.clock()
        for sid in [s.id for s in self.sessions.values() if s.expires_at <= now]:
            self._invalidate(sid)

    def _invalidate(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        held = [k for k, e in self.kv.items() if e.session == sid]
        if not held:
            return
        self._next_index()
        for key in held:
            if session.behavior == "delete":
                self._write(key, None)
            else:
                self._write(key, replace(self.kv[key], session=None,
                                         modify_index=self.index))
        self._notify()

    # -- KV -------------------------------------------------------------------------------

    async def _kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        recurse = "recurse" in request.query
        keys_only = "keys" in request.query
        exact = not (recurse or keys_only)
        if "separator" in request.query:
            raise ValueError("this double does not implement ?separator")
        wanted = int(request.query.get("index", "0") or 0)
        if wanted:
            wait = min(parse_duration(request.query.get("wait", "5m")), 600.0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while self._prefix_index(key, exact) <= wanted and not self._stopping:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    break
                self._expire_sessions()
        index = self._prefix_index(key, exact)
        headers = self._headers(index)
        if exact:
            entry = self.kv.get(key)
            if entry is None:
                return web.Response(status=404, headers=headers)
            return web.json_response([entry.to_json(key)], headers=headers)
        matched = sorted(k for k in self.kv if k.startswith(key))
        if not matched:
            return web.Response(status=404, headers=headers)
        if keys_only:
            return web.json_response(matched, headers=headers)
        return web.json_response([self.kv[k].to_json(k) for k in matched], headers=headers)

    async def _kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        q = request.query
        value = await request.read()
        flags = int(q.get("flags", "0"))
        current = self.kv.get(key)
        if "cas" in q:
            cas = int(q["cas"])
            if (cas == 0 and current is not None) or (
                    cas != 0 and (current is None or current.modify_index != cas)):
                return web.json_response(False)
        session = None
        lock_index = current.lock_index if current else 0
        if "acquire" in q:
            sid = q["acquire"]
            if sid not in self.sessions:
                return web.Response(status=500, text=f"invalid session {sid!r}")
            if current is not None and current.session not in (None, sid):
                return web.json_response(False)
            if current is None or current.session != sid:
                lock_index += 1
            session = sid
        elif "release" in q:
            if current is None or current.session != q["release"]:
                return web.json_response(False)
        elif current is not None:
            session = current.session
        idx = self._next_index()
        self._write(key, _Entry(value, flags, current.create_index if current else idx, idx,
                                lock_index, session))
        self._notify()
        return web.json_response(True)

    async def _kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        q = request.query
        if "recurse" in q:
            doomed = [k for k in self.kv if k.startswith(key)]
        else:
            current = self.kv.get(key)
            if "cas" in q and (current is None or current.modify_index != int(q["cas"])):
                return web.json_response(False)
            doomed = [key] if current is not None else []
        self._next_index()
        for k in doomed:
            self._write(k, None)
        if not doomed:
            self.kv_index = self.index
        self._notify()
        return web.json_response(True)

    async def _txn(self, request: web.Request) -> web.Response:
        try:
            ops = json.loads(await request.read())
        except json.JSONDecodeError as exc:
            raise ValueError(f"failed to parse body: {exc}") from exc
        if not isinstance(ops, list) or len(ops) > 128:
            raise ValueError("body must be a JSON array of at most 128 operations")
        staged: dict[str, _Entry | None] = {}
        results: list[dict] = []
        idx = self.index + 1

        def current(key: str) -> _Entry | None:
            return staged[key] if key in staged else self.kv.get(key)

        try:
            for i, op in enumerate(ops):
                kv = op.get("KV") if isinstance(op, dict) else None
                if not isinstance(kv, dict):
                    raise _TxnFailed(i, "only KV operations are implemented by this double")
                verb, key = kv.get("Verb"), kv.get("Key", "")
                cur = current(key)
                if verb in ("set", "cas"):
                    if verb == "cas" and (cur.modify_index if cur else 0) != kv.get("Index", 0):
                        raise _TxnFailed(i, f'failed to set key "{key}", index is stale')
                    value = base64.b64decode(kv.get("Value") or "")
                    entry = _Entry(value, int(kv.get("Flags", 0)),
                                   cur.create_index if cur else idx, idx,
                                   cur.lock_index if cur else 0, cur.session if cur else None)
                    staged[key] = entry
                    results.append({"KV": entry.to_json(key, with_value=False)})
                elif verb in ("get", "get-or-empty"):
                    if cur is None and verb == "get":
                        raise _TxnFailed(i, f'key "{key}" doesn\'t exist')
                    results.append({"KV": cur.to_json(key) if cur else None})
                elif verb == "check-index":
                    if cur is None or cur.modify_index != kv.get("Index"):
                        raise _TxnFailed(i, f'current modify index for key "{key}" does'
                                            " not match")
                elif verb == "check-not-exists":
                    if cur is not None:
                        raise _TxnFailed(i, f'key "{key}" exists')
                elif verb in ("delete", "delete-cas"):
                    if verb == "delete-cas" and (cur is None or
                                                 cur.modify_index != kv.get("Index")):
                        raise _TxnFailed(i, f'failed to delete key "{key}", index is stale')
                    staged[key] = None
                else:
                    raise _TxnFailed(i, f"unknown KV verb {verb!r}")
        except _TxnFailed as failed:
            return web.json_response(
                {"Results": None, "Errors": [{"OpIndex": failed.op_index,
                                              "What": failed.what}]}, status=409)
        if staged:
            self._next_index()
            for key, entry in staged.items():
                self._write(key, entry)
            self._notify()
        return web.json_response({"Results": results or None, "Errors": None})

    # -- sessions -------------------------------------------------------------------------

    async def _session_create(self, request: web.Request) -> web.Response:
        body = await request.read()
        raw = json.loads(body) if body.strip() else {}
        # Consul decodes JSON with Go's case-insensitive field matching (py-consul sends
        # "ttl", "behavior", "lockdelay").
        spec = {k.lower(): v for k, v in raw.items()}
        ttl = parse_duration(spec["ttl"]) if spec.get("ttl") else 0.0
        if ttl and not 10.0 <= ttl <= 86400.0:
            raise ValueError(f"Invalid Session TTL '{int(ttl * 1e9)}', must be between"
                             " [10s=24h0m0s]")
        behavior = spec.get("behavior", "release")
        if behavior not in ("release", "delete"):
            raise ValueError(f"Invalid Behavior setting '{behavior}'")
        lock_delay = spec.get("lockdelay", "15s")
        lock_delay = (parse_duration(lock_delay) if isinstance(lock_delay, str)
                      else float(lock_delay) / 1e9)
        sid = str(uuid.uuid4())
        self.sessions[sid] = _Session(sid, spec.get("name", ""), ttl, behavior, lock_delay,
                                      self.clock() + ttl if ttl else float("inf"),
                                      self._next_index())
        return web.json_response({"ID": sid})

    async def _session_destroy(self, request: web.Request) -> web.Response:
        self._invalidate(request.match_info["id"])
        return web.json_response(True)

    async def _session_renew(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            return web.Response(status=404,
                                text=f"Session id '{request.match_info['id']}' not found")
        if session.ttl:  # a session without TTL never expires
            session.expires_at = self.clock() + session.ttl
        return web.json_response([session.to_json()])

    async def _session_info(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        body = [session.to_json()] if session else []
        return web.json_response(body, headers=self._headers(self.index))


async def _serve(port: int, token: str | None) -> None:
    double = ConsulDouble(token=token)
    print(f"consul double (a test double, not Consul) on {await double.start(port)}",
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await double.stop()


if __name__ == "__main__":
    # Standalone, for trying the store by hand: python tests/support/consul_double.py PORT
    import sys

    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
