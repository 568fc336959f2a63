"""``nuraft-mesg server``: one node as its own process, with the durable default store.

::

    python -m nuraft_mesg server --uuid U1 --port 7001 --data-dir /var/lib/n1 \\
        --peer U2=127.0.0.1:7002 --peer U3=127.0.0.1:7003 [--create-group G]

Peers (uuid -> host:port) come from one of three sources (docs/deploy.md):

* ``--peer UUID=HOST:PORT``, repeated: a fixed table;
* ``--peers-file FILE``: the TOML ``[peers]`` table of
  :class:`~nuraft_mesg.discovery.PeersFileApplication`, the same file on every node (this
  node's own entry included), reread when it changes;
* ``--peer-dns TEMPLATE`` (``{uuid}`` and/or ``{ordinal}``) with ``--dns-members U0,U1,...``
  (the uuids in ordinal order): :class:`~nuraft_mesg.discovery.DnsApplication`.

They do not combine: a reread peers file replaces its whole table, and a DNS template names
every member, so a second source would only raise the question of which one wins.

The node serves RaftStep on ``--port``, keeps every group it hosts in ``<data-dir>/nuraft.db``
and, when restarted on the same data dir, rejoins them with their log, term, vote and config.
Groups are joined the usual ways: a leader elsewhere adds this node (``add_member``), or
``--create-group G`` creates ``G`` here (unless it is already stored) and adds every other
known peer (the ``--peer`` entries, the peers file's other entries or the other
``--dns-members``) to it.  Writes come from members (``append_entries``) or from external
clients sending ``CLIENT_REQUEST`` over RaftStep
(:class:`nuraft_mesg.testing.client.RaftClient`); the state machine is the in-memory
:class:`~nuraft_mesg.storage.memory.KVStateMachine` (with ``--sessions`` wrapped in
:class:`~nuraft_mesg.sessions.SessionStateMachine`), rebuilt on every start from the durable
log -- and, with ``--snapshot-distance N``, from the latest snapshot the store persisted, the
log being compacted behind it (``--reserved-log-items`` entries kept).

TLS and tokens (docs/security.md, "From the command line")::

    python -m nuraft_mesg server ... --tls-cert node.pem --tls-key node.key --tls-ca ca.pem \\
        --mtls --token-file /etc/nuraft/token

``--tls-cert``/``--tls-key`` serve TLS and make every channel to a peer TLS, verified against
``--tls-ca``; ``--mtls`` requires client certificates signed by it.  The token (from a file or an
environment variable, never from the command line) is both required on every inbound call and
sent on every outbound one, so every node of a cluster is given the same options.

``--ready-file PATH`` is written (atomically, as JSON with the port and the pid) once the node
serves and every ``--create-group`` group holds all its peers.  SIGTERM or Ctrl-C shut the
node down cleanly; SIGKILL is a crash the store is built to survive.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from pathlib import Path

import trio

from nuraft_mesg.app import InMemoryApplication
from nuraft_mesg.cli.demo import run_until_interrupted
from nuraft_mesg.cli.security import Security, add_security_arguments, parse_args_with_security
from nuraft_mesg.discovery import DnsApplication, PeersFileApplication
from nuraft_mesg.errors import RaftError
from nuraft_mesg.manager import Manager, ManagerConfig
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.sessions import SessionStateMachine
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.memory import KVStateMachine

log = logging.getLogger("nuraft_mesg.server")


def _peer(text: str) -> tuple[str, str]:
    peer_uuid, sep, address = text.partition("=")
    try:
        uuid.UUID(peer_uuid)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{peer_uuid!r} is not a uuid") from None
    if not sep or ":" not in address:
        raise argparse.ArgumentTypeError(f"expected UUID=HOST:PORT, got {text!r}")
    return peer_uuid, address


def _members(text: str) -> list[str]:
    members = [m.strip() for m in text.split(",") if m.strip()]
    for member in members:
        try:
            uuid.UUID(member)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{member!r} is not a uuid") from None
    if not members:
        raise argparse.ArgumentTypeError("expected UUID,UUID,...")
    return members


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuraft-mesg server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uuid", required=True, help="this node's server uuid")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", required=True, help="directory of the durable store")
    peers = parser.add_argument_group(
        "peers", "where the other nodes are: one of --peer, --peers-file, --peer-dns")
    peers.add_argument("--peer", type=_peer, action="append", default=[],
                       metavar="UUID=HOST:PORT", help="another node (repeat)")
    peers.add_argument("--peers-file", type=Path, metavar="FILE",
                       help="TOML file with a [peers] table of \"UUID\" = \"HOST:PORT\" "
                            "(every node, this one included), reread when it changes")
    peers.add_argument("--peer-dns", metavar="TEMPLATE",
                       help="peer names from a template with {uuid} and/or {ordinal}, e.g. "
                            "'nuraft-{ordinal}.nuraft.default.svc:7000' (no :PORT: --port)")
    peers.add_argument("--dns-members", type=_members, metavar="UUID,UUID,...",
                       help="with --peer-dns: the member uuids in ordinal order (this node's "
                            "included); needed by {ordinal} templates and --create-group")
    parser.add_argument("--group-type", default="kv")
    parser.add_argument("--create-group", action="append", default=[], metavar="GROUP_UUID",
                        help="create this group here (unless stored) and add every peer")
    parser.add_argument("--heartbeat-ms", type=int, default=50)
    parser.add_argument("--election-ms", type=int, nargs=2, default=(150, 300),
                        metavar=("LOW", "HIGH"))
    parser.add_argument("--snapshot-distance", type=int, default=0, metavar="N",
                        help="snapshot every N applied entries and compact the log behind the "
                             "snapshot (0: never)")
    parser.add_argument("--reserved-log-items", type=int, default=RaftParams().reserved_log_items,
                        metavar="N", help="entries kept in the log behind a snapshot")
    parser.add_argument("--sessions", action="store_true",
                        help="wrap the state machine in SessionStateMachine (exactly-once "
                             "client sessions, docs/sessions.md)")
    parser.add_argument("--ready-file", type=Path)
    add_security_arguments(parser, serving=True)
    return parser


async def _bootstrap(mgr: Manager, group_id: str, group_type: str, peers: list[str]) -> None:
    """Create ``group_id`` led by this node and add every peer (retrying until they are up)."""
    if mgr.store is not None and group_id in mgr.store:
        log.info("group %s is stored here: rejoined, not created", group_id)
        return
    while True:
        try:
            await mgr.create_group(group_id, group_type)
            break
        except RaftError as exc:
            log.warning("create_group(%s): %s; retrying", group_id, exc)
            await trio.sleep(0.2)
    for peer in peers:
        while peer not in {s.endpoint for s in mgr.get_srv_config_all(group_id)}:
            try:
                await mgr.add_member(group_id, peer, priority=100)
            except RaftError as exc:
                log.info("add_member(%s, %s): %s; retrying", group_id, peer, exc)
                await trio.sleep(0.2)
    log.info("group %s has %d members", group_id, len(peers) + 1)


def _with_sessions() -> StateMachine:
    return SessionStateMachine(KVStateMachine())


def _describe(security: Security) -> str:
    tls = security.tls
    parts = ["plain TCP" if tls is None else "mutual TLS" if tls.mutual else "TLS"]
    if security.token_verifier is not None:
        parts.append("token required")
    return ", ".join(parts)


def check_peer_options(parser: argparse.ArgumentParser,
                       args: argparse.Namespace) -> InMemoryApplication:
    """The application of the peer options; combinations that make no sense, a bad peers
    file or DNS template are argparse errors (exit status 2), not a crash after start-up."""
    sources = [name for name, given in (("--peer", bool(args.peer)),
                                        ("--peers-file", args.peers_file is not None),
                                        ("--peer-dns", args.peer_dns is not None)) if given]
    if len(sources) > 1:
        parser.error(f"{' and '.join(sources)} do not combine: give the peers one way")
    if args.dns_members is not None and args.peer_dns is None:
        parser.error("--dns-members needs --peer-dns")
    if args.dns_members is not None and args.uuid not in args.dns_members:
        parser.error(f"--uuid {args.uuid} is not one of --dns-members")
    if args.peer_dns is not None and args.create_group and args.dns_members is None:
        parser.error("--create-group with --peer-dns needs --dns-members (the peers to add)")
    try:
        return make_application(args)
    except ValueError as exc:
        parser.error(str(exc))


def make_application(args: argparse.Namespace) -> InMemoryApplication:
    """The :class:`MessagingApplication` of the peer options (raises ``ValueError``); the
    discovery applications are :class:`InMemoryApplication` s that fill the table their way."""
    factory = _with_sessions if args.sessions else KVStateMachine
    if args.peers_file is not None:
        return PeersFileApplication(args.uuid, args.peers_file, state_machine_factory=factory)
    if args.peer_dns is not None:
        return DnsApplication(args.uuid, args.peer_dns, args.dns_members or (),
                              default_port=args.port or None, state_machine_factory=factory)
    return InMemoryApplication(args.uuid, dict(args.peer), state_machine_factory=factory)


async def serve(args: argparse.Namespace, security: Security | None = None,
                app: InMemoryApplication | None = None) -> None:
    security = security or Security(None, None, None)
    app = app or make_application(args)
    tls = security.tls
    config = ManagerConfig(server_uuid=args.uuid, host=args.host, port=args.port,
                           data_dir=str(args.data_dir), default_group_type=args.group_type,
                           ssl_cert=tls.cert_file if tls else "",
                           ssl_key=tls.key_file if tls else "",
                           ssl_ca=tls.ca_file if tls else "",
                           ssl_mutual=tls.mutual if tls else False,
                           ssl_server_name=tls.server_name if tls else "",
                           token_client=security.token_client,
                           token_verifier=security.token_verifier)
    params = RaftParams(heartbeat_interval_ms=args.heartbeat_ms,
                        election_timeout_ms=tuple(args.election_ms),
                        snapshot_distance=args.snapshot_distance,
                        reserved_log_items=args.reserved_log_items)
    async with Manager(config, app) as mgr:
        if args.peers_file is None and args.peer_dns is None:  # a --peer table: add this node
            app.directory[args.uuid] = f"{args.host}:{mgr.port}"
        mgr.register_group_type(args.group_type, params)
        for gid in args.create_group:
            await _bootstrap(mgr, gid, args.group_type, app.peers())
        if args.ready_file is not None:
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"port": mgr.port, "pid": os.getpid()}))
            tmp.replace(args.ready_file)
        log.info("node %s serving on %s:%d (%s)", args.uuid, args.host, mgr.port,
                 _describe(security))
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, security = parse_args_with_security(parser, argv, serving=True)
    app = check_peer_options(parser, args)
    interrupted = trio.run(run_until_interrupted, serve, args, security, app)
    return 0 if interrupted else 1
