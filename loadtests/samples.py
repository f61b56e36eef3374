"""Latency samples and exact percentiles.

Every benchmark run here is bounded (a rate times a duration, a capped count), so the
samples are kept whole in a compact ``array('d')`` instead of being folded into
histogram buckets: percentiles are then exact, with no bucket resolution to argue about
(HdrHistogram exists to bound memory for unbounded runs, which these are not). A hard
cap still guards memory: past ``capacity`` samples are counted but not stored, and
:attr:`Samples.dropped` says how many, so a report can never silently summarise a subset.

Percentiles use the nearest-rank definition (the smallest sample such that at least
``p`` percent of samples are less than or equal to it), as HdrHistogram and wrk2 do; it
never interpolates a latency that was not observed.

Neighbours: ``openloop`` fills these; ``report`` prints them.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence

DEFAULT_CAPACITY = 2_000_000  # 16 MB of doubles; a 5,000/s run of 60 s needs 300,000


class Samples:
    """A bounded bag of durations in seconds, with exact nearest-rank percentiles."""

    __slots__ = ("_data", "_sorted", "capacity", "dropped")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._data = array("d")
        self._sorted: Sequence[float] | None = None

    def add(self, value: float) -> None:
        if len(self._data) >= self.capacity:
            self.dropped += 1
            return
        self._data.append(value)
        self._sorted = None

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def merge(self, other: Samples) -> None:
        """Add every sample of ``other`` (and its dropped count) to this bag."""
        room = max(0, self.capacity - len(self._data))
        self._data.extend(other._data[:room])
        self.dropped += other.dropped + max(0, len(other._data) - room)
        self._sorted = None

    def __len__(self) -> int:
        return len(self._data)

    def _ordered(self) -> Sequence[float]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        return self._sorted

    def percentile(self, p: float) -> float:
        """The nearest-rank ``p``-th percentile (0 < p <= 100); NaN when there are none."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p}")
        data = self._ordered()
        if not data:
            return math.nan
        rank = math.ceil(p / 100 * len(data))
        return data[max(rank, 1) - 1]

    def max(self) -> float:
        data = self._ordered()
        return data[-1] if data else math.nan

    def mean(self) -> float:
        return math.fsum(self._data) / len(self._data) if self._data else math.nan

    def summary(self, percentiles: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
        """``count``, ``dropped``, then mean, percentiles and max in milliseconds."""
        out: dict[str, float] = {"count": len(self._data), "dropped": self.dropped}
        out["mean_ms"] = self.mean() * 1e3
        for p in percentiles:
            out[f"p{_label(p)}_ms"] = self.percentile(p) * 1e3
        out["max_ms"] = self.max() * 1e3
        return out

    def __repr__(self) -> str:
        return f"<Samples n={len(self._data)} dropped={self.dropped}>"


def _label(p: float) -> str:
    """50 -> "50", 99.9 -> "999" (the usual p999 spelling)."""
    return f"{p:g}".replace(".", "")
