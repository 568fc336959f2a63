#!/usr/bin/env python3
"""The echo example's client (nuraft_mesg's test_package ``example_client``).

    python examples/echo_client.py -g G --server S (--add ID | --remove ID | -m MSG)

Sends one request to server S (0..4) for group G (0..4 or a uuid) as an external client
(:class:`nuraft_mesg.client.ExternalClient`): ``--add ID`` / ``--remove ID`` change the
membership (ID is a server id 0..4), ``-m MSG`` appends MSG and prints what the echo state
machine returned.  Leader redirects are followed; SERVER_IS_JOINING and CONFIG_CHANGING are
retried with a bounded back-off.  Exit status 0 on success, 1 with the error code otherwise.
"""

from __future__ import annotations

import argparse
import sys

import trio
from echo_common import SERVER_UUIDS, add_address_options, directory, group_uuid, server_index

from nuraft_mesg import RaftError
from nuraft_mesg.client import ExternalClient


async def run(args: argparse.Namespace) -> None:
    async with ExternalClient(directory(args)) as client:
        dest = SERVER_UUIDS[args.server]
        if args.add is not None:
            await client.add_server(args.group, SERVER_UUIDS[args.add], dest)
            print(f"added server {args.add} to group {args.group}")
        elif args.remove is not None:
            await client.rem_server(args.group, SERVER_UUIDS[args.remove], dest)
            print(f"removed server {args.remove} from group {args.group}")
        else:
            echoed = await client.append_entry(args.group, args.message.encode(), dest)
            print(f"echoed: {echoed.decode(errors='replace')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-g", "--group", type=group_uuid, required=True, metavar="G")
    parser.add_argument("--server", type=server_index, required=True, metavar="S")
    op = parser.add_mutually_exclusive_group(required=True)
    op.add_argument("--add", type=server_index, metavar="ID")
    op.add_argument("--remove", type=server_index, metavar="ID")
    op.add_argument("-m", "--message", metavar="MSG")
    add_address_options(parser)
    args = parser.parse_args(argv)
    try:
        trio.run(run, args)
    except RaftError as exc:
        print(f"error: {exc.code.name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
