"""``meshproxy`` command line: run the proxy from a YAML config file.

The engine (issue #3) is not built yet: every run mode says so and exits non-zero.
``--help`` describes what the command will do once it is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from meshproxy import __version__

NOT_YET = 2  # exit status of a mode that is planned but not implemented


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshproxy",
        description=(
            "The mesh's sidecar proxy: L7 HTTP/1.1 and L4 TCP listeners routing to clusters "
            "of endpoints, with load balancing, retries, breakers, limits and degradation, "
            "a Prometheus /metrics admin port and hot reload of its config file."
        ),
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (see config/)")
    p.add_argument("--validate", action="store_true",
                   help="check the config file, print what is wrong, exit (planned)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes sharing each port with SO_REUSEPORT (planned)")
    p.add_argument("--version", action="version", version=f"meshproxy {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.config:
        build_parser().print_usage(sys.stderr)
        print("meshproxy: error: --config FILE is required", file=sys.stderr)
        return 2
    print("meshproxy: the proxy engine is not implemented yet (issue #3)", file=sys.stderr)
    return NOT_YET


if __name__ == "__main__":
    sys.exit(main())
