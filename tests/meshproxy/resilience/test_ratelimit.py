"""Rate limits: bucket arithmetic on a manual clock, keys, the 429 headers, bounded key
tables, and the shared-memory backend across processes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.resilience.ratelimit import LocalBackend, RateLimitConfig, RateLimiter
from meshproxy.resilience.shm_buckets import SharedBucketTable
from meshproxy.schema import SchemaError, parse

WORKER = Path(__file__).with_name("shm_worker.py")


def limiter(clock, backend=None, **cfg) -> RateLimiter:
    be = backend if backend is not None else LocalBackend()
    return RateLimiter("orders", RateLimitConfig(**cfg), backend=be, clock=clock)


def test_burst_then_steady_rate(clock) -> None:
    """A full bucket admits ``burst`` at once, then one per 1/rate seconds."""
    rl = limiter(clock, rate=10, burst=5)
    assert [rl.check().allowed for _ in range(6)] == [True] * 5 + [False]
    clock.advance(0.1)
    assert rl.check().allowed
    assert not rl.check().allowed
    clock.advance(10)                      # refill is capped at the burst
    assert [rl.check().allowed for _ in range(6)] == [True] * 5 + [False]


def test_refusal_carries_429_retry_after_and_ratelimit_headers(clock) -> None:
    rl = limiter(clock, rate=0.5, burst=2)
    ok = rl.check()
    assert ok.headers() == [("RateLimit-Limit", "2"), ("RateLimit-Remaining", "1"),
                            ("RateLimit-Reset", "2")]
    rl.check()
    no = rl.check()
    assert (no.allowed, no.status, no.retry_after, no.remaining, no.reset) == (
        False, 429, 2, 0, 4)
    assert ("Retry-After", "2") in no.headers()


def test_hot_path_refusal_and_check_share_one_route_bucket(clock) -> None:
    """The engine's ``refusal`` (a keyless local bucket taken inline) and ``check`` draw
    on the same bucket with the same arithmetic; a limiter rebuilt on the same backend
    (a reload) continues it rather than starting full."""
    be = LocalBackend()
    rl = limiter(clock, be, rate=10, burst=3)
    assert [rl.refusal() is None for _ in range(2)] == [True, True]
    assert rl.check().allowed                # the third token, from the same bucket
    refused = rl.refusal()
    assert refused is not None
    assert (refused.status, refused.remaining, refused.retry_after) == (429, 0, 1)
    again = limiter(clock, be, rate=10, burst=3)
    assert again.refusal() is not None       # still empty after the rebuild
    clock.advance(0.1)
    assert again.refusal() is None           # refilled at the rate
    assert again.refusal() is not None
    assert (rl.admitted_total, rl.limited_total) == (3, 1)


@pytest.mark.parametrize("backend", ["inline", "local-keyed", "shared"])
def test_refund_gives_one_token_back_never_above_the_burst(clock, tmp_path,
                                                           backend: str) -> None:
    """A refunded admission (a request the layer stack is about to admit again) gives
    its token back to the bucket it came from, and the admitted count with it; a
    refund to a full bucket leaves it full: on the route-wide inline bucket, a keyed
    local bucket and the workers' shared table."""
    table = SharedBucketTable(tmp_path / "rl.table", slots=32) if backend == "shared" \
        else None
    try:
        keyed = backend == "local-keyed"
        rl = limiter(clock, backend=table, rate=0.001, burst=2,
                     key="client_address" if keyed else "none")
        key = rl.key(client_address="10.0.0.1") if keyed else None
        other = rl.key(client_address="10.0.0.2") if keyed else None
        assert rl.refusal(key=key) is None
        assert rl.refusal(key=key) is None
        assert rl.refusal(key=key) is not None  # empty
        rl.refund(key)
        assert rl.admitted_total == 1
        assert rl.refusal(key=key) is None      # the token given back, used again
        assert rl.refusal(key=key) is not None
        if keyed:
            rl.refund(other)                    # a full bucket of another client
            assert rl.refusal(key=other) is None
            assert rl.refusal(key=other) is None
            assert rl.refusal(key=other) is not None  # still two, not three
        else:
            clock.advance(1e6)                  # full again
            rl.refund(key)
            assert [rl.refusal() is None for _ in range(3)] == [True, True, False]
    finally:
        if table is not None:
            table.close()


def test_default_burst_is_one_second_of_rate() -> None:
    assert RateLimitConfig(rate=50).capacity == 50
    assert RateLimitConfig(rate=0.2).capacity == 1


def test_client_address_keys_separate_buckets(clock) -> None:
    rl = limiter(clock, rate=1, burst=1, key="client_address")
    assert rl.check(client_address="10.0.0.1").allowed
    assert not rl.check(client_address="10.0.0.1").allowed
    assert rl.check(client_address="10.0.0.2").allowed


