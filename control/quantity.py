"""Kubernetes resource quantities: ``"250m"`` CPU, ``"128Mi"`` memory, as integers.

CPU is kept in millicores and memory (and every other resource) in bytes/units, so the
scheduler and the agent add and compare integers, never floats. The grammar is
Kubernetes' (a decimal number, optionally with a decimal SI suffix ``n u m k M G T P E``
or a binary one ``Ki Mi Gi Ti Pi Ei``, or an exponent ``e3``); anything else is a
:class:`ValueError` that names the input.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"),
            "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18")}
_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity (``"1.5Gi"`` → 1610612736)."""
    if isinstance(value, bool):
        raise ValueError(f"quantity must be a number or string, not {value!r}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"quantity {value!r} is not finite")
        return Decimal(str(value))
    m = _RE.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"invalid quantity {value!r}: expected e.g. 500m, 2, 128Mi, 1G")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        base = Decimal(number)
    except InvalidOperation as e:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"invalid quantity {value!r}") from e
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if len(suffix) > 1 and suffix[0] in "eE":
        return base.scaleb(int(suffix[1:]))
    return base * _DECIMAL[suffix]


def cpu_millis(value: str | int | float) -> int:
    """CPU in millicores, rounded up as Kubernetes does (``"0.1"`` → 100, ``"1m"`` → 1)."""
    q = parse_quantity(value)
    if q < 0:
        raise ValueError(f"cpu quantity {value!r} is negative")
    return math.ceil(q * 1000)


def bytes_value(value: str | int | float) -> int:
    """Memory (or any countable resource) as an integer, rounded up."""
    q = parse_quantity(value)
    if q < 0:
        raise ValueError(f"quantity {value!r} is negative")
    return math.ceil(q)


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n: int) -> str:
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)
