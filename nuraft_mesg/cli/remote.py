"""``nuraft-mesg client`` and ``nuraft-mesg status``: talk to running nodes from outside.

::

    nuraft-mesg status --server 127.0.0.1:7001
    nuraft-mesg client --server 127.0.0.1:7001 --peers-file peers.txt -g GROUP -m "set x 1"
    nuraft-mesg client --server UUID1 --peer UUID1=127.0.0.1:7001 ... -g GROUP --add UUID4
    nuraft-mesg client --server UUID1 --peer ... -g GROUP --remove UUID2

Both take the TLS and token options of :mod:`nuraft_mesg.cli.security` (``--tls-ca``,
``--tls-cert``/``--tls-key``, ``--tls-server-name``, ``--mtls``, ``--token-file``/``--token-env``)
for nodes that serve TLS or verify tokens::

    nuraft-mesg status --server node1.example:7001 --tls-ca ca.pem --token-file token.txt

``--server`` names the node to talk to: a uuid listed by ``--peer``/``--peers-file``, or a
``host:port`` (the node is then asked for its uuid).  The client follows leader redirects,
so it needs the address of every node that may lead the group (the same directory the nodes
use).  A peers file is the server's TOML file (a ``[peers]`` table of ``"UUID" = "HOST:PORT"``,
:func:`nuraft_mesg.discovery.load_peers_file`), so one file serves nodes and clients; or one
``UUID=HOST:PORT`` per line (``#`` comments allowed); or a JSON object
``{"UUID": "HOST:PORT", ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import trio

from nuraft_mesg.cli.security import Security, add_security_arguments, parse_args_with_security
from nuraft_mesg.cli.status_format import format_status
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.discovery import load_peers_file
from nuraft_mesg.errors import RaftError
from nuraft_mesg.reads import READ_MODES
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.transport.base import Status, TransportError

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
    try:
        is_toml = "peers" in tomllib.loads(text)
    except tomllib.TOMLDecodeError:  # the line format ("UUID=HOST:PORT") is not TOML
        is_toml = False
    if is_toml:
        return load_peers_file(path)
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


_SECURITY_EPILOG = (
    "Nodes that serve TLS need --tls-ca (or a certificate the system trusts); nodes with "
    "mutual TLS also need --tls-cert/--tls-key; nodes that verify tokens need --token-file "
    "or --token-env.  See docs/security.md, 'From the command line'."
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="NODE",
                        help="the node to talk to: a uuid from the peers, or HOST:PORT")
    parser.add_argument("--peer", type=parse_peer, action="append", default=[],
                        metavar="UUID=HOST:PORT", help="a node's address (repeat)")
    parser.add_argument("--peers-file", type=Path, metavar="FILE",
                        help="node addresses: the server's TOML peers file, or one "
                             "UUID=HOST:PORT per line, or JSON")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="deadline of one request in seconds (default 5)")
    add_security_arguments(parser, serving=False)


def _peers(args: argparse.Namespace) -> dict[str, str]:
    peers = load_peers(args.peers_file) if args.peers_file is not None else {}
    peers.update(dict(args.peer))
    return peers


def _error_line(exc: RaftError, security: Security) -> str:
    """``error: CODE: message``.  A node's refusal of the call's credentials is reported
    with its gRPC status (UNAUTHENTICATED, PERMISSION_DENIED) rather than the NuRaft code it
    maps to (BAD_REQUEST), and a hint."""
    cause = exc.__cause__ or exc.__context__  # the client raises from the TransportError
    if isinstance(cause, TransportError):
        if cause.status == Status.UNAUTHENTICATED and security.token_client is None:
            return (f"error: UNAUTHENTICATED: {exc} (the node requires a token: give it with "
                    "--token-file or --token-env)")
        if cause.status in (Status.UNAUTHENTICATED, Status.PERMISSION_DENIED):
            return f"error: {cause.status.name}: {exc} (the node refused this token)"
    return f"error: {exc.code.name}: {exc}"


def _run(fn: Callable[[argparse.Namespace, Security, TextIO], Awaitable[None]],
         args: argparse.Namespace, security: Security, out: TextIO) -> int:
    try:
        trio.run(fn, args, security, out)
    except RaftError as exc:
        print(_error_line(exc, security), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _client_for(args: argparse.Namespace, security: Security,
                retry_timeout: float = 10.0) -> ExternalClient:
    return ExternalClient(_peers(args), request_timeout=args.timeout,
                          retry_timeout=retry_timeout, tls=security.tls,
                          token_client=security.token_client)


# -- client -----------------------------------------------------------------------------------
def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nuraft-mesg client",
        description="An external client (not a group member): add or remove a member, "
        "append an entry, or read, through any member; leader redirects are followed and "
        "SERVER_IS_JOINING / CONFIG_CHANGING retried with a bounded back-off.",
        epilog=_SECURITY_EPILOG,
    )
    _add_common(parser)
    parser.add_argument("-g", "--group", required=True, help="group uuid")
    op = parser.add_mutually_exclusive_group(required=True)
    op.add_argument("--add", metavar="UUID", help="add this server to the group")
    op.add_argument("--remove", metavar="UUID", help="remove this server from the group")
    op.add_argument("-m", "--message", help="append this message (UTF-8) to the group's log")
    op.add_argument("--get", metavar="KEY",
                    help="read KEY from the KV state machine (the query 'get KEY')")
    op.add_argument("--query", metavar="TEXT",
                    help="send this read-only query (UTF-8) to the group's state machine")
    parser.add_argument("--mode", choices=READ_MODES, default="linearizable",
                        help="consistency of --get / --query (default linearizable; see "
                        "docs/reads.md)")
    parser.add_argument("--priority", type=int, default=1, help="priority of an added member")
    parser.add_argument("--learner", action="store_true", help="add the member as a learner")
    parser.add_argument("--retry-timeout", type=float, default=10.0,
                        help="total seconds spent retrying transient refusals (default 10)")
    return parser


async def _client(args: argparse.Namespace, security: Security, out: TextIO) -> None:
    async with _client_for(args, security, retry_timeout=args.retry_timeout) as client:
        dest = await client.resolve(args.server)
        if args.add is not None:
            await client.add_server(args.group, args.add, dest, priority=args.priority,
                                    learner=args.learner)
            print(f"added {args.add} to {args.group}", file=out)
        elif args.remove is not None:
            await client.rem_server(args.group, args.remove, dest)
            print(f"removed {args.remove} from {args.group}", file=out)
        elif args.get is not None:
            answer = await client.read(args.group, KVStateMachine.get_query(args.get), dest,
                                       mode=args.mode)
            value = KVStateMachine.decode_get(answer)
            print(f"{args.get} = {value}" if value is not None else f"{args.get} is not set",
                  file=out)
        elif args.query is not None:
            answer = await client.read(args.group, args.query.encode(), dest, mode=args.mode)
            print(answer.decode(errors="replace"), file=out)
        else:
            result = await client.append_entry(args.group, args.message.encode(), dest)
            print(f"appended; result: {result.decode(errors='replace')}", file=out)
        out.flush()


def client_main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args, security = parse_args_with_security(client_parser(), argv, serving=False)
    return _run(_client, args, security, out or sys.stdout)


# -- status -----------------------------------------------------------------------------------
def status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nuraft-mesg status",
        description="Print a node's groups (Admin/Status): leader, term, commit index, "
        "members and their lag (known for every member on the leader, for itself only on "
        "a follower).",
        epilog=_SECURITY_EPILOG,
    )
    _add_common(parser)
    parser.add_argument("-g", "--group", action="append", default=[],
                        help="only this group (repeat; default: every group)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


async def _status(args: argparse.Namespace, security: Security, out: TextIO) -> None:
    async with _client_for(args, security) as client:
        status = await client.status(args.server, tuple(args.group))
    if args.json:
        json.dump(dataclasses.asdict(status), out, indent=2)
        out.write("\n")
    else:
        print(format_status(status), file=out)
    out.flush()


def status_main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args, security = parse_args_with_security(status_parser(), argv, serving=False)
    return _run(_status, args, security, out or sys.stdout)
