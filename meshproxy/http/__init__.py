"""HTTP/1.1 wire protocols, apart from policy (as uvicorn's ``protocols/http``).

- ``message``: the request/response objects one exchange passes along the layers
- ``headers``: hop-by-hop filtering and serialising heads
- ``flow``: pause/resume bookkeeping for backpressure
- ``server``: the downstream protocol (clients → proxy): parsing, limits, dispatch
- ``transport``: the client's socket under it, in the listener's epoll (not uvloop's)
- ``request``: the request head being parsed; request ids
- ``respond``: writing responses to the client (framing, streaming, tunnels)
- ``reply``: local replies (``x-mesh-reason``)
- ``upstream``: the upstream protocol (proxy → endpoint) and its keep-alive reuse
- ``pool``: per-endpoint upstream connection pools

These modules (and the rest of the request path, ``setup.py``'s ``COMPILED_PATTERNS``)
are compiled with mypyc when the package is installed; the rules such code keeps are
in ``docs/ARCHITECTURE.md`` ("Departures": the compiled request path).
"""
