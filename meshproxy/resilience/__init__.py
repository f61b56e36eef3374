"""Resilience: the protective concerns of the request path, one module each.

Each module keeps a concern's frozen config model, its runtime object and its stats
together; none of them does I/O or knows the HTTP engine, so each is tested alone on a
hand-driven clock. The engine's layers (``meshproxy/layers/``, assembled in
``meshproxy/stack.py``) read them.

============== ============================================================================
module         concern
============== ============================================================================
events         bounded ring of explainable events (``/events``), logged and counted
window         rolling outcome counts in fixed buckets (breaker ratio, switches)
reuse          rebuild objects from a new config, keeping those whose config is equal
breaker        circuit breakers on pybreaker, per cluster and per endpoint: a gate
outlier        Envoy-style outlier ejection (5xx, gateway, success rate, latency)
concurrency    connections / pending / requests / retries limits (trio-style limiters)
ratelimit      token buckets per route keyed by nothing, client or header; 429 headers
shm_buckets    the buckets in shared memory, one limit for all worker processes
degrade        degradation switches (interface, function, service) with fallbacks
adaptive       gradient concurrency limit (Envoy adaptive concurrency)
shedding       priority load shedding on concurrency and event-loop lag
runtime        all of the above for one process, built from config, kept over reloads
============== ============================================================================

Where each belongs in a route's chain, outermost first (the second wave wires this into
``stack.py``; reasons are why the order matters):

1. rescue, route timeout (the engine's): every refusal below becomes a local reply, and
   the timeout bounds all of it.
2. **rate limit** (``RateLimiter.check``): the client's contract, checked before any work;
   its 429 carries ``Retry-After`` so a well-behaved client slows down rather than retry.
3. **degradation switch** (``Switch.check`` for each of ``SwitchRegistry.applicable``,
   resolved per route at build time): a switched-off route answers its fallback even
   under overload, and a fallback costs no capacity, so it sits before shedding.
   ``observe`` gets the final answer of everything below it, local refusals included:
   a service whose breaker is open *is* failing, and its fallback beats a 503
   (``tests/meshproxy/resilience/test_scenarios.py`` shows the whole order at work).
4. **load shedding** (``LoadShedder.admit(rank)``; ``done`` at the end): protects this
   process; refusing by priority before queueing anything for a cluster.
5. **cluster concurrency** (``ClusterResilience.limits.requests.try_acquire``): the
   cluster's hard ``max_requests``; a request refused here never reaches the breaker,
   so overload is not mistaken for failure.
6. **cluster breaker** (``Breaker.allow``; ``record`` with the request's final
   outcome): outside the retry loop, so an open circuit refuses once instead of once
   per attempt, and retries do not count as separate failures.
7. retry / hedging (the TRAFFIC helper's, with its budget) with
   ``limits.retries.try_acquire`` for each retry.
8. per attempt: the balancer skips ejected endpoints (``Endpoint.ejected_until``, set by
   ``OutlierDetector``); then the **endpoint breaker** (``BreakerGroup.get(addr).allow``;
   a refusal excludes that endpoint and picks again) and **endpoint limits**; the
   attempt's outcome goes to ``OutlierDetector.observe`` and the endpoint breaker.
   Per attempt, so a retry can go to a healthy endpoint while one is tripped.
9. forward (the engine's): the pool takes ``limits.connections`` when it opens a
   connection; a request waiting for one awaits ``connections.acquire()`` (its line is
   ``max_pending_requests``).
"""
