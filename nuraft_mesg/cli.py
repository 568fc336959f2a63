"""``nuraft-mesg client`` and ``nuraft-mesg status``: talk to running nodes from outside.

::

    nuraft-mesg status --server 127.0.0.1:7001
    nuraft-mesg client --server 127.0.0.1:7001 --peers-file peers.txt -g GROUP -m "set x 1"
    nuraft-mesg client --server UUID1 --peer UUID1=127.0.0.1:7001 ... -g GROUP --add UUID4
    nuraft-mesg client --server UUID1 --peer ... -g GROUP --remove UUID2

``--server`` names the node to talk to: a uuid listed by ``--peer``/``--peers-file``, or a
``host:port`` (the node is then asked for its uuid).  The client follows leader redirects,
so it needs the address of every node that may lead the group (the same directory the nodes
use).  A peers file holds one ``UUID=HOST:PORT`` per line (``#`` comments allowed), or a JSON
object ``{"UUID": "HOST:PORT", ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import trio

from nuraft_mesg.admin import format_status
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError

__all__ = ["client_main", "load_peers", "parse_peer", "status_main"]


def parse_peer(text: str) -> tuple[str, str]:
    """``UUID=HOST:PORT`` -> (uuid, "host:port")."""
    peer_uuid, sep, address = text.strip().partition("=")
    try:
        peer_uuid = str(uuid.UUID(peer_uuid.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{peer_uuid!r} is not a uuid") from None
    address = address.strip()
    if not sep or ":" not in address:
        raise argparse.ArgumentTypeError(f"expected UUID=HOST:PORT, got {text!r}")
    return peer_uuid, address


def load_peers(path: Path) -> dict[str, str]:
    """Read a peers file (see the module doc)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return dict(parse_peer(f"{k}={v}") for k, v in obj.items())
    peers: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if "=" not in line:  # "UUID HOST:PORT"
                line = "=".join(line.split(None, 1))
            peer_uuid, address = parse_peer(line)
            peers[peer_uuid] = address
    return peers


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="NODE",
                        help="the node to talk to: a uuid from the peers, or HOST:PORT")
    parser.add_argument("--peer", type=parse_peer, action="append", default=[],
                        metavar="UUID=HOST:PORT", help="a node's address (repeat)")
    parser.add_argument("--peers-file", type=Path, metavar="FILE",
                        help="node addresses, one UUID=HOST:PORT per line (or JSON)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="deadline of one request in seconds (default 5)")


def _peers(args: argparse.Namespace) -> dict[str, str]:
    peers = load_peers(args.peers_file) if args.peers_file is not None else {}
    peers.update(dict(args.peer))
    return peers


def _run(fn: Callable[[argparse.Namespace, TextIO], Awaitable[None]],
         args: argparse.Namespace, out: TextIO) -> int:
    try:
        trio.run(fn, args, out)
    except RaftError as exc:
        print(f"error: {exc.code.name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


# -- client -----------------------------------------------------------------------------------
def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nuraft-mesg client",
        description="An external client (not a group member): add or remove a member, or "
        "append an entry, through any member; leader redirects are followed and "
        "SERVER_IS_JOINING / CONFIG_CHANGING retried with a bounded back-off.",
    )
    _add_common(parser)
    parser.add_argument("-g", "--group", required=True, help="group uuid")
    op = parser.add_mutually_exclusive_group(required=True)
    op.add_argument("--add", metavar="UUID", help="add this server to the group")
    op.add_argument("--remove", metavar="UUID", help="remove this server from the group")
    op.add_argument("-m", "--message", help="append this message (UTF-8) to the group's log")
    parser.add_argument("--priority", type=int, default=1, help="priority of an added member")
    parser.add_argument("--learner", action="store_true", help="add the member as a learner")
    parser.add_argument("--retry-timeout", type=float, default=10.0,
                        help="total seconds spent retrying transient refusals (default 10)")
    return parser


async def _client(args: argparse.Namespace, out: TextIO) -> None:
    async with ExternalClient(_peers(args), request_timeout=args.timeout,
                              retry_timeout=args.retry_timeout) as client:
        dest = await client.resolve(args.server)
        if args.add is not None:
            await client.add_server(args.group, args.add, dest, priority=args.priority,
                                    learner=args.learner)
            print(f"added {args.add} to {args.group}", file=out)
        elif args.remove is not None:
            await client.rem_server(args.group, args.remove, dest)
            print(f"removed {args.remove} from {args.group}", file=out)
        else:
            result = await client.append_entry(args.group, args.message.encode(), dest)
            print(f"appended; result: {result.decode(errors='replace')}", file=out)
        out.flush()


def client_main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = client_parser().parse_args(argv)
    return _run(_client, args, out or sys.stdout)


# -- status -----------------------------------------------------------------------------------
def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nuraft-mesg status",
        description="Print a node's groups (Admin/Status): leader, term, commit index, "
        "members and their lag (known for every member on the leader, for itself only on "
        "a follower).",
    )
    _add_common(parser)
    parser.add_argument("-g", "--group", action="append", default=[],
                        help="only this group (repeat; default: every group)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


async def _status(args: argparse.Namespace, out: TextIO) -> None:
    peers = _peers(args)
    async with ExternalClient(peers, request_timeout=args.timeout) as client:
        status = await client.status(args.server, tuple(args.group))
    if args.json:
        json.dump(dataclasses.asdict(status), out, indent=2)
        out.write("\n")
    else:
        print(format_status(status), file=out)
    out.flush()


def status_main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = status_parser().parse_args(argv)
    return _run(_status, args, out or sys.stdout)
