"""The in-memory hot-path benchmark drives the production proxy code: every exchange it
times really went upstream and back, for the plain and the guarded route alike, and it
refuses to report a number when the proxy stopped proxying."""

from __future__ import annotations

import pytest
import yaml

from loadtests.hotpath import BODY, GUARDS, HotPath, config, main, measure
from meshproxy.config import parse_config
from meshproxy.proxy import Proxy


@pytest.mark.parametrize("guarded", [False, True])
async def test_each_exchange_is_proxied_through_the_real_stack(guarded: bool) -> None:
    """The request the proxy writes upstream carries the client's request (with the
    proxy's forwarding headers) and the client gets the upstream's answer; the guarded
    config really runs its guards (the rate limiter admits every request)."""
    proxy = Proxy(parse_config(yaml.safe_dump(config(guarded=guarded))))
    await proxy.start()
    try:
        hot = HotPath(proxy)
        for _ in range(3):
            sent, got = hot.request()
            assert sent.startswith(b"GET /index HTTP/1.1\r\n")
            assert b"\r\nx-forwarded-for: 127.0.0.1\r\n" in sent.lower()
            assert got.startswith(b"HTTP/1.1 200 OK\r\n")
            assert got.endswith(BODY)
            assert b"connection: keep-alive" not in got.lower()  # hop-by-hop dropped
        limiters = proxy.resilience.rate_limiters
        if guarded:
            assert [rl.admitted_total for rl in limiters.values()] == [3]
        else:
            assert not limiters
    finally:
        await proxy.close()


async def test_measure_refuses_when_the_proxy_stops_answering(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose exchanges are refused (here a rate limit of one request) is an
    error, not a fast number."""
    monkeypatch.setitem(GUARDS, "route",
                        {"rate_limit": {"rate": 0.001, "burst": 1, "backend": "local"}})
    with pytest.raises(RuntimeError, match="did not proxy"):
        await measure(guarded=True, requests=10, repeats=1)


def test_cli_prints_both_routes_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "200", "--repeats", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "us CPU per request" in out
    assert "guarded / plain CPU per request" in out
