"""An upstream endpoint: its address, weight, health verdicts and live load.

One :class:`Endpoint` object lives as long as its address stays in its cluster: an
endpoint update (from the config file or from discovery) keeps the object and only
changes its weight, so counters, health and balancer state survive the update. The
request path maintains ``active_requests``; active health checks set ``healthy``;
outlier detection sets ``ejected_until``. Balancers read these, never write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Endpoint:
    """One ``host:port`` of a cluster. Identity is the object; ``key`` is the address."""

    host: str
    port: int
    weight: int = 1
    healthy: bool = True          # verdict of active health checks (True until checked)
    ejected_until: float = 0.0    # loop-clock time until which outlier detection ejects it
    active_requests: int = 0      # requests in flight to it, kept by the request path
    stats: dict[str, float] = field(default_factory=dict)  # free-form counters for /clusters

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def available(self, now: float) -> bool:
        """Healthy by active checks and not currently ejected."""
        return self.healthy and self.ejected_until <= now

    def __repr__(self) -> str:
        return (f"<Endpoint {self.address} w={self.weight} healthy={self.healthy} "
                f"active={self.active_requests}>")
