"""Benchmarks of the mesh, each reported side by side with a reference and as ratios.

The proxy benchmark (issue #3) is ``python -m loadtests.bench``:

- ``targets``  the things measured: an nginx backend, and in front of it nginx, haproxy
  (http and tcp mode) and meshproxy (L7 and L4), each with its config written to a
  temporary directory and bound to a free loopback port;
- ``procs``    starting those servers in their own process groups, waiting for their
  ports, killing the whole group afterwards, and sampling their memory and CPU;
- ``wrk``      closed-loop throughput with ``wrk`` (a Lua ``done()`` hook prints exact
  percentiles as JSON, so nothing is scraped from wrk's human output);
- ``openloop`` an open-loop, constant-rate generator (coordinated omission corrected:
  latency is counted from each request's scheduled send time, as wrk2 and fortio do);
- ``samples``  latency samples kept whole (every run is bounded) and exact percentiles;
- ``report``   the tables, the ratios to the reference proxies and the verdicts against
  the issue's targets;
- ``bench``    the command line tying them together.

Other benchmarks of the project live beside these modules; ``README.md`` has one
section per benchmark.
"""
