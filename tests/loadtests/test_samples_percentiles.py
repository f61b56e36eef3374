"""Latency samples: exact nearest-rank percentiles, a hard memory cap that is reported,
and merging of interleaved rounds."""

from __future__ import annotations

import math

import pytest

from loadtests.samples import Samples


def test_percentiles_are_nearest_rank_and_never_interpolated() -> None:
    s = Samples()
    s.extend(float(v) for v in range(100, 0, -1))  # 1..100, unsorted on purpose
    assert s.percentile(50) == 50.0
    assert s.percentile(99) == 99.0
    assert s.percentile(99.9) == 100.0  # ceil(0.999 * 100) = 100th value
    assert s.percentile(1) == 1.0
    assert s.max() == 100.0
    three = Samples()
    three.extend([0.3, 0.1, 0.2])
    assert three.percentile(50) == 0.2  # an observed value, not a midpoint


def test_summary_is_in_milliseconds_and_empty_samples_give_nan() -> None:
    s = Samples()
    assert math.isnan(s.percentile(50))
    s.extend([0.001, 0.002, 0.003, 0.004])
    summary = s.summary()
    assert summary["count"] == 4
    assert summary["p50_ms"] == pytest.approx(2.0)
    assert summary["p999_ms"] == pytest.approx(4.0)
    assert summary["mean_ms"] == pytest.approx(2.5)


def test_capacity_counts_what_it_could_not_keep() -> None:
    s = Samples(capacity=3)
    s.extend([1.0, 2.0, 3.0, 4.0, 5.0])
    assert len(s) == 3
    assert s.dropped == 2
    assert s.summary()["dropped"] == 2


def test_merge_keeps_every_sample_and_respects_capacity() -> None:
    a, b = Samples(capacity=4), Samples()
    a.extend([1.0, 2.0])
    b.extend([3.0, 4.0, 5.0])
    a.merge(b)
    assert len(a) == 4
    assert a.dropped == 1
    assert a.max() == 4.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Samples(capacity=0)
    with pytest.raises(ValueError, match="percentile"):
        Samples().percentile(0)
