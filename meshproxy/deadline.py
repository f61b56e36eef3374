"""Deadline propagation: the time a request has left travels with it, hop to hop.

Without it every hop of a slow chain A → B → C waits its own full timeout, and C keeps
working for a caller that gave up long ago. With it, the outbound proxy of A sends the
time left in a header; B's inbound proxy starts its request with ``min(own route
timeout, header)``; B's outbound proxy sends what is left of *that*, and so on. Any hop
that receives a request whose budget is already spent answers 504 at once ("fail
fast") instead of doing work nobody will read.

Wire format (``x-mesh-timeout-ms``): the remaining budget as a relative duration in
whole milliseconds, 1 to 8 ASCII digits (up to ~27.7 hours), nothing else. Relative,
as gRPC's ``grpc-timeout`` is, so hops need no synchronised clocks; the network time
between hops is not subtracted (a few hundred microseconds on one machine), which
errs on the generous side. Rounding is always down, so a hop never believes it has
more time than its caller. Parsing is strict: a sign, spaces inside, a decimal
point, more than 8 digits, or two differing values are errors
(:class:`DeadlineHeaderError`, which the engine answers with 400) rather than
guesses, because a guessed deadline is a silent wrong timeout.

Times are the event loop's clock (``loop.time()``) on one hop; the header is the only
thing that crosses hops. Neighbours: ``retry`` cuts each try's timeout to what
:meth:`Deadline.remaining` leaves, ``hedge`` never waits past it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta

from meshproxy.schema import Frozen

DEFAULT_HEADER = "x-mesh-timeout-ms"
MAX_DIGITS = 8


class DeadlineHeaderError(ValueError):
    """The deadline header is malformed; the message says how."""


class DeadlineConfig(Frozen, kw_only=True):
    """A listener's deadline propagation settings."""

    # Read the budget from incoming requests (an inbound sidecar does; an edge proxy
    # facing untrusted clients may prefer not to let them shorten its timeouts).
    accept: bool = True
    # Send the remaining budget upstream.
    propagate: bool = True
    header: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)] = \
        DEFAULT_HEADER
    # Below this many seconds left, fail fast with 504 instead of trying: 1 ms is less
    # than any upstream round trip, so an attempt could not succeed in time anyway.
    fail_fast_below_s: Annotated[float, Meta(ge=0.0, le=10.0)] = 0.001


def parse_timeout_ms(values: Sequence[bytes | str], *,
                     header: str = DEFAULT_HEADER) -> float | None:
    """The budget in seconds from the header's values (None when absent).

    ``values`` are all values of the header in the request (repeated headers allowed
    only when they are identical). Raises :class:`DeadlineHeaderError` otherwise.
    """
    if not values:
        return None
    parsed: set[int] = set()
    for raw in values:
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        value = text.strip(" \t")  # optional whitespace around a field value (RFC 9110)
        if not value:
            raise DeadlineHeaderError(f"{header}: empty value")
        if len(value) > MAX_DIGITS:
            raise DeadlineHeaderError(
                f"{header}: {value[:20]!r} has more than {MAX_DIGITS} digits")
        if not (value.isascii() and value.isdigit()):
            raise DeadlineHeaderError(
                f"{header}: {value!r} is not a whole number of milliseconds")
        parsed.add(int(value))
    if len(parsed) > 1:
        raise DeadlineHeaderError(f"{header}: conflicting values {sorted(parsed)}")
    return parsed.pop() / 1000.0


def format_timeout_ms(remaining_s: float) -> bytes:
    """The header value for ``remaining_s`` seconds: whole milliseconds, rounded down,
    clamped to [0, 99999999]."""
    # + 1 ns: 0.29 * 1000 is 289.99999999999994 in floating point, and is 290 ms.
    ms = int(remaining_s * 1000.0 + 1e-6) if remaining_s > 0 else 0
    return str(min(ms, 10**MAX_DIGITS - 1)).encode()


@dataclass(frozen=True, slots=True)
class Deadline:
    """The moment (loop clock) a request's answer stops being useful."""

    expires_at: float

    @classmethod
    def start(cls, now: float, *, route_timeout_s: float | None,
              incoming_s: float | None) -> Deadline | None:
        """The deadline of a request arriving at ``now``: the earlier of the route's
        own timeout and the caller's budget; None when neither is set."""
        limits = [t for t in (route_timeout_s, incoming_s) if t is not None]
        if not limits:
            return None
        for t in limits:
            if t < 0:
                raise ValueError(f"a timeout cannot be negative, got {t}")
        return cls(now + min(limits))

    def remaining(self, now: float) -> float:
        """Seconds left (negative once past)."""
        return self.expires_at - now

    def expired(self, now: float, *, fail_fast_below_s: float = 0.001) -> bool:
        """True when so little is left that an attempt should not start (504 now)."""
        return self.expires_at - now < fail_fast_below_s

    def header_value(self, now: float) -> bytes:
        """What to send upstream in the deadline header at ``now``."""
        return format_timeout_ms(self.expires_at - now)
