"""``python -m loadtests.openloop``: the generator's command line prints its result as
JSON and says plainly when it cannot run (bad URL, nothing listening)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from support.net import wait_for_port
from support.procs import Managed

ROOT = Path(__file__).resolve().parents[2]


def test_cli_prints_the_run_as_json(spawn: Callable[..., Managed], free_port: int,
                                    tmp_path: Path) -> None:
    # Python's own http.server answers HTTP/1.0 and closes every connection: the
    # generator has to reconnect for each request and still count all of them.
    (tmp_path / "index.html").write_text("hello\n")
    server = spawn.python("-m", "http.server", str(free_port), "--bind", "127.0.0.1",  # type: ignore[attr-defined]
                          "--directory", str(tmp_path), name="http.server")
    wait_for_port("127.0.0.1", free_port, timeout=30, proc=server)
    cli = spawn.python("-m", "loadtests.openloop", f"http://127.0.0.1:{free_port}/",  # type: ignore[attr-defined]
                       "--rate", "100", "--duration", "0.3", "--warmup", "0",
                       "--connections", "4", name="openloop", cwd=ROOT)
    rc = cli.wait(120)
    out = cli.output()
    doc = json.loads(out[out.index("{"):])
    assert doc["scheduled"] == 30
    assert doc["completed"] + sum(doc["errors"].values()) + doc["unfinished"] == 30
    assert doc["completed"] > 0
    assert doc["latency"]["count"] == doc["completed"]
    assert rc == (0 if doc["rate_kept"] else 3)


def test_cli_refuses_a_bad_url_and_reports_a_refused_connection(
        spawn: Callable[..., Managed], free_port: int) -> None:
    bad = spawn.python("-m", "loadtests.openloop", "https://127.0.0.1:1/",  # type: ignore[attr-defined]
                       name="openloop-bad", cwd=ROOT)
    assert bad.wait(60) == 1
    assert "url must be http://HOST:PORT/" in bad.output()
    nobody = spawn.python("-m", "loadtests.openloop", f"http://127.0.0.1:{free_port}/",  # type: ignore[attr-defined]
                          "--warmup", "0", name="openloop-refused", cwd=ROOT)
    assert nobody.wait(60) == 1
    assert "openloop:" in nobody.output()
