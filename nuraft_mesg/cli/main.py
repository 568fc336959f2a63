"""``nuraft-mesg <command>``: the verb parser; each program is imported only when asked for,
so ``nuraft-mesg status`` does not pay for the REPL's or the demo's imports."""

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
    sub.add_parser("repl", help="interactive trio REPL (nuraft_mesg.cli.repl)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from nuraft_mesg.cli.demo import main as demo_main

        return demo_main(rest)
    if args.command == "server":
        from nuraft_mesg.cli.server import main as server_main

        return server_main(rest)
    if args.command == "client":
        from nuraft_mesg.cli.remote import client_main

        return client_main(rest)
    if args.command == "status":
        from nuraft_mesg.cli.remote import status_main

        return status_main(rest)
    if args.command == "repl":
        from nuraft_mesg.cli.repl import main as repl_main

        return repl_main(rest)
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
