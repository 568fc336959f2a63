"""Well-formed RaftSteps with impossible contents, aimed at live groups.

Each case is a message a correct cluster never sends: a term from the past, a term from the
future whose entries cannot be right (beyond the log, newer than the message, overwriting
committed entries, an undecodable configuration), a second leader in the current term, an
unknown message or entry type, a response sent as a request, ids out of range, a term at the
end of the range, a join that invites nobody.  Every one must get a clear answer (a refusing
reply or a gRPC error status), leave the groups' invariants intact (the harness's
ClusterChecker watches every core) and leave the groups able to commit.

What is *not* tested here, on purpose: a message that could come from a real leader (a higher
term with entries that fit the log).  Raft trusts its peers' words; a peer that can send
those can rewrite uncommitted history.  That is what mTLS and tokens are for
(docs/security.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.types import ClusterConfig, LogEntry, LogType, Message, MsgType, ServerConfig
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftGroupMsg
from nuraft_mesg.transport.base import Status
from nuraft_mesg.transport.codec import decode_group_msg, encode_group_msg, group_msg_to_proto
from nuraft_mesg.transport.grpc import GrpcTransport

from . import LiveCluster, LiveNode, count_input, raw_call

STRANGER = 4242
"""A server id that is no member of any group (forged messages never impersonate members:
see the module doc)."""


@dataclass
class Case:
    name: str
    build: Callable[[RaftNode, LiveNode, str], bytes]
    """(target's core, target, group id) -> the RaftGroupMsg bytes."""
    expect: set[Status]
    refused: bool = True
    """An OK answer must carry accepted=False."""


def _enc(gid: str, node: LiveNode, msg: Message) -> bytes:
    return encode_group_msg(gid, "", node.uuid, msg)


def _raw(gid: str, node: LiveNode, fill: Callable[[RaftGroupMsg], None]) -> bytes:
    pb = RaftGroupMsg(group_id=gid, intended_addr=node.uuid)
    pb.msg.base.term = 1
    pb.msg.base.type = int(MsgType.APPEND_ENTRIES_REQUEST)
    pb.msg.base.src = STRANGER
    pb.msg.base.dest = node.server_id
    pb.msg.rc_request.commit_index = 0
    fill(pb)
    return pb.SerializeToString()


def _append(core: RaftNode, node: LiveNode, gid: str, *, term: int, prev: int, prev_term: int,
            entries: tuple[LogEntry, ...], commit: int, src: int = STRANGER) -> bytes:
    msg = Message(MsgType.APPEND_ENTRIES_REQUEST, term, src, node.server_id,
                  last_log_term=prev_term, last_log_index=prev, commit_index=commit,
                  entries=entries)
    return _enc(gid, node, msg)


def _app(term: int, data: bytes = b"set forged 1") -> LogEntry:
    return LogEntry(term, LogType.APP, data)


MAX_U64 = (1 << 64) - 1
MAX_TERM = (1 << 63) - 1


def _as_response(pb: RaftGroupMsg) -> None:
    pb.msg.base.type = int(MsgType.APPEND_ENTRIES_RESPONSE)
    pb.msg.rc_response.batch_size_hint = MAX_U64


def _unknown_entry(pb: RaftGroupMsg) -> None:
    pb.msg.rc_request.log_entries.add(term=1, type=77, buffer=b"x")


def _cases() -> list[Case]:
    ok_refused = {Status.OK}
    return [
        Case("stale-term-append", lambda c, n, g: _append(
            c, n, g, term=c.term - 1, prev=c.log.last_index, prev_term=c.log.last_term,
            entries=(_app(c.term - 1),), commit=c.log.last_index + 1), ok_refused),
        Case("stale-term-vote", lambda c, n, g: _enc(g, n, Message(
            MsgType.REQUEST_VOTE_REQUEST, c.term - 1, STRANGER, n.server_id,
            last_log_term=MAX_TERM, last_log_index=MAX_TERM)), ok_refused),
        Case("stale-term-leave", lambda c, n, g: _enc(g, n, Message(
            MsgType.LEAVE_CLUSTER_REQUEST, c.term - 1, STRANGER, n.server_id,
            commit_index=MAX_TERM)), ok_refused),
        Case("stale-term-snapshot", lambda c, n, g: _enc(g, n, Message(
            MsgType.INSTALL_SNAPSHOT_REQUEST, c.term - 1, STRANGER, n.server_id,
            last_log_term=c.term, last_log_index=c.log.last_index + 100,
            entries=(LogEntry(c.term, LogType.SNAPSYNC, b"\x00" * 40),))), ok_refused),
        Case("future-term-append-beyond-log", lambda c, n, g: _append(
            c, n, g, term=c.term + 3, prev=c.log.last_index + 1000, prev_term=c.term + 3,
            entries=(_app(c.term + 3),), commit=MAX_TERM), ok_refused),
        Case("future-term-entries-newer-than-message", lambda c, n, g: _append(
            c, n, g, term=c.term + 3, prev=c.log.last_index, prev_term=c.log.last_term,
            entries=(_app(c.term + 4),), commit=c.log.last_index + 1), ok_refused),
        Case("future-term-overwrite-committed", lambda c, n, g: _append(
            c, n, g, term=c.term + 3, prev=0, prev_term=0,
            entries=(_app(c.term + 3),), commit=1), ok_refused),
        Case("future-term-undecodable-config", lambda c, n, g: _append(
            c, n, g, term=c.term + 3, prev=c.log.last_index, prev_term=c.log.last_term,
            entries=(LogEntry(c.term + 3, LogType.CONFIG, b"{not json"),),
            commit=c.log.last_index), ok_refused),
        Case("future-term-config-with-bad-servers", lambda c, n, g: _append(
            c, n, g, term=c.term + 3, prev=c.log.last_index, prev_term=c.log.last_term,
            entries=(LogEntry(c.term + 3, LogType.CONFIG,
                              b'{"servers": [{"id": -5, "endpoint": 7}], "log_idx": "x"}'),),
            commit=c.log.last_index), ok_refused),
        Case("second-leader-in-current-term", lambda c, n, g: _append(
            c, n, g, term=c.term, prev=c.log.last_index, prev_term=c.log.last_term,
            entries=(_app(c.term),), commit=c.log.last_index + 1), ok_refused),
        Case("second-leader-leave-in-current-term", lambda c, n, g: _enc(g, n, Message(
            MsgType.LEAVE_CLUSTER_REQUEST, c.term, STRANGER, n.server_id,
            commit_index=MAX_TERM)), ok_refused),
        Case("second-leader-join-in-current-term", lambda c, n, g: _enc(g, n, Message(
            MsgType.JOIN_CLUSTER_REQUEST, c.term, STRANGER, n.server_id,
            entries=(LogEntry(c.term, LogType.CONFIG, ClusterConfig(
                (ServerConfig(STRANGER, str(uuid.uuid4())),)).encode()),))), ok_refused),
        Case("unknown-message-type", lambda c, n, g: _raw(
            g, n, lambda pb: setattr(pb.msg.base, "type", 99)), {Status.INVALID_ARGUMENT}),
        Case("response-as-request", lambda c, n, g: _raw(g, n, _as_response),
             {Status.INVALID_ARGUMENT}),
        Case("request-carrying-a-response", lambda c, n, g: _raw(
            g, n, lambda pb: setattr(pb.msg.rc_response, "batch_size_hint", 1 << 63)),
             {Status.INVALID_ARGUMENT}),
        Case("no-message", lambda c, n, g: RaftGroupMsg(
            group_id=g, intended_addr=n.uuid).SerializeToString(), {Status.INVALID_ARGUMENT}),
        Case("unknown-entry-type", lambda c, n, g: _raw(g, n, _unknown_entry),
             {Status.INVALID_ARGUMENT}),
        Case("odd-entry-types", lambda c, n, g: _append(
            c, n, g, term=c.term + 3, prev=c.log.last_index + 5, prev_term=1,
            entries=tuple(LogEntry(1, t, b"\xff" * 9) for t in LogType), commit=MAX_TERM),
             ok_refused),
        Case("negative-ids", lambda c, n, g: _enc(g, n, Message(
            MsgType.APPEND_ENTRIES_REQUEST, c.term + 3, -(1 << 31), -1,
            entries=(_app(1),), commit_index=MAX_TERM)), ok_refused),
        Case("huge-ids", lambda c, n, g: _enc(g, n, Message(
            MsgType.REQUEST_VOTE_REQUEST, c.term, (1 << 31) - 1, (1 << 31) - 1,
            last_log_term=MAX_TERM, last_log_index=MAX_TERM)), ok_refused),
        Case("term-beyond-the-wire", lambda c, n, g: _raw(
            g, n, lambda pb: setattr(pb.msg.base, "term", MAX_U64)), {Status.INVALID_ARGUMENT}),
        Case("term-at-the-end-of-the-range", lambda c, n, g: _enc(g, n, Message(
            MsgType.REQUEST_VOTE_REQUEST, MAX_TERM, STRANGER, n.server_id,
            last_log_term=MAX_TERM, last_log_index=MAX_TERM)), ok_refused),
        Case("ping-from-the-end-of-the-range", lambda c, n, g: _enc(g, n, Message(
            MsgType.PING_REQUEST, MAX_TERM, STRANGER, n.server_id)), ok_refused),
        Case("append-from-the-end-of-the-range", lambda c, n, g: _append(
            c, n, g, term=MAX_TERM, prev=c.log.last_index + 1000, prev_term=MAX_TERM,
            entries=(), commit=0), ok_refused),
        Case("pre-vote-from-the-future", lambda c, n, g: _enc(g, n, Message(
            MsgType.PRE_VOTE_REQUEST, MAX_TERM, STRANGER, n.server_id,
            last_log_term=MAX_TERM, last_log_index=MAX_TERM)), ok_refused),
        Case("index-beyond-the-wire", lambda c, n, g: _raw(
            g, n, lambda pb: setattr(pb.msg.rc_request, "last_log_index", MAX_U64)),
             {Status.INVALID_ARGUMENT}),
        Case("wrong-intended-addr", lambda c, n, g: encode_group_msg(
            g, "", str(uuid.uuid4()), Message(MsgType.PING_REQUEST, 0, STRANGER, n.server_id)),
             {Status.INVALID_ARGUMENT}),
        Case("unknown-group", lambda c, n, g: _enc(str(uuid.uuid4()), n, Message(
            MsgType.APPEND_ENTRIES_REQUEST, 1, STRANGER, n.server_id)), {Status.NOT_FOUND}),
        Case("join-inviting-nobody", lambda c, n, g: encode_group_msg(
            str(uuid.uuid4()), "", n.uuid, Message(MsgType.JOIN_CLUSTER_REQUEST, 5, STRANGER,
                                                   n.server_id)), {Status.NOT_FOUND}),
        Case("join-with-garbage-config", lambda c, n, g: encode_group_msg(
            str(uuid.uuid4()), "", n.uuid, Message(
                MsgType.JOIN_CLUSTER_REQUEST, 5, STRANGER, n.server_id,
                entries=(LogEntry(5, LogType.CONFIG, b"\x00garbage"),))), {Status.NOT_FOUND}),
        Case("join-of-unknown-type", lambda c, n, g: encode_group_msg(
            str(uuid.uuid4()), "no-such-type", n.uuid, Message(
                MsgType.JOIN_CLUSTER_REQUEST, 5, STRANGER, n.server_id)), {Status.NOT_FOUND}),
        Case("join-addressed-elsewhere", lambda c, n, g: encode_group_msg(
            str(uuid.uuid4()), "", n.uuid, Message(
                MsgType.JOIN_CLUSTER_REQUEST, 5, STRANGER, n.server_id + 1)), {Status.NOT_FOUND}),
    ]


CASES = _cases()


async def _prepare(cluster: LiveCluster) -> str:
    gid = await cluster.create_group()
    for k in range(3):
        await cluster.commit(gid, b"set k%d v" % k)
    # a few elections, so that "the past" exists
    for _ in range(2):
        leader = cluster.leader(gid)
        assert leader is not None
        other = next(n for n in cluster.nodes if n is not leader)
        await other.mgr.become_leader(gid)
        await cluster.commit(gid, b"set after-election 1")
    return gid


async def _try(cluster: LiveCluster, gid: str, attacker: GrpcTransport, case: Case,
               role: str) -> str:
    """Send one case; "" if everything held, else what went wrong."""
    leader = cluster.leader(gid)
    if leader is None:
        await cluster.commit(gid, b"set wait-for-leader 1")
        leader = cluster.leader(gid)
    assert leader is not None
    target = leader if role == "leader" else next(n for n in cluster.nodes if n is not leader)
    core = target.cores[gid]
    groups_before = {n.name: set(n.mgr.group_ids) for n in cluster.nodes}
    committed = core.log.slice(core.log.start_index, core.commit + 1)
    status, reply = await raw_call(attacker, target.uuid, case.build(core, target, gid))
    count_input("impossible")
    if status not in case.expect:
        return f"status {status.name}, expected {sorted(s.name for s in case.expect)}"
    if status == Status.OK and case.refused and decode_group_msg(reply).message.accepted:
        return f"accepted: {decode_group_msg(reply).message}"
    # Committed history is untouched, no group appeared or vanished.
    if core.log.slice(core.log.start_index, core.log.start_index + len(committed)) != committed:
        return "committed entries changed"
    if {n.name: set(n.mgr.group_ids) for n in cluster.nodes} != groups_before:
        return "the set of hosted groups changed"
    # The group still commits (a new leader may have to be elected first) and every
    # invariant holds on every node.
    await cluster.commit(gid, b"set after " + case.name.encode())
    cluster.check()
    return ""


@pytest.mark.parametrize("role", ["follower", "leader"])
async def test_impossible_messages(role: str) -> None:
    """Every case of CASES against one live group (a follower or the leader as target)."""
    failures: dict[str, str] = {}
    async with LiveCluster.open(3) as cluster:
        gid = await _prepare(cluster)
        async with GrpcTransport(server_uuid=str(uuid.uuid4()),
                                 lookup_peer=cluster.lookup) as attacker:
            for case in CASES:
                why = await _try(cluster, gid, attacker, case, role)
                if why:
                    failures[case.name] = why
        for n in cluster.nodes:
            assert gid in n.mgr.group_ids
            assert n.cores[gid].term < 1 << 32  # no term escalation to the end of the range
    assert not failures, failures


def test_cases_are_well_formed() -> None:
    """The 'well-formed' cases really do decode (the codec is not what refuses them)."""
    class FakeCore:
        term = 5
        commit = 3

        class log:
            last_index, last_term, start_index = 4, 5, 1

    node = LiveNode("n", str(uuid.uuid4()), server_id=77, core_factory=RaftNode)
    for case in CASES:
        payload = case.build(FakeCore(), node, str(uuid.uuid4()))  # type: ignore[arg-type]
        if case.expect == {Status.OK}:
            env = decode_group_msg(payload)
            assert group_msg_to_proto(env.group_id, env.group_type, env.intended_addr,
                                      env.message).SerializeToString() == payload
