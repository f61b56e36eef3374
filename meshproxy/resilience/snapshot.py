"""Statistics objects as plain JSON values, for the admin API and worker snapshots.

The resilience modules report state as frozen dataclasses (``BreakerStats``,
``LimiterStats``, ...), some with tuple keys (a breaker's transitions by
``(from, to)``). :func:`plain` turns any of them, nested in dicts and lists, into what
``json.dumps`` takes: dataclasses become dicts, tuple keys become ``"from->to"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def plain(value: Any) -> Any:
    """``value`` with dataclasses, tuples and tuple-keyed dicts made JSON-friendly."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {("->".join(map(str, k)) if isinstance(k, tuple) else str(k)): plain(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value