def test_header_keys_and_missing_header_shares_one_bucket(clock) -> None:
    """Omitting the header is no way around the limit: all such requests share a bucket,
    which is not the bucket of any real value."""
    rl = limiter(clock, rate=1, burst=1, key="header", header="X-Tenant")
    assert rl.header_name == "x-tenant"
    assert rl.check(header_value=b"acme").allowed
    assert not rl.check(header_value="acme").allowed
    assert rl.check(header_value=None).allowed
    assert not rl.check(header_value=None).allowed
    assert rl.check(header_value=b"").allowed


def test_local_backend_forgets_least_recently_used_past_max_keys(clock) -> None:
    be = LocalBackend(max_keys=2)
    rl = limiter(clock, backend=be, rate=1, burst=1, key="client_address")
    rl.check(client_address="a")
    rl.check(client_address="b")
    rl.check(client_address="a")          # a is now the most recent
    rl.check(client_address="c")          # evicts b
    assert len(be) == 2
    assert not rl.check(client_address="a").allowed   # a kept its (empty) bucket
    assert rl.check(client_address="b").allowed       # b forgotten: back full


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="needs 'header'"):
        RateLimitConfig(rate=1, key="header")
    with pytest.raises(ValueError, match="only used with key 'header'"):
        RateLimitConfig(rate=1, header="x")
    with pytest.raises(SchemaError, match="rate: Expected `float` > 0"):
        parse({"rate": 0}, RateLimitConfig)
    with pytest.raises(SchemaError, match="rate: required field is missing"):
        parse({}, RateLimitConfig)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.5, 1000), burst=st.integers(1, 100),
       gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_admitted_never_exceeds_burst_plus_rate_times_elapsed(rate, burst, gaps) -> None:
    """The token-bucket contract, for any arrival pattern."""
    now = [0.0]
    rl = RateLimiter("p", RateLimitConfig(rate=rate, burst=burst), backend=LocalBackend(),
                     clock=lambda: now[0])
    admitted = 0
    for g in gaps:
        now[0] += g
        admitted += rl.check().allowed
    assert admitted <= burst + rate * now[0] + 1e-6


def test_shared_table_is_shared_between_openers(tmp_path, clock) -> None:
    """Two tables on one file (two workers) draw from the same bucket."""
    path = tmp_path / "rl.table"
    t1, t2 = SharedBucketTable(path, slots=32), SharedBucketTable(path, slots=32)
    try:
        a = limiter(clock, backend=t1, rate=1, burst=3)
        b = limiter(clock, backend=t2, rate=1, burst=3)
        got = [a.check().allowed, b.check().allowed, a.check().allowed, b.check().allowed]
        assert got == [True, True, True, False]
    finally:
        t1.close()
        t2.close()


def test_shared_table_is_bounded_and_reuses_least_recent_slot(tmp_path, clock) -> None:
    t = SharedBucketTable(tmp_path / "rl.table", slots=4)
    try:
        rl = limiter(clock, backend=t, rate=1, burst=1, key="client_address")
        for i in range(50):
            clock.advance(0.01)
            assert rl.check(client_address=f"10.0.0.{i}").allowed
        assert len(t) == 4
    finally:
        t.close()


def test_shared_table_refuses_a_file_of_another_shape(tmp_path) -> None:
    path = tmp_path / "rl.table"
    SharedBucketTable(path, slots=8).close()
    with pytest.raises(ValueError, match="has 8 slots, not 16"):
        SharedBucketTable(path, slots=16)
    (tmp_path / "junk").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="not a rate-limit bucket table"):
        SharedBucketTable(tmp_path / "junk", slots=8)


def test_shared_table_reopens_after_fork(tmp_path) -> None:
    """A forked child must not share the parent's flock (one open file description)."""
    t = SharedBucketTable(tmp_path / "rl.table", slots=8)
    pid = os.fork()
    if pid == 0:                                       # child
        code = 0
        try:
            ok, _ = t.take(b"k", time.monotonic(), 1.0, 5.0)
            code = 0 if ok and t._pid == os.getpid() else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        ok, left = t.take(b"k", time.monotonic(), 1.0, 5.0)
        assert ok
        assert left < 4.0 + 0.5                        # the child's token is gone too
    finally:
        t.close()


@pytest.mark.slow
def test_two_processes_share_one_rate_within_five_percent(tmp_path, spawn) -> None:
    """Two real worker processes on one shared table admit ``burst + rate x elapsed``
    together (within 5%), not twice that, and both get a share."""
    rate, burst, duration = 200.0, 50, 3.0
    path = tmp_path / "rl.table"
    SharedBucketTable(path, slots=64).close()
    start = time.monotonic() + 1.5          # time for both interpreters to start
    procs = [spawn([sys.executable, str(WORKER), str(path), str(start),
                    str(start + duration), str(rate), str(burst)], name=f"w{i}")
             for i in range(2)]
    results = []
    for p in procs:
        assert p.wait(60) == 0, p.output()
        results.append(json.loads(p.output().strip().splitlines()[-1]))
    admitted = sum(r["admitted"] for r in results)
    elapsed = max(r["last"] for r in results) - min(r["first"] for r in results)
    expected = burst + rate * elapsed
    assert all(r["admitted"] > 0 for r in results), results
    print(f"admitted {admitted}, expected {expected:.1f}: {results}")
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected, results)
