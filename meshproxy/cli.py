"""``meshproxy`` command line: run the proxy from a YAML config file.

``meshproxy --config FILE`` runs one process; ``--workers N`` (or ``process.workers``
in the file) runs a supervisor and N workers sharing each port; ``--validate`` checks
the file, prints every problem with its field path, and exits (0 valid, 1 not).
``--worker-of`` is internal: the supervisor starts its workers with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from meshproxy import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshproxy",
        description=(
            "The mesh's sidecar proxy: L7 HTTP/1.1 and L4 TCP listeners routing to clusters "
            "of endpoints, with a Prometheus /metrics admin port, hot reload of its config "
            "file (on change and on SIGHUP) and graceful drain on SIGTERM."
        ),
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (see config/)")
    p.add_argument("--validate", action="store_true",
                   help="check the config file, print what is wrong, exit 0 (valid) or 1")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes sharing each port with SO_REUSEPORT "
                        "(default: process.workers in the file, else 1)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"meshproxy {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config:
        parser.print_usage(sys.stderr)
        print("meshproxy: error: --config FILE is required", file=sys.stderr)
        return 2
    from meshproxy.config import ConfigError, load_config

    try:
        loaded = load_config(args.config)
    except ConfigError as e:
        print(f"meshproxy: {e.source} is not valid:", file=sys.stderr)
        for path, msg in e.problems:
            print(f"  {path}: {msg}", file=sys.stderr)
        return 1
    if args.validate:
        cfg = loaded.config
        print(f"{args.config}: valid (version {loaded.version}): {len(cfg.listeners)} "
              f"listener(s), {len(cfg.clusters)} cluster(s)")
        return 0
    workers = args.workers if args.workers is not None else loaded.config.process.workers
    if not 1 <= workers <= 64:
        print("meshproxy: error: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    prefix = f"worker {os.getpid()} " if args.worker_of else ""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
    import uvloop

    if args.worker_of is not None or workers == 1:
        from meshproxy.run import serve

        return uvloop.run(serve(loaded, args.config, worker_of=args.worker_of,
                                run_dir=os.environ.get("MESHPROXY_RUN_DIR")))
    from meshproxy.workers import Supervisor

    return uvloop.run(Supervisor(loaded, args.config, workers).run())


if __name__ == "__main__":
    sys.exit(main())
