"""What the echo example's server and client share (nuraft_mesg's test_package layout):
five fixed server uuids (server ids 0..4, ports ``port_base + id``) and five fixed group
uuids (group indices 0..4)."""

from __future__ import annotations

import argparse
import uuid

SERVER_UUIDS = [f"e{i}000000-0000-4000-8000-00000000000{i}" for i in range(5)]
GROUP_UUIDS = [f"9{i}000000-0000-4000-8000-00000000000{i}" for i in range(5)]
DEFAULT_PORT_BASE = 9000
GROUP_TYPE = "echo"


def server_index(text: str) -> int:
    index = int(text)
    if not 0 <= index < len(SERVER_UUIDS):
        raise argparse.ArgumentTypeError(f"server id must be in 0..{len(SERVER_UUIDS) - 1}")
    return index


def group_uuid(text: str) -> str:
    """A group index 0..4, or any group uuid."""
    if text.isdigit() and int(text) < len(GROUP_UUIDS):
        return GROUP_UUIDS[int(text)]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"group must be 0..{len(GROUP_UUIDS) - 1} or a uuid"
        ) from None


def add_address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address of every server")
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE,
                        help="server N listens on PORT_BASE + N (default 9000)")
    parser.add_argument("--ports", help="explicit ports of servers 0..4, comma separated "
                        "(overrides --port-base)")


def directory(args: argparse.Namespace) -> dict[str, str]:
    """uuid -> "host:port" of the five servers."""
    if args.ports:
        ports = [int(p) for p in args.ports.split(",")]
        if len(ports) != len(SERVER_UUIDS):
            raise SystemExit(f"--ports needs {len(SERVER_UUIDS)} ports")
    else:
        ports = [args.port_base + i for i in range(len(SERVER_UUIDS))]
    return {u: f"{args.host}:{p}" for u, p in zip(SERVER_UUIDS, ports, strict=True)}
