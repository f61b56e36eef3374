"""A worker process for the cross-process rate-limit test (run as a script, not a test).

Usage: shm_worker.py TABLE_PATH START_AT END_AT RATE BURST. Spins (politely: a short sleep
between attempts) from monotonic time START_AT to END_AT taking tokens from the shared
table under one key, then prints JSON: admitted count, first and last attempt times.
"""

from __future__ import annotations

import json
import sys
import time

from meshproxy.resilience.ratelimit import RateLimitConfig, RateLimiter
from meshproxy.resilience.shm_buckets import SharedBucketTable


def main() -> None:
    path, start_at, end_at, rate, burst = sys.argv[1:6]
    table = SharedBucketTable(path, slots=64)
    limiter = RateLimiter("api", RateLimitConfig(rate=float(rate), burst=int(burst)),
                          backend=table, clock=time.monotonic)
    while time.monotonic() < float(start_at):
        time.sleep(0.001)
    admitted = attempts = 0
    first = last = time.monotonic()
    while (now := time.monotonic()) < float(end_at):
        last = now
        admitted += limiter.check(now=now).allowed
        attempts += 1
        time.sleep(0.0005)
    table.close()
    print(json.dumps({"admitted": admitted, "attempts": attempts, "first": first,
                      "last": last}), flush=True)


if __name__ == "__main__":
    main()
