"""The shared pieces: the bounded event ring (order, filters, counts that outlive the
ring, logging), the rolling window (exact within a bucket, forgets old buckets) and
config-keyed reuse on rebuild."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.resilience.events import EventLog
from meshproxy.resilience.reuse import rebuild
from meshproxy.resilience.window import RollingWindow


def test_ring_is_bounded_and_counts_keep_counting(caplog) -> None:
    log = EventLog(capacity=3, wall=lambda: 42.0)
    with caplog.at_level(logging.INFO, logger="meshproxy.events"):
        for i in range(5):
            log.record("breaker.open", f"c{i}", f"opened c{i}", failures=i)
    assert [e.subject for e in log] == ["c2", "c3", "c4"]
    assert log.counts() == {"breaker.open": 5}
    assert "breaker.open c4: opened c4" in caplog.text
    assert log.recent(1)[0].as_dict() == {
        "seq": 5, "time": 42.0, "kind": "breaker.open", "subject": "c4",
        "message": "opened c4", "numbers": {"failures": 4}}


def test_recent_filters_by_kind_prefix_and_sequence() -> None:
    log = EventLog(capacity=10)
    log.record("breaker.open", "a", "x")
    log.record("outlier.eject", "b", "y")
    log.record("breaker.closed", "a", "z")
    assert [e.kind for e in log.recent(kind="breaker.")] == ["breaker.open", "breaker.closed"]
    assert [e.kind for e in log.recent(kind="breaker.open")] == ["breaker.open"]
    assert [e.seq for e in log.recent(since_seq=1)] == [2, 3]
    assert [e.seq for e in log.recent(2)] == [2, 3]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        EventLog(capacity=0)


def test_window_counts_and_forgets() -> None:
    w = RollingWindow(10.0, buckets=10)
    w.record(100.0, failed=True)
    w.record(105.5, failed=False, slow=True)
    assert w.totals(105.9) == (2, 1, 1)
    assert w.totals(110.5) == (1, 0, 1)      # the bucket of t=100 has left the window
    assert w.totals(200.0) == (0, 0, 0)
    w.record(200.0, failed=True)
    w.reset()
    assert w.totals(200.0) == (0, 0, 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=100))
def test_window_matches_exact_count_to_within_one_bucket(events) -> None:
    """Against exact bookkeeping: the window counts every call newer than
    ``window - bucket width`` and none older than ``window``."""
    w = RollingWindow(5.0, buckets=5)
    now, log = 0.0, []
    for gap, failed in events:
        now += gap
        w.record(now, failed=failed)
        log.append((now, failed))
    calls, failures, _ = w.totals(now)
    surely_in = sum(1 for t, _ in log if t > now - 4.0)
    maybe_in = sum(1 for t, _ in log if t > now - 5.0 - 1e-9)
    assert surely_in <= calls <= maybe_in
    assert failures <= calls


def test_window_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="window must be a positive"):
        RollingWindow(0)
    with pytest.raises(ValueError, match="buckets must be"):
        RollingWindow(1, buckets=0)


@dataclass
class Obj:
    config: int
    resizable: bool = False

    def reconfigure(self, config: int) -> bool:
        if self.resizable:
            self.config = config
        return self.resizable


def test_rebuild_reuses_equal_or_resizable_and_builds_the_rest() -> None:
    same, resizable, fixed = Obj(1), Obj(2, resizable=True), Obj(3)
    old = {"same": same, "resizable": resizable, "fixed": fixed, "gone": Obj(4)}
    new = rebuild(old, {"same": 1, "resizable": 20, "fixed": 30, "new": 5},
                  lambda _k, c: Obj(c))
    assert new["same"] is same
    assert new["resizable"] is resizable
    assert resizable.config == 20
    assert new["fixed"] is not fixed
    assert new["fixed"].config == 30
    assert set(new) == {"same", "resizable", "fixed", "new"}
