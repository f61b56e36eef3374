"""Tests of meshproxy.resilience (a package so test module names cannot clash)."""
