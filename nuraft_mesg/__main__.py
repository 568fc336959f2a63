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
    sub.add_parser("server", help="run one node with a durable store", add_help=False)
    sub.add_parser("client", help="external client: add/remove a member, append an entry",
                   add_help=False)
    sub.add_parser("status", help="print a node's groups: leader, term, commit, members, lag",
                   add_help=False)
    sub.add_parser("repl", help="interactive trio REPL (nuraft_mesg.repl)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from nuraft_mesg.demo import main as demo_main

        return demo_main(rest)
    if args.command == "server":
        from nuraft_mesg.server import main as server_main

        return server_main(rest)
    if args.command == "client":
        from nuraft_mesg.cli import client_main

        return client_main(rest)
    if args.command == "status":
        from nuraft_mesg.cli import status_main

        return status_main(rest)
    if args.command == "repl":
        return _repl(rest)
    parser.error(f"unknown command {args.command}")


def _repl(argv: list[str]) -> int:
    """``nuraft_mesg.repl:main(argv) -> int``, imported only when asked for."""
    try:
        from nuraft_mesg.repl import main as repl_main  # type: ignore[import-not-found, unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "nuraft_mesg.repl":
            raise
        print("error: the REPL is not available in this installation "
              "(module nuraft_mesg.repl is missing)", file=sys.stderr)
        return 2
    result = repl_main(argv)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
