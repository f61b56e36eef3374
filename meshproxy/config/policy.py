"""The per-service traffic policy: the sections a service owner sets, in one schema.

Two groups, each embedding the models that live beside their runtime objects (so a
field is defined once and documented once):

- :class:`ClusterPolicy`: how callers reach the service: load balancing
  (:mod:`meshproxy.balance.config`), active health checks (:mod:`meshproxy.health`),
  the cluster's and each endpoint's circuit breaker, outlier detection and concurrency
  limits (:mod:`meshproxy.resilience`). :class:`~meshproxy.config.clusters.ClusterConfig`
  *is* a ClusterPolicy plus the cluster's name, endpoints and transport settings.
- :class:`RoutePolicy`: how one route's requests are treated: retries with their
  budget, hedging, deadline propagation, rate limit, priority (load shedding) and the
  route group that degradation switches target.
  :class:`~meshproxy.config.listeners.RouteConfig` is a RoutePolicy plus the match,
  the cluster and the route timeout.

:class:`ServicePolicy` groups both, plus ``degrade``: the service's degradation switch
(:class:`~meshproxy.resilience.degrade.SwitchBehaviour`: mode ``on``/``off``/``auto``,
the auto-trip rule, the action). The control plane's ``TrafficPolicy`` spec validates
against it, and the proxy config uses the same models, so there is one schema. Every
section that is None (the default) is off and adds nothing to the request path (see
:mod:`meshproxy.stack`).

A policy's ``degrade`` becomes, in every proxy following the Service, a switch of level
``service`` whose target is the cluster that follows it, named
:func:`service_switch_name` (``<namespace>.<service>``, e.g. ``default.recommendations``:
the same name in every proxy, and the name a proxy file uses to override it). How it
is merged under the file: :mod:`meshproxy.discovery.policy`.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from meshproxy.balance.config import LoadBalancerConfig
from meshproxy.config.base import Settings
from meshproxy.deadline import DeadlineConfig
from meshproxy.health import HealthCheckConfig
from meshproxy.hedge import HedgeConfig
from meshproxy.resilience.breaker import BreakerConfig
from meshproxy.resilience.concurrency import ConcurrencyConfig
from meshproxy.resilience.degrade import SwitchBehaviour
from meshproxy.resilience.outlier import OutlierConfig
from meshproxy.resilience.ratelimit import RateLimitConfig
from meshproxy.resilience.shedding import RANK, Priority
from meshproxy.retry import RetryBudgetConfig, RetryConfig
from meshproxy.schema import format_path


class ClusterPolicy(Settings, kw_only=True):
    """The policy of one upstream cluster (every section optional)."""

    #: Balancing algorithm and its settings; smooth weighted round robin by default.
    load_balancer: LoadBalancerConfig = LoadBalancerConfig()
    #: Active health checks (HTTP or TCP); None: every endpoint counts as healthy.
    health_check: HealthCheckConfig | None = None
    #: The whole cluster's circuit breaker, checked once per request (outside retries).
    breaker: BreakerConfig | None = None
    #: One breaker per endpoint, checked per attempt (a retry goes elsewhere).
    endpoint_breaker: BreakerConfig | None = None
    #: Passive health: eject endpoints on 5xx runs, low success rate or high latency.
    outlier: OutlierConfig | None = None
    #: Requests / retries / connections / pending requests for the whole cluster.
    limits: ConcurrencyConfig | None = None
    #: The same limits for each endpoint, so one slow host cannot take the whole
    #: cluster's allowance.
    endpoint_limits: ConcurrencyConfig | None = None

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        # ``lb_policy: least_request`` is shorthand for ``load_balancer: {policy: ...}``
        # (applied by meshproxy.schema.parse before validation).
        if "lb_policy" in data:
            data = dict(data)
            policy = data.pop("lb_policy")
            if "load_balancer" in data:
                raise ValueError("set either lb_policy or load_balancer, not both")
            data["load_balancer"] = {"policy": policy}
        return data

    @property
    def guarded(self) -> bool:
        """Whether any per-request protection (breakers, outlier, limits) is on."""
        return any(x is not None for x in (self.breaker, self.endpoint_breaker, self.outlier,
                                           self.limits, self.endpoint_limits))


class RoutePolicy(Settings, kw_only=True):
    """The policy of one route (every section optional)."""

    #: Retry failed attempts (on other endpoints), within ``retry_budget``.
    retry: RetryConfig | None = None
    #: Caps retries and hedges to a share of the route's traffic (used when ``retry``
    #: or ``hedge`` is set).
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    #: Send a second copy of a slow idempotent request to another endpoint.
    hedge: HedgeConfig | None = None
    #: Honour and forward the caller's remaining time (``x-mesh-timeout-ms``).
    deadline: DeadlineConfig | None = None
    #: Token bucket per route, client address or header value; 429 beyond it.
    rate_limit: RateLimitConfig | None = None
    #: Shed order under overload: best_effort first, critical last.
    priority: Priority = "normal"
    #: The route group ("function") that degradation switches of level function target.
    function: Annotated[str, Meta(min_length=1, max_length=63)] | None = None

    @property
    def rank(self) -> int:
        """The priority as the load shedder ranks it."""
        return RANK[self.priority]


class ServicePolicy(Settings, kw_only=True):
    """What the control plane's TrafficPolicy carries for one service: the cluster
    policy of the service and the default policy of routes to it."""

    cluster: ClusterPolicy = ClusterPolicy()
    route: RoutePolicy = RoutePolicy()
    #: The Service's degradation switch (level ``service``, named
    #: :func:`service_switch_name`); None: the policy declares none.
    degrade: SwitchBehaviour | None = None


def error_path(loc: tuple[int | str, ...]) -> str:
    """A problem's path (:class:`meshproxy.schema.Problem`) in a policy as a suffix
    of the policy's own path: ``.cluster.breaker``, ``.route.retry.retry_on[0]``,
    ``.degrade.action.status`` (a tagged union's tag is a key of the input, not a level
    of the path)."""
    return format_path(loc, dotted=True)


#: Switch names are at most 63 characters (see :class:`~meshproxy.resilience.degrade.
#: SwitchConfig`); namespace and service are DNS labels, so the pair may not fit.
SWITCH_NAME_MAX = 63


def service_switch_name(namespace: str, service: str) -> str:
    """The name of the switch a TrafficPolicy's ``degrade`` declares for
    ``namespace/service``: ``<namespace>.<service>`` (a dot cannot occur in either, so
    the name is unambiguous). ValueError when it would exceed :data:`SWITCH_NAME_MAX`."""
    name = f"{namespace}.{service}"
    if len(name) > SWITCH_NAME_MAX:
        raise ValueError(f"the degradation switch of service {namespace}/{service} would be "
                         f"named {name!r}, longer than {SWITCH_NAME_MAX} characters: use "
                         f"shorter namespace and service names")
    return name
