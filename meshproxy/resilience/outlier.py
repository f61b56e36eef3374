"""Outlier detection (Envoy-style passive health): eject endpoints that misbehave.

Each finished attempt is reported with :meth:`OutlierDetector.observe` (O(1): a dict
lookup and a few integer updates; latency goes into a fixed ring per endpoint). Four rules:

- **consecutive 5xx** and **consecutive gateway failures** (502/503/504, connect
  failure, reset, timeout): judged on the spot, ejecting at once, as Envoy does.
- **success rate** (Envoy's stdev method): every ``interval``, among endpoints with at
  least ``success_rate_request_volume`` requests in it, and only when at least
  ``success_rate_minimum_hosts`` qualify, an endpoint whose success rate is below
  ``mean - stdev_factor * stdev`` is ejected.
- **latency**: every ``interval``, among endpoints with at least
  ``latency_request_volume`` responses, an endpoint whose median latency is above
  ``latency_factor`` times the cluster's median (the median of the endpoints' medians, so
  the outlier itself cannot drag the baseline) and more than ``latency_min_delta_ms`` above
  it is ejected. Envoy has no such rule; it is what catches a replica that still answers
  200, only slowly.

Ejection sets :attr:`Endpoint.ejected_until`; balancers skip the endpoint until then, so
un-ejection needs no action on the request path (``tick`` only records it). The ejection
time is ``base_ejection_time`` times the endpoint's ejection count, capped at
``max_ejection_time``; the count decays by one for every interval the endpoint spends
in service. No ejection ever leaves more than ``max_ejection_percent`` of the cluster
ejected. Interval work (statistics, sorting latencies) runs in :meth:`tick`, off the
request path, driven by a timer the engine owns (or :meth:`start`).

Neighbours: :mod:`.breaker` refuses a whole cluster or endpoint; balancers read
``Endpoint.available(now)``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta

from meshproxy.endpoint import Endpoint
from meshproxy.resilience.events import Clock, EventLog
from meshproxy.schema import Frozen


class OutlierConfig(Frozen, kw_only=True):
    """Outlier detection for one cluster. A rule set to None is off."""

    interval: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    """Seconds between interval sweeps (Envoy's default 10 s)."""
    base_ejection_time: Annotated[float, Meta(gt=0, le=86400)] = 30.0
    """Seconds of the first ejection; later ones are multiples (Envoy: 30 s)."""
    max_ejection_time: Annotated[float, Meta(gt=0, le=86400)] = 300.0
    """Cap on one ejection, in seconds (Envoy: 300 s)."""
    max_ejection_percent: Annotated[float, Meta(ge=0, le=100)] = 50.0
    """Never more than this share of the cluster ejected at once. 50 rather than Envoy's
    10 because mesh services usually run 2-5 replicas, where 10% would forbid ejecting
    any; half keeps the majority serving."""
    consecutive_5xx: Annotated[int, Meta(ge=1)] | None = 5
    """Eject after this many 5xx (or local failures) in a row (Envoy: 5)."""
    consecutive_gateway_failure: Annotated[int, Meta(ge=1)] | None = 5
    """Eject after this many 502/503/504 or local failures in a row."""
    success_rate_minimum_hosts: Annotated[int, Meta(ge=1)] = 5
    """Endpoints with enough volume needed for the success-rate rule (Envoy: 5)."""
    success_rate_request_volume: Annotated[int, Meta(ge=1)] = 100
    """Requests in an interval for an endpoint to count (Envoy: 100)."""
    success_rate_stdev_factor: Annotated[float, Meta(gt=0)] | None = 1.9
    """Eject below ``mean - factor * stdev`` (Envoy: 1900/1000)."""
    latency_factor: Annotated[float, Meta(gt=1)] | None = 3.0
    """Eject an endpoint whose median latency exceeds this multiple of the cluster's."""
    latency_min_delta_ms: Annotated[float, Meta(ge=0)] = 50.0
    """...and exceeds it by at least this many milliseconds: 3 ms vs 1 ms is no outlier."""
    latency_request_volume: Annotated[int, Meta(ge=1)] = 50
    """Responses in an interval for an endpoint's latency to be judged."""
    latency_minimum_hosts: Annotated[int, Meta(ge=2)] = 3
    """Endpoints with enough responses needed for a cluster median to mean something."""
    latency_samples: Annotated[int, Meta(ge=8, le=65536)] = 256
    """Latencies kept per endpoint per interval (a ring; the median is taken over it)."""


@dataclass(slots=True)
class _Host:
    """Per-endpoint detector state (not part of Endpoint: it belongs to this detector)."""

    samples: list[float]
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    total: int = 0
    successes: int = 0
    responses: int = 0
    ejections: int = 0          # multiplier for the next ejection time
    ejected: bool = False
    ejected_this_interval: bool = False
    skipped_noted: bool = False


@dataclass(frozen=True, slots=True)
class OutlierStats:
    cluster: str
    ejected: list[str]
    ejections_total: dict[str, int]
    ejections_skipped_total: int


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


class OutlierDetector:
    """Passive health of one cluster's endpoints. Not a health checker (that one sends
    probes); this one only watches real traffic."""

    def __init__(self, cluster: str, config: OutlierConfig, *, clock: Clock,
                 events: EventLog | None = None,
                 endpoints: Sequence[Endpoint] = ()) -> None:
        self.cluster = cluster
        self.config = config
        self._clock = clock
        self._events = events
        self._hosts: dict[Endpoint, _Host] = {}
        self.ejections_total: dict[str, int] = {}
        self.ejections_skipped_total = 0
        self._timer: asyncio.TimerHandle | None = None
        self.update(endpoints)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """Follow an endpoint set change: state kept for endpoints that stay."""
        old = self._hosts
        self._hosts = {ep: old.get(ep) or _Host([0.0] * self.config.latency_samples)
                       for ep in endpoints}

    # -- request path -----------------------------------------------------------------
    def observe(self, endpoint: Endpoint, status: int | None, latency: float,
                now: float) -> None:
        """One finished attempt: ``status`` is the upstream status, None for a local
        failure (connect failure, reset, timeout); ``latency`` in seconds."""
        h = self._hosts.get(endpoint)
        if h is None:
            return                     # endpoint left the cluster meanwhile
        h.total += 1
        cfg = self.config
        if status is not None:
            n = h.responses
            h.samples[n % cfg.latency_samples] = latency
            h.responses = n + 1
            if status < 500:
                h.successes += 1
                h.consecutive_5xx = h.consecutive_gateway = 0
                return
        h.consecutive_5xx += 1
        if status is None or 502 <= status <= 504:
            h.consecutive_gateway += 1
        else:
            h.consecutive_gateway = 0
        if h.ejected:
            if endpoint.ejected_until > now:
                return
            self._returned(endpoint, h)    # expired before the sweep noticed
        if cfg.consecutive_5xx is not None and h.consecutive_5xx >= cfg.consecutive_5xx:
            self._eject(endpoint, h, now, "consecutive_5xx",
                        f"{h.consecutive_5xx} consecutive 5xx or local failures",
                        consecutive=h.consecutive_5xx)
        elif (cfg.consecutive_gateway_failure is not None
              and h.consecutive_gateway >= cfg.consecutive_gateway_failure):
            self._eject(endpoint, h, now, "consecutive_gateway_failure",
                        f"{h.consecutive_gateway} consecutive gateway failures",
                        consecutive=h.consecutive_gateway)

    # -- ejection ---------------------------------------------------------------------
    def _ejected_count(self, now: float) -> int:
        return sum(1 for ep in self._hosts if ep.ejected_until > now)

    def _eject(self, ep: Endpoint, h: _Host, now: float, rule: str, why: str,
               **numbers: float) -> bool:
        cfg = self.config
        total = len(self._hosts)
        ejected = self._ejected_count(now)
        if (ejected + 1) * 100 > cfg.max_ejection_percent * total:
            self.ejections_skipped_total += 1
            if not h.skipped_noted and self._events is not None:
                h.skipped_noted = True     # once per interval, not once per failure
                self._events.record(
                    "outlier.eject_skipped", ep.address,
                    f"not ejecting {ep.address} ({why}): {ejected} of {total} already "
                    f"ejected, max_ejection_percent {cfg.max_ejection_percent:g}",
                    ejected=ejected, endpoints=total, **numbers)
            return False
        h.ejections += 1
        duration = min(cfg.base_ejection_time * h.ejections,
                       max(cfg.base_ejection_time, cfg.max_ejection_time))
        ep.ejected_until = now + duration
        h.ejected = h.ejected_this_interval = True
        h.consecutive_5xx = h.consecutive_gateway = 0
        self.ejections_total[rule] = self.ejections_total.get(rule, 0) + 1
        if self._events is not None:
            self._events.record(
                "outlier.eject", ep.address,
                f"ejected {ep.address}: {why} (ejection {h.ejections}, for {duration:g} s)",
                ejection_count=h.ejections, duration_s=duration, **numbers)
        return True

    def _returned(self, ep: Endpoint, h: _Host) -> None:
        h.ejected = False
        if self._events is not None:
            self._events.record("outlier.return", ep.address,
                                f"{ep.address} back in service after ejection {h.ejections}",
                                ejection_count=h.ejections)

    # -- interval sweep -----------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """The interval's work: note returns, apply the success-rate and latency rules,
        start a new interval. Called every ``config.interval`` seconds."""
        now = self._clock() if now is None else now
        cfg = self.config
        for ep, h in self._hosts.items():
            if h.ejected and ep.ejected_until <= now:
                self._returned(ep, h)
            elif not h.ejected and not h.ejected_this_interval and h.ejections > 0:
                h.ejections -= 1       # an interval in service: the next ejection is shorter
        if cfg.success_rate_stdev_factor is not None:
            self._success_rate_rule(now, cfg.success_rate_stdev_factor)
        if cfg.latency_factor is not None:
            self._latency_rule(now, cfg.latency_factor)
        for h in self._hosts.values():
            h.total = h.successes = h.responses = 0
            h.ejected_this_interval = h.skipped_noted = False

    def _success_rate_rule(self, now: float, factor: float) -> None:
        cfg = self.config
        cand = [(ep, h, h.successes / h.total) for ep, h in self._hosts.items()
                if not h.ejected and h.total >= cfg.success_rate_request_volume]
        if len(cand) < cfg.success_rate_minimum_hosts:
            return
        rates = [r for _, _, r in cand]
        mean = statistics.fmean(rates)
        stdev = statistics.pstdev(rates)
        threshold = mean - factor * stdev
        for ep, h, rate in sorted(cand, key=lambda c: c[2]):
            if rate >= threshold:
                break
            self._eject(ep, h, now, "success_rate",
                        f"success rate {rate:.1%} vs cluster mean {mean:.1%} "
                        f"(threshold {threshold:.1%}) over {h.total} requests",
                        success_rate=rate, cluster_mean=mean, threshold=threshold,
                        requests=h.total)

    def _latency_rule(self, now: float, factor: float) -> None:
        cfg = self.config
        cand = []
        for ep, h in self._hosts.items():
            if h.ejected or h.responses < cfg.latency_request_volume:
                continue
            kept = h.samples[:min(h.responses, cfg.latency_samples)]
            cand.append((ep, h, _median(kept)))
        if len(cand) < cfg.latency_minimum_hosts:
            return
        baseline = _median([p50 for _, _, p50 in cand])
        floor = cfg.latency_min_delta_ms / 1000.0
        for ep, h, p50 in sorted(cand, key=lambda c: -c[2]):
            if not (p50 > factor * baseline and p50 - baseline > floor):
                break
            self._eject(ep, h, now, "latency",
                        f"p50 {_ms(p50)} ms vs cluster {_ms(baseline)} ms over "
                        f"{h.responses} requests",
                        p50_ms=p50 * 1000, cluster_p50_ms=baseline * 1000,
                        requests=h.responses)

    # -- timer, reload, stats -----------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run :meth:`tick` every interval on ``loop`` (a timer, not a task)."""
        def fire() -> None:
            self.tick(loop.time())
            self._timer = loop.call_later(self.config.interval, fire)
        self.stop()
        self._timer = loop.call_later(self.config.interval, fire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reconfigure(self, config: OutlierConfig) -> bool:
        """Apply new thresholds in place (ejections and counts survive); a new ring size
        needs fresh rings, which only loses the current interval's latencies."""
        if config.latency_samples != self.config.latency_samples:
            for h in self._hosts.values():
                h.samples = [0.0] * config.latency_samples
                h.responses = 0
        self.config = config
        return True

    def statistics(self, now: float | None = None) -> OutlierStats:
        now = self._clock() if now is None else now
        return OutlierStats(self.cluster,
                            [ep.address for ep in self._hosts if ep.ejected_until > now],
                            dict(self.ejections_total), self.ejections_skipped_total)

    def __repr__(self) -> str:
        now = self._clock()
        return (f"<OutlierDetector {self.cluster} {len(self._hosts)} endpoints, "
                f"{self._ejected_count(now)} ejected>")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 10 or math.isclose(ms, round(ms)) else f"{ms:.1f}"
