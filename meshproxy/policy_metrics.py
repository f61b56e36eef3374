"""Prometheus export of the traffic-management and resilience state.

The policy objects keep their own plain counters (a breaker's rejections, a budget's
refusals, ...), cheap on the request path. :meth:`PolicyStats.sync` copies them into
prometheus-client metrics once a second and before every scrape (the same batching as
:mod:`meshproxy.metrics`): gauges are set, counters advance by the difference since the
last sync (so they stay monotonic, and in multiprocess mode sum across workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshproxy.resilience.breaker import STATE_VALUE

if TYPE_CHECKING:
    from meshproxy.proxy import Proxy

SWITCH_STATE = {"normal": 0, "tripped": 1, "probing": 2}


class PolicyStats:
    """The policy metric families of one process, and the last values exported."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.attempts = Counter(
            "meshproxy_route_attempts_total",
            "Upstream attempts of routes with retries or hedging (first tries included).",
            ["route"], registry=r)
        self.retries = Counter(
            "meshproxy_route_retries_total", "Retries started, by route.", ["route"],
            registry=r)
        self.hedges = Counter(
            "meshproxy_route_hedges_total", "Hedged attempts started, by route.", ["route"],
            registry=r)
        self.budget_refused = Counter(
            "meshproxy_route_retry_budget_refused_total",
            "Retries or hedges the retry budget refused, by route.", ["route"], registry=r)
        self.breaker_state = Gauge(
            "meshproxy_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.", ["cluster", "breaker"],
            multiprocess_mode="livemax", registry=r)
        self.breaker_rejected = Counter(
            "meshproxy_circuit_breaker_rejected_total",
            "Requests refused by an open (or full half-open) breaker.",
            ["cluster", "breaker"], registry=r)
        self.breaker_transitions = Counter(
            "meshproxy_circuit_breaker_transitions_total",
            "Breaker state changes, by from/to state.",
            ["cluster", "breaker", "from_state", "to_state"], registry=r)
        self.ejected = Gauge(
            "meshproxy_outlier_ejected_endpoints",
            "Endpoints currently ejected by outlier detection.", ["cluster"],
            multiprocess_mode="livemax", registry=r)
        self.ejections = Counter(
            "meshproxy_outlier_ejections_total",
            "Outlier ejections, by the rule that ejected.", ["cluster", "rule"], registry=r)
        self.limit_in_use = Gauge(
            "meshproxy_limit_in_use", "Slots held of a cluster concurrency limit.",
            ["cluster", "limit"], multiprocess_mode="livesum", registry=r)
        self.limit_refused = Counter(
            "meshproxy_limit_refused_total", "Requests refused by a cluster concurrency limit.",
            ["cluster", "limit"], registry=r)
        self.rate_admitted = Counter(
            "meshproxy_rate_limit_admitted_total", "Requests a rate limit admitted.",
            ["route"], registry=r)
        self.rate_limited = Counter(
            "meshproxy_rate_limit_limited_total", "Requests a rate limit refused (429).",
            ["route"], registry=r)
        self.switch_state = Gauge(
            "meshproxy_switch_state",
            "Degradation switch state: 0 normal, 1 tripped, 2 probing.", ["switch"],
            multiprocess_mode="livemax", registry=r)
        self.switch_degraded = Counter(
            "meshproxy_switch_degraded_total", "Requests answered by a switch's fallback.",
            ["switch"], registry=r)
        self.shed = Counter(
            "meshproxy_shed_total", "Requests shed under overload, by priority.",
            ["priority"], registry=r)
        self.events = Counter(
            "meshproxy_resilience_events_total",
            "Explainable resilience events (breaker, outlier, switch, shedding), by kind.",
            ["kind"], registry=r)
        self._last: dict[tuple, float] = {}

    def _advance(self, counter: Counter, labels: tuple[str, ...], value: float) -> None:
        key = (id(counter), *labels)
        delta = value - self._last.get(key, 0.0)
        if delta > 0:
            counter.labels(*labels).inc(delta)
        # a rebuilt object restarts at 0: count from there on
        self._last[key] = value

    def sync(self, proxy: Proxy) -> None:
        """Copy the state of ``proxy``'s policy objects into the metrics."""
        adv = self._advance
        for (lst, route), st in proxy.route_states.items():
            if st.budget is None:
                continue
            b = st.budget.statistics()
            name = f"{lst}/{route}"
            adv(self.attempts, (name,), b.attempts_total)
            adv(self.retries, (name,), b.retries_total)
            adv(self.hedges, (name,), b.hedges_total)
            adv(self.budget_refused, (name,), b.refused_total)
        rt = proxy.resilience
        for cname, c in rt.clusters.items():
            breakers = ([c.breaker.statistics()] if c.breaker else []) + (
                c.endpoint_breakers.statistics() if c.endpoint_breakers else [])
            for bs in breakers:
                bname = "cluster" if c.breaker and bs.name == c.breaker.name else bs.name
                self.breaker_state.labels(cname, bname).set(STATE_VALUE[bs.state])
                adv(self.breaker_rejected, (cname, bname), bs.rejected_total)
                for (old, new), n in bs.transitions.items():
                    adv(self.breaker_transitions, (cname, bname, old, new), n)
            if c.outlier is not None:
                os_ = c.outlier.statistics()
                self.ejected.labels(cname).set(len(os_.ejected))
                for rule, n in os_.ejections_total.items():
                    adv(self.ejections, (cname, rule), n)
            if cname in {name for name, cl in proxy.clusters.items() if cl.config.limits}:
                for lname, ls in c.limits.statistics().items():
                    self.limit_in_use.labels(cname, lname).set(ls.in_use)
                    adv(self.limit_refused, (cname, lname), ls.refused_total)
        for rname, rl in rt.rate_limiters.items():
            adv(self.rate_admitted, (rname,), rl.admitted_total)
            adv(self.rate_limited, (rname,), rl.limited_total)
        for sw in rt.switches.list():
            self.switch_state.labels(sw.name).set(SWITCH_STATE[sw.state])
            adv(self.switch_degraded, (sw.name,), sw.degraded_total)
        if rt.shedder is not None:
            for prio, n in rt.shedder.statistics().shed_total.items():
                adv(self.shed, (prio,), n)
        for kind, n in rt.events.counts().items():
            adv(self.events, (kind,), n)
