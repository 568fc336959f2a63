"""Command line: ``nuraft-mesg <command>`` (also ``python -m nuraft_mesg``)."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nuraft-mesg", description="multi-group Raft on trio")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a local 3-node demo on loopback", add_help=False)
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from nuraft_mesg.demo import main as demo_main

        return demo_main(rest)
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
