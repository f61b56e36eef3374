"""Resource quantities parse exactly as Kubernetes writes them, and bad ones are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.quantity import bytes_value, cpu_millis, format_bytes, format_cpu, parse_quantity


@pytest.mark.parametrize(("text", "millis"), [
    ("250m", 250), ("1", 1000), ("0.1", 100), ("1.5", 1500), ("2k", 2_000_000), (2, 2000),
    ("1e-3", 1), ("0.0001", 1),  # rounded up, never to zero for a positive request
])
def test_cpu_in_millicores(text, millis) -> None:
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(("text", "n"), [
    ("128Mi", 128 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("1.5Gi", 3 * 2**29),
    ("500", 500), ("1e3", 1000), ("12E", 12 * 10**18),
])
def test_memory_in_bytes(text, n) -> None:
    assert bytes_value(text) == n


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "12 Mi", "Mi", "1Mb", "--1", "1x"])
def test_invalid_quantity_names_the_input(bad) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(bad)


def test_negative_request_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        cpu_millis("-1")


@given(st.integers(min_value=0, max_value=10**7))
def test_format_round_trips(n: int) -> None:
    assert cpu_millis(format_cpu(n)) == n
    assert bytes_value(format_bytes(n * 1024)) == n * 1024
