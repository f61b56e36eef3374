"""Degradation switches: turn a route, a group of routes or a whole upstream into a cheap
answer (fail fast, or a fallback) by hand or automatically, with a shadow mode.

The seed's three levels, each a :class:`SwitchConfig` with a ``target``:

- ``interface``: one route (target = route name);
- ``function``: a group of routes, e.g. every "recommendations" route (target = the
  group name routes declare);
- ``service``: everything sent to one upstream cluster (target = cluster name).

A switch's ``mode`` is ``on`` (degraded), ``off`` (normal) or ``auto``: degraded while its
:class:`AutoTrip` rule says the target is failing. Auto trips on the error ratio or the
slow-call ratio over a rolling window with a minimum of requests; after ``cooldown`` it
probes (lets ``probe_ratio`` of requests through to the real target) and recovers when
``probe_requests`` probes come back under the threshold, or trips again for another
cooldown. ``enabled: false`` disables a switch entirely; ``enforced: false`` is shadow mode
(Envoy's runtime-fraction idea): the state machine runs and counts what it *would* have
degraded, but every request is served normally, so a threshold can be tried on live
traffic first.

The action is a :class:`FailFast` (a status and reason), a :class:`StaticResponse`
(status, headers, body) or a :class:`ClusterFallback` (send to another cluster).
:class:`SwitchBehaviour` groups mode, rule and action (what a TrafficPolicy's ``degrade``
section carries); :class:`SwitchConfig` adds the name, level and target.

:class:`SwitchRegistry` holds them all by name: the engine resolves once per route, at
config build time, which switches apply (:meth:`SwitchRegistry.applicable`), so the
request path only calls :meth:`Switch.check`; the admin API lists them and flips one
(``POST /switches/{name}`` -> :meth:`SwitchRegistry.flip`). A reload keeps every switch
whose config is unchanged, including a mode an operator set through the admin API.

Neighbours: :mod:`.breaker` protects the caller from a failing upstream with a 503;
a switch decides *what* to answer instead. :mod:`.window` counts outcomes.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from meshproxy.resilience.events import Clock, EventLog
from meshproxy.resilience.reuse import rebuild
from meshproxy.resilience.window import RollingWindow
from meshproxy.schema import Frozen, field_error, to_builtins

Level = Literal["interface", "function", "service"]
Mode = Literal["auto", "on", "off"]
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")


class FailFast(Frozen, tag_field="kind", tag="fail_fast", kw_only=True):
    """Answer at once with an error status (``kind: fail_fast``, the union's tag)."""

    kind: ClassVar[Literal["fail_fast"]] = "fail_fast"
    status: Annotated[int, Meta(ge=400, le=599)] = 503
    """503: the caller's retry and breaker logic already understands it."""
    reason: Annotated[str, Meta(min_length=1, max_length=64)] = "degraded"
    """Goes to ``x-mesh-reason`` and the metric label."""


class StaticResponse(Frozen, tag_field="kind", tag="static", kw_only=True):
    """Answer with a canned response (``kind: static``)."""

    kind: ClassVar[Literal["static"]] = "static"
    status: Annotated[int, Meta(ge=100, le=599)] = 200
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: Annotated[str, Meta(max_length=1 << 20)] = ""
    """At most 1 MiB: a fallback is a small canned answer, not content."""


class ClusterFallback(Frozen, tag_field="kind", tag="cluster", kw_only=True):
    """Send the request to another cluster instead (``kind: cluster``)."""

    kind: ClassVar[Literal["cluster"]] = "cluster"
    cluster: Annotated[str, Meta(min_length=1)]
    """Another cluster of the same config that serves the degraded answer."""


#: What a degrading switch answers, told apart by its ``kind`` key (a tagged union).
Action = FailFast | StaticResponse | ClusterFallback


class AutoTrip(Frozen, kw_only=True):
    metric: Literal["error_ratio", "slow_ratio"] = "error_ratio"
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.5
    """Share of bad calls in the window that trips it."""
    slow_call_ms: Annotated[float, Meta(gt=0)] = 1000.0
    """A call slower than this counts as slow (``slow_ratio`` only)."""
    window: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    """Seconds of history judged."""
    minimum_requests: Annotated[int, Meta(ge=1)] = 20
    """No verdict on fewer calls than this: three failures out of four is noise."""
    cooldown: Annotated[float, Meta(gt=0, le=86400)] = 30.0
    """Seconds degraded before probing."""
    probe_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.1
    """Share of requests sent to the real target while probing."""
    probe_requests: Annotated[int, Meta(ge=1)] = 10
    """Probe outcomes collected before deciding to recover or trip again."""


class SwitchBehaviour(Frozen, kw_only=True):
    """What a switch does, without where it applies: its mode, auto-trip rule and action.
    The control plane's TrafficPolicy carries this (``spec.degrade``, see
    :mod:`meshproxy.config.policy`); the proxy makes it a service switch."""

    mode: Mode = "auto"
    enabled: bool = True
    enforced: bool = True
    """False: shadow mode, count but never degrade."""
    auto: AutoTrip | None = None
    """The automatic rule; without it, ``auto`` means normal."""
    action: Action = msgspec.field(default_factory=FailFast)


class SwitchConfig(SwitchBehaviour, kw_only=True):
    """One switch of the proxy config: a behaviour plus its name, level and target."""

    name: str
    level: Level
    target: Annotated[str, Meta(min_length=1)]
    """Route name, route group name or cluster name, by ``level``."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise field_error("name", "switch names are lowercase letters, digits, '-' and "
                              "'.' (max 63), starting and ending alphanumeric")


class Verdict(enum.IntEnum):
    """What :meth:`Switch.check` says about one request."""

    PASS = 0      # serve normally
    PROBE = 1     # serve normally; the outcome decides recovery (report it)
    DEGRADE = 2   # answer with the action


_DEGRADE = Verdict.DEGRADE


@dataclass(frozen=True, slots=True)
class SwitchStatus:
    name: str
    level: Level
    target: str
    mode: Mode
    mode_source: str
    state: Literal["normal", "tripped", "probing"]
    degrading: bool
    enabled: bool
    enforced: bool
    degraded_total: int
    shadow_degraded_total: int
    action: dict[str, Any]
    config_id: str


def config_id(config: SwitchConfig) -> str:
    """A short fingerprint of a switch's config: an admin flip recorded for one
    config (by a supervisor, for its workers) is not applied to another."""
    return hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:16]


class Switch:
    """One degradation switch and its automatic state machine."""

    def __init__(self, config: SwitchConfig, *, clock: Clock,
                 events: EventLog | None = None) -> None:
        self.config = config
        self.name = config.name
        self.config_id = config_id(config)
        self._clock = clock
        self._events = events
        self.mode: Mode = config.mode
        self.mode_source = "config"
        self.state: Literal["normal", "tripped", "probing"] = "normal"
        self._tripped_at = 0.0
        self._probe_credit = 0.0
        self._probes = self._probe_bad = 0
        auto = config.auto
        self._window = RollingWindow(auto.window) if auto else None
        self._slow_s = auto.slow_call_ms / 1000.0 if auto else 0.0
        self._by_errors = auto is not None and auto.metric == "error_ratio"
        self.degraded_total = 0
        self.shadow_degraded_total = 0
        self._refresh_passive()

    def _refresh_passive(self) -> None:
        cfg = self.config
        #: True while :meth:`check` would say PASS with no side effect (disabled, off,
        #: or auto and normal): the fused fast path then skips the call. Kept current
        #: by every change of mode or state.
        self.passive = (not cfg.enabled or self.mode == "off"
                        or (self.mode == "auto" and (self.state == "normal" or cfg.auto is None)))

    # -- request path -----------------------------------------------------------------
    def check(self, now: float) -> Verdict:
        cfg = self.config
        if not cfg.enabled or self.mode == "off":
            return Verdict.PASS
        if self.mode == "on":
            return self._degrade()
        auto = cfg.auto
        state = self.state
        if state == "normal" or auto is None:   # only auto switches leave "normal"
            return Verdict.PASS
        if state == "tripped":
            if now - self._tripped_at < auto.cooldown:
                return self._degrade()
            self._enter("probing", f"cooldown {auto.cooldown:g} s over",
                        cooldown_s=auto.cooldown)
        if not cfg.enforced:
            return Verdict.PROBE          # shadow: everything goes through, all judged
        self._probe_credit += auto.probe_ratio
        if self._probe_credit >= 1.0:
            self._probe_credit -= 1.0
            return Verdict.PROBE
        return self._degrade()

    def _degrade(self) -> Verdict:
        if self.config.enforced:
            self.degraded_total += 1
            return Verdict.DEGRADE
        self.shadow_degraded_total += 1
        return Verdict.PASS

    def observe(self, verdict: Verdict, ok: bool, latency: float, now: float) -> None:
        """The outcome of a request ``check`` let through (``ok``: not an error as the
        route classifies it; ``latency`` in seconds). Cheap unless it changes state."""
        w = self._window
        if w is None or self.mode != "auto" or verdict == _DEGRADE:
            return  # (a window exists exactly when the switch has an auto rule)
        bad = (not ok) if self._by_errors else latency >= self._slow_s
        auto: AutoTrip = self.config.auto  # type: ignore[assignment]
        if self.state == "normal":
            w.record(now, bad)
            if bad:
                calls, failures, _ = w.totals(now)
                if calls >= auto.minimum_requests and failures >= auto.threshold * calls:
                    self._enter("tripped",
                                f"{auto.metric.replace('_', ' ')} {failures / calls:.0%} over "
                                f"{calls} requests in {auto.window:g} s "
                                f"(threshold {auto.threshold:.0%})",
                                ratio=failures / calls, requests=calls,
                                threshold=auto.threshold)
        elif self.state == "probing" and verdict == Verdict.PROBE:
            self._probes += 1
            self._probe_bad += bad
            if self._probes >= auto.probe_requests:
                ratio = self._probe_bad / self._probes
                numbers = {"ratio": ratio, "probes": self._probes, "threshold": auto.threshold}
                if ratio < auto.threshold:
                    self._enter("normal", f"probes recovered: {ratio:.0%} bad over "
                                f"{self._probes} probes", **numbers)
                else:
                    self._enter("tripped", f"probes still failing: {ratio:.0%} bad over "
                                f"{self._probes} probes", **numbers)

    def _enter(self, state: Literal["normal", "tripped", "probing"], why: str,
               **numbers: float) -> None:
        old, self.state = self.state, state
        self._refresh_passive()
        if state == "tripped":
            self._tripped_at = self._clock()
        self._probes = self._probe_bad = 0
        self._probe_credit = 0.0
        if self._window is not None:
            self._window.reset()
        if self._events is not None:
            shadow = "" if self.config.enforced else " (shadow mode: not enforced)"
            self._events.record(
                f"switch.{state}", self.name, f"{self.config.level} switch {self.name} "
                f"({self.config.target}) {old} -> {state}: {why}{shadow}",
                level=logging.WARNING if state == "tripped" else logging.INFO, **numbers)

    # -- admin ------------------------------------------------------------------------
    def set_mode(self, mode: Mode, *, source: str = "admin") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"switch mode must be 'auto', 'on' or 'off', not {mode!r}")
        old, self.mode, self.mode_source = self.mode, mode, source
        self._refresh_passive()
        if self._events is not None:
            self._events.record("switch.mode", self.name,
                                f"switch {self.name} mode {old} -> {mode} by {source}")

    @property
    def degrading(self) -> bool:
        """Would a request be degraded now (ignoring probes and shadow mode)?"""
        if not self.config.enabled or self.mode == "off":
            return False
        return self.mode == "on" or self.state != "normal"

    def status(self) -> SwitchStatus:
        c = self.config
        return SwitchStatus(c.name, c.level, c.target, self.mode, self.mode_source,
                            self.state, self.degrading, c.enabled, c.enforced,
                            self.degraded_total, self.shadow_degraded_total,
                            to_builtins(c.action), self.config_id)

    def __repr__(self) -> str:
        return (f"<Switch {self.name} {self.config.level}:{self.config.target} "
                f"mode={self.mode} state={self.state} degraded={self.degraded_total}>")


class SwitchRegistry:
    """Every switch of the running config, by name."""

    def __init__(self, configs: Iterable[SwitchConfig] = (), *, clock: Clock,
                 events: EventLog | None = None) -> None:
        self._clock = clock
        self._events = events
        self._switches: dict[str, Switch] = {}
        self.reload(configs)

    def reload(self, configs: Iterable[SwitchConfig]) -> None:
        """Swap in a new set; switches with an unchanged config keep their state and
        admin-set mode. Duplicate names are refused and change nothing."""
        new: dict[str, SwitchConfig] = {}
        for c in configs:
            if c.name in new:
                raise ValueError(f"duplicate degradation switch name {c.name!r}")
            new[c.name] = c
        self._switches = rebuild(self._switches, new, lambda _n, c: Switch(
            c, clock=self._clock, events=self._events))

    def applicable(self, *, route: str, function: str | None,
                   cluster: str) -> tuple[Switch, ...]:
        """Switches for a route, most specific first (interface, function, service).
        Resolve once per route when the config is built, not per request."""
        by_level: Mapping[Level, str | None] = {"interface": route, "function": function,
                                                "service": cluster}
        order = {"interface": 0, "function": 1, "service": 2}
        hits = [s for s in self._switches.values()
                if by_level[s.config.level] is not None
                and s.config.target == by_level[s.config.level]]
        return tuple(sorted(hits, key=lambda s: order[s.config.level]))

    def get(self, name: str) -> Switch:
        try:
            return self._switches[name]
        except KeyError:
            raise KeyError(f"no degradation switch named {name!r}") from None

    def flip(self, name: str, mode: Mode, *, source: str = "admin") -> SwitchStatus:
        """The admin API's ``POST /switches/{name}``: set a switch's mode."""
        s = self.get(name)
        s.set_mode(mode, source=source)
        return s.status()

    def list(self) -> list[SwitchStatus]:
        return [s.status() for s in self._switches.values()]

    def __len__(self) -> int:
        return len(self._switches)
