"""One process of the demo shop, by role.

``frontend`` calls ``catalog``, ``cart`` and ``recommendations``; ``cart`` calls
``payment``. ``recommendations`` is the non-core service: ``POST /chaos`` makes it slow
or failing, so its degradation switch and breaker can be seen to keep the frontend up.
The page says which: ``"recommendations": {"degraded": true, "status": 503}`` when the
call failed, and ``"fallback": "<switch>"`` beside the answer when a sidecar's
degradation switch served it (the proxy names the switch in ``x-mesh-switch``; the
demo's TrafficPolicy declares one, see ``config/demo/policy.yaml``).
``loadgen`` sends a steady load to the frontend and logs what it gets.

Every answer names the Pod that served it (``$HOSTNAME``), so balancing across replicas
is visible. The service listens on ``$PORT`` (the host port the agent allocated). It
reaches an upstream through the sidecar's outbound listener that the agent announces
as ``$MESH_UPSTREAM_<NAME>=host:port`` (see ``control/agent/sidecar.py``), or at the
URL ``$UPSTREAM_<NAME>`` when run outside the mesh.
Run: ``python -m control.demo.shop ROLE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence

from aiohttp import ClientError, ClientSession, ClientTimeout, web

log = logging.getLogger("shop")
SESSION: web.AppKey[ClientSession] = web.AppKey("session", ClientSession)
ROLES = ("frontend", "catalog", "cart", "payment", "recommendations", "loadgen")
NEEDS = {"frontend": ("catalog", "cart", "recommendations"), "cart": ("payment",),
         "loadgen": ("frontend",)}
CATALOG = [{"sku": "tea-01", "name": "Green tea", "price": 4.5},
           {"sku": "mug-02", "name": "Mug", "price": 9.0},
           {"sku": "pot-03", "name": "Teapot", "price": 24.0}]


def pod_name() -> str:
    return os.environ.get("HOSTNAME", "unknown")


def upstream(name: str) -> str:
    env = name.upper().replace("-", "_")
    mesh = os.environ.get(f"MESH_UPSTREAM_{env}")
    if mesh:
        return f"http://{mesh}"
    url = os.environ.get(f"UPSTREAM_{env}")
    if url:
        return url.rstrip("/")
    raise SystemExit(f"shop: no address for the {name} upstream: declare it in the Pod's "
                     f"mesh.io/upstreams annotation (MESH_UPSTREAM_{env}) or set "
                     f"UPSTREAM_{env}")


#: The header a meshproxy puts on a degradation switch's static fallback.
SWITCH_HEADER = "x-mesh-switch"


async def _get_json(session: ClientSession, url: str,
                    switch: list[str] | None = None) -> tuple[int, object]:
    """(status, decoded body) of a GET; status 0 when the call itself failed. With
    ``switch``, the name of the degradation switch that answered, if one did, is
    appended to it."""
    try:
        async with session.get(url) as resp:
            body = await resp.read()
            if switch is not None and SWITCH_HEADER in resp.headers:
                switch.append(resp.headers[SWITCH_HEADER])
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, body.decode(errors="replace")[:200]
    except (ClientError, TimeoutError) as e:
        return 0, f"{type(e).__name__}: {e}"


def _recommendations(status: int, body: object, switch: list[str]) -> object:
    """What the page shows for the non-core call: the answer (marked when a switch's
    fallback gave it), or that it degraded."""
    if status != 200:
        return {"degraded": True, "status": status}
    if switch and isinstance(body, dict):
        return {**body, "fallback": switch[0]}
    return body


def _reply(payload: dict, status: int = 200) -> web.Response:
    payload.setdefault("served_by", pod_name())
    return web.json_response(payload, status=status)


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(role: str) -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", health)
    timeout = ClientTimeout(total=float(os.environ.get("UPSTREAM_TIMEOUT", "3")))

    async def session_ctx(app: web.Application):
        app[SESSION] = ClientSession(timeout=timeout)
        yield
        await app[SESSION].close()

    # Upstream addresses are resolved now, so a Pod missing one fails at start, visibly.
    urls = {name: upstream(name) for name in NEEDS.get(role, ())}

    if role == "catalog":
        async def items(_: web.Request) -> web.Response:
            return _reply({"items": CATALOG})
        app.router.add_get("/items", items)
    elif role == "payment":
        async def quote(req: web.Request) -> web.Response:
            amount = float(req.query.get("amount", "0") or 0)
            return _reply({"amount": amount, "fee": round(amount * 0.029 + 0.3, 2)})
        app.router.add_get("/quote", quote)
    elif role == "cart":
        app.cleanup_ctx.append(session_ctx)

        async def cart(req: web.Request) -> web.Response:
            total = sum(i["price"] for i in CATALOG[:2])
            status, pay = await _get_json(req.app[SESSION],
                                          f"{urls['payment']}/quote?amount={total}")
            if status != 200:
                return _reply({"error": "payment unavailable", "upstream": pay}, 503)
            return _reply({"items": [i["sku"] for i in CATALOG[:2]], "total": total,
                           "payment": pay})
        app.router.add_get("/cart", cart)
    elif role == "recommendations":
        chaos = {"delay_ms": 0.0, "error_rate": 0.0}

        async def recs(_: web.Request) -> web.Response:
            if chaos["delay_ms"]:
                await asyncio.sleep(chaos["delay_ms"] / 1000)
            if random.random() < chaos["error_rate"]:
                return _reply({"error": "chaos"}, 500)
            return _reply({"recommended": [CATALOG[2]["sku"]]})

        async def set_chaos(req: web.Request) -> web.Response:
            try:
                body = await req.json()
                delay = float(body.get("delay_ms", 0))
                rate = float(body.get("error_rate", 0))
            except (ValueError, TypeError, AttributeError):
                return web.json_response({"error": "body must be JSON like "
                                          '{"delay_ms": 500, "error_rate": 0.5}'}, status=400)
            if delay < 0 or not 0 <= rate <= 1:
                return web.json_response({"error": "delay_ms >= 0 and 0 <= error_rate <= 1"},
                                         status=422)
            chaos.update(delay_ms=delay, error_rate=rate)
            return _reply(dict(chaos))
        app.router.add_get("/recs", recs)
        app.router.add_post("/chaos", set_chaos)
    elif role == "frontend":
        app.cleanup_ctx.append(session_ctx)

        async def index(req: web.Request) -> web.Response:
            s = req.app[SESSION]
            switch: list[str] = []
            (c_st, cat), (k_st, cart), (r_st, recs) = await asyncio.gather(
                _get_json(s, f"{urls['catalog']}/items"),
                _get_json(s, f"{urls['cart']}/cart"),
                _get_json(s, f"{urls['recommendations']}/recs", switch))
            if c_st != 200 or k_st != 200:
                # Core paths: without catalog or cart the page is broken.
                return _reply({"error": "core service unavailable",
                               "catalog": cat, "cart": cart}, 503)
            return _reply({"catalog": cat, "cart": cart,
                           "recommendations": _recommendations(r_st, recs, switch)})
        app.router.add_get("/", index)
    else:
        raise SystemExit(f"shop: unknown role {role!r}; one of {', '.join(ROLES)}")
    return app


async def loadgen(target: str, rate: float, *, duration: float | None = None) -> dict:
    """Send ``rate`` requests/s to ``target`` (bounded by ``duration`` when given)."""
    counts: dict[str, int] = {}
    interval = 1.0 / rate
    start = time.monotonic()
    last_report = start
    inflight: set[asyncio.Task] = set()
    async with ClientSession(timeout=ClientTimeout(total=5)) as s:
        async def one() -> None:
            st, _ = await _get_json(s, target)
            counts[str(st)] = counts.get(str(st), 0) + 1
        n = 0
        while duration is None or time.monotonic() - start < duration:
            t = asyncio.create_task(one())
            inflight.add(t)
            t.add_done_callback(inflight.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                log.info("loadgen %s: %s", target, json.dumps(counts, sort_keys=True))
        await asyncio.gather(*inflight, return_exceptions=True)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shop", description="A service of the demo shop.")
    p.add_argument("role", choices=ROLES)
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--rate", type=float, default=float(os.environ.get("RATE", "20")),
                   help="loadgen: requests per second")
    p.add_argument("--duration", type=float, default=None,
                   help="loadgen: stop after this many seconds (default: run until stopped)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.role == "loadgen":
        if args.rate <= 0:
            p.error("--rate must be positive")
        counts = asyncio.run(loadgen(f"{upstream('frontend')}/", args.rate,
                                     duration=args.duration))
        print(json.dumps(counts, sort_keys=True))
        return 0
    web.run_app(build_app(args.role), host=args.host, port=args.port, print=None,
                handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
