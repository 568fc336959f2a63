"""Snapshots and log compaction in the core (Raft §7; NuRaft's logical snapshot objects).

Single-node tests drive one :class:`RaftNode` by hand to pin down exactly what a Ready holds;
cluster tests use :class:`CoreCluster`, which plays a snapshotting state machine (a node's
state is the list of entries it applied, sent ``snapshot_chunk`` entries per object) with the
SafetyChecker watching every step.
"""

from __future__ import annotations

import random
import struct

import pytest

from nuraft_mesg.errors import ResultCode
from nuraft_mesg.raft.log import RaftLog
from nuraft_mesg.raft.node import RaftNode, ReplState
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.snapshot import (
    SnapshotChunk,
    decode_snapshot_reply,
    encode_snapshot_reply,
)
from nuraft_mesg.raft.types import (
    ClusterConfig,
    LogEntry,
    LogType,
    Message,
    MsgType,
    SnapshotMeta,
)
from nuraft_mesg.testing.core_cluster import CoreCluster

from .helpers import (
    append_req,
    config,
    deliver_counting,
    deliver_only,
    drain,
    elect,
    flush,
    log_terms,
    node,
    of_type,
    params,
)

SNAP_PARAMS = RaftParams(snapshot_distance=10, reserved_log_items=5)


def snap_cluster(ids: tuple[int, ...] = (1, 2, 3), *, chunk: int = 3, seed: int = 0,
                 auto_persist: bool = True, prm: RaftParams = SNAP_PARAMS) -> CoreCluster:
    return CoreCluster(ids, params=prm, snapshot_chunk=chunk, seed=seed,
                       auto_persist=auto_persist)


def write(c: CoreCluster, leader: int, count: int, *, tag: str = "v") -> None:
    for k in range(count):
        c.propose(leader, f"{tag}{k}".encode())
        c.deliver_all()
    c.stabilize()


def run(c: CoreCluster, leader: int, rounds: int = 6) -> list[Message]:
    """Heartbeat the leader and deliver everything, ``rounds`` times; every message seen."""
    seen: list[Message] = []
    for _ in range(rounds):
        c.heartbeat(leader)
        seen += deliver_counting(c)
    return seen


def obj_ids(msgs: list[Message], dest: int | None = None) -> list[int]:
    return [SnapshotChunk.from_message(m).obj_id
            for m in of_type(msgs, MsgType.INSTALL_SNAPSHOT_REQUEST, dest=dest)]


def same_state(c: CoreCluster, a: int, b: int) -> None:
    """Nodes ``a`` and ``b`` applied the same entries (up to the shorter)."""
    la, lb = c.nodes[a].applied, c.nodes[b].applied
    n = min(len(la), len(lb))
    assert n > 0 and la[:n] == lb[:n]
    assert [i for i, _ in la] == list(range(1, len(la) + 1))
    assert [i for i, _ in lb] == list(range(1, len(lb) + 1))


def meta(index: int, term: int = 1, cfg: ClusterConfig | None = None) -> SnapshotMeta:
    return SnapshotMeta(index, term, cfg or config().at_index(1))


def chunk_msg(m: SnapshotMeta, obj_id: int, data: bytes = b"d", *, last: bool = False,
              term: int = 1, src: int = 1, dest: int = 2, commit: int = 0) -> Message:
    return SnapshotChunk(m, obj_id, data, last).to_message(term, src, dest, commit)


def snap_replies(out_msgs: list[Message]) -> list[tuple[int, bool, int]]:
    """(next_index, done, snapshot index) of every accepted install_snapshot_response."""
    res = []
    for m in of_type(out_msgs, MsgType.INSTALL_SNAPSHOT_RESPONSE):
        assert m.accepted, m
        reply = decode_snapshot_reply(m.context)
        assert reply is not None
        res.append((m.next_index, reply[1], reply[0]))
    return res


# ==============================================================================================
# RaftLog.restore
# ==============================================================================================
def test_log_restore_keeps_the_suffix_after_a_matching_entry() -> None:
    log = RaftLog(log_terms(1, 1, 2, 2, 3))
    assert log.restore(3, 2)
    assert (log.boundary_index, log.boundary_term, log.last_index, log.persisted) == (3, 2, 5, 5)
    assert log.slice(4, 6) == log_terms(1, 1, 2, 2, 3)[3:]
    assert log.truncated_from == 0


def test_log_restore_discards_a_log_without_the_entry() -> None:
    log = RaftLog(log_terms(1, 1, 2, 2, 3))
    assert not log.restore(4, 3)
    assert (log.boundary_index, log.last_index, log.persisted, log.unstable_from) == (4, 4, 4, 5)
    assert log.truncated_from == 5  # the store drops what it held after the snapshot
    log = RaftLog(log_terms(1))
    assert not log.restore(7, 2)
    assert (log.start_index, log.last_index, log.last_term) == (8, 7, 2)
    with pytest.raises(ValueError):
        log.restore(7, 2)


def test_log_restore_moves_a_pending_truncation_past_the_snapshot() -> None:
    log = RaftLog(log_terms(1, 1, 1, 1))
    log.truncate_from(2)
    log.append(log_terms(1, 2, 2, 2)[1:])  # 2..4 now term 2, not persisted
    assert log.restore(3, 2)
    assert (log.truncated_from, log.unstable_from, log.persisted) == (4, 4, 3)
    truncate, first, entries = log.take_unstable()
    assert (truncate, first, [e.term for e in entries]) == (4, 4, [2])


# ==============================================================================================
# Compaction
# ==============================================================================================
def test_snapshot_taken_compacts_keeping_reserved_items() -> None:
    n = node(1, config([1]), prm=params(reserved_log_items=3))
    elect(n)
    n.propose([b"a%d" % k for k in range(10)])
    drain(n)
    assert n.applied == n.log.last_index == 11
    m = n.snapshot_meta(9)
    assert (m.last_index, m.last_term, m.config.voters) == (9, 1, frozenset({1}))
    n.snapshot_taken(m)
    rd = flush(n)
    assert (rd.compact_to, rd.compact_term) == (6, 1)
    assert n.log.start_index == 7 and n.log.last_index == 11 and n.snapshot == m
    # An older or equal snapshot changes nothing; a snapshot beyond the applied index is a
    # runtime bug.
    n.snapshot_taken(n.snapshot_meta(8))
    assert not n.has_ready()
    with pytest.raises(ValueError):
        n.snapshot_taken(SnapshotMeta(12, 1, m.config))
    with pytest.raises(ValueError):
        n.snapshot_meta(12)


def test_compaction_never_passes_the_snapshot_with_zero_reserved() -> None:
    n = node(1, config([1]), prm=params(reserved_log_items=0))
    elect(n)
    n.propose([b"x", b"y"])
    drain(n)
    n.snapshot_taken(n.snapshot_meta(2))
    rd = flush(n)
    assert (rd.compact_to, n.log.start_index, n.log.last_index) == (2, 3, 3)
    # A new leader term's entries still append after the boundary.
    n.propose([b"z"])
    drain(n)
    assert n.log.last_index == 4 and n.applied == 4


def test_cluster_compacts_every_node_keeping_reserved_items() -> None:
    c = snap_cluster()
    c.elect(1)
    write(c, 1, 25)
    for i in (1, 2, 3):
        core = c.core(i)
        snap = core.snapshot
        assert snap is not None and snap.last_index >= 20
        assert core.log.boundary_index == snap.last_index - 5
        d = c.nodes[i].durable
        assert d.start_index == core.log.start_index
        assert d.boundary_term == core.log.boundary_term == 1
        assert d.snapshot == snap
    same_state(c, 1, 2)
    same_state(c, 1, 3)


def test_config_at_reports_the_configuration_in_effect() -> None:
    c = snap_cluster((1, 2, 3, 4))
    c.elect(1)
    write(c, 1, 3)
    c.do(1, lambda core: core.remove_server(4))
    c.stabilize()
    removal = c.core(1).config.log_idx
    write(c, 1, 3)
    core = c.core(1)
    assert 4 in core.config_at(removal - 1)
    assert 4 not in core.config_at(removal)
    assert core.config_at(core.log.last_index) == core.config


# ==============================================================================================
# Sending a snapshot
# ==============================================================================================
def test_follower_behind_the_log_start_gets_the_snapshot_in_objects_then_the_tail() -> None:
    c = snap_cluster(chunk=3)
    c.elect(1)
    c.crash(3)
    write(c, 1, 25)
    leader = c.core(1)
    snap = leader.snapshot
    assert snap is not None and leader.log.start_index > 2
    c.restart(3)
    seen = run(c, 1)
    # ceil(snapshot entries / 3) objects, each sent once, in order.
    objects = -(-snap.last_index // 3)
    assert obj_ids(seen, dest=3) == list(range(objects))
    follower = c.core(3)
    assert follower.snapshot == snap
    assert follower.log.start_index == snap.last_index + 1
    assert follower.commit == follower.log.last_index == leader.log.last_index
    assert c.nodes[3].durable.snapshot == snap
    assert c.applied_data(3) == c.applied_data(1)
    same_state(c, 1, 3)
    assert leader.progress[3].state == ReplState.REPLICATE
    assert leader.progress[3].match == leader.log.last_index


def test_follower_down_through_two_snapshots_catches_up() -> None:
    c = snap_cluster(chunk=4)
    c.elect(1)
    c.crash(3)
    write(c, 1, 12, tag="a")
    first = c.core(1).snapshot
    write(c, 1, 12, tag="b")
    second = c.core(1).snapshot
    assert first is not None and second is not None
    assert second.last_index >= first.last_index + 10
    assert c.core(1).log.start_index > first.last_index
    c.restart(3)
    run(c, 1)
    assert c.core(3).snapshot == c.core(1).snapshot
    assert c.applied_data(3) == c.applied_data(1)
    same_state(c, 1, 3)
    # The follower keeps taking its own snapshots afterwards.
    write(c, 1, 12, tag="c")
    own = c.core(3).snapshot
    assert own is not None and own.last_index > second.last_index
    same_state(c, 1, 3)


def test_whole_cluster_restarts_from_compacted_logs_and_snapshots() -> None:
    c = snap_cluster()
    c.elect(1)
    write(c, 1, 23)
    before = {i: list(c.nodes[i].applied) for i in c.nodes}
    for i in c.nodes:
        c.crash(i)
    for i in c.nodes:
        c.restart(i)
        core = c.core(i)
        snap = c.nodes[i].durable.snapshot
        assert snap is not None and core.snapshot == snap
        # The state machine restarted from the snapshot and re-applied the log after it.
        assert c.nodes[i].applied == before[i]
        assert core.log.start_index == c.nodes[i].durable.start_index > 1
    c.elect(2)
    write(c, 2, 4, tag="after")
    for i in c.nodes:
        assert c.nodes[i].applied[: len(before[i])] == before[i]
    same_state(c, 1, 2)
    same_state(c, 2, 3)
    assert c.applied_data(1)[-4:] == [b"after%d" % k for k in range(4)]


def test_a_lost_object_is_sent_again_and_the_transfer_resumes() -> None:
    c = snap_cluster(chunk=2)
    c.elect(1)
    c.crash(3)
    write(c, 1, 20)
    c.restart(3)
    c.heartbeat(1)
    lost: list[Message] = []

    def keep(m: Message) -> bool:
        if (not lost and m.type == MsgType.INSTALL_SNAPSHOT_REQUEST
                and SnapshotChunk.from_message(m).obj_id == 3):
            lost.append(m)
            return False
        return True

    seen = deliver_only(c, keep)
    assert lost and c.core(1).progress[3].state == ReplState.SNAPSHOT
    # One heartbeat interval may pass unanswered; after a second one object 3 goes again.
    c.heartbeat(1)
    assert not any(m.dest == 3 for m in c.bag)
    c.heartbeat(1)
    assert obj_ids([m for m in c.bag if m.dest == 3]) == [3]
    seen += deliver_counting(c)
    seen += run(c, 1, rounds=4)
    ids = obj_ids(seen, dest=3)
    assert ids.count(0) == 1 and ids.count(3) == 1  # resumed, not restarted
    assert c.applied_data(3) == c.applied_data(1)


def mid_transfer(staged: int) -> CoreCluster:
    """Leader 1 sends node 3 (down while 20 entries were written and compacted) a snapshot
    of 2-entry objects; delivery stops once node 3 has staged ``staged`` objects."""
    c = snap_cluster(chunk=2)
    c.elect(1)
    c.crash(3)
    write(c, 1, 20)
    c.restart(3)
    c.heartbeat(1)
    for _ in range(200):
        if len(c.nodes[3].staged) >= staged:
            break
        assert c.deliver(0) is not None
    assert len(c.nodes[3].staged) >= staged
    return c


def test_receiver_crash_mid_transfer_restarts_from_object_zero() -> None:
    c = mid_transfer(staged=4)
    c.crash(3)  # staged objects are lost with the in-memory stand-in
    c.restart(3)
    assert c.nodes[3].staged == []
    seen = run(c, 1, rounds=8)
    ids = obj_ids(seen, dest=3)
    # The leader resends the awaited object; the restarted receiver asks for 0 instead.
    assert ids[0] >= 4 and 0 in ids
    restart = ids.index(0)
    assert ids[restart:] == sorted(set(ids[restart:]))
    assert c.core(3).snapshot == c.core(1).snapshot
    assert c.applied_data(3) == c.applied_data(1)


def test_sender_crash_mid_transfer_new_leader_restarts_it() -> None:
    c = mid_transfer(staged=3)
    c.crash(1)
    c.bag.clear()
    c.election_timeout(3)  # its lease on leader 1 runs out
    seen = deliver_counting(c)
    for _ in range(20):
        c.election_timeout(2)
        seen += deliver_counting(c)
        if c.core(2).is_leader:
            break
    seen += run(c, 2, rounds=8)
    ids = obj_ids(seen, dest=3)
    assert ids and ids[0] == 0 and ids == sorted(ids)
    assert c.core(3).snapshot == c.core(2).snapshot
    assert c.applied_data(3) == c.applied_data(2)
    c.restart(1)
    run(c, 2)
    same_state(c, 1, 3)
    assert c.applied_data(1) == c.applied_data(2)


def test_a_newer_snapshot_taken_mid_transfer_restarts_it_with_the_newer_one() -> None:
    c = snap_cluster(chunk=2)
    c.elect(1)
    c.crash(3)
    write(c, 1, 20)
    old = c.core(1).snapshot
    c.restart(3)
    c.heartbeat(1)
    for _ in range(6):
        assert c.deliver(0) is not None
    assert c.core(1).progress[3].state == ReplState.SNAPSHOT
    c.isolate(3)
    write(c, 1, 12, tag="more")
    new = c.core(1).snapshot
    assert old is not None and new is not None and new.last_index > old.last_index
    c.heal()
    seen = run(c, 1, rounds=8)
    assert 0 in obj_ids(seen, dest=3)
    assert c.core(3).snapshot == new
    assert c.applied_data(3) == c.applied_data(1)


def test_joining_server_catches_up_by_snapshot() -> None:
    c = CoreCluster((1, 2, 3, 4), members=(1, 2, 3), params=SNAP_PARAMS, snapshot_chunk=3)
    c.elect(1)
    write(c, 1, 24)
    assert c.core(1).log.start_index > 1
    c.do(1, lambda core: core.add_server(c.core(1).config.servers[0].__class__(4, "node-4")))
    run(c, 1, rounds=6)
    assert 4 in c.core(1).committed_config
    assert 4 in c.core(4).config
    assert c.applied_data(4) == c.applied_data(1)
    same_state(c, 1, 4)


def test_heartbeats_pause_for_a_follower_in_snapshot_state() -> None:
    c = snap_cluster(chunk=2)
    c.elect(1)
    c.crash(3)
    write(c, 1, 20)
    # Node 3 stopped answering while down: the leader fell back to probing, found it behind
    # the log start and started a transfer.
    assert c.core(1).progress[3].state == ReplState.SNAPSHOT
    c.restart(3)
    c.bag.clear()
    for _ in range(4):
        c.heartbeat(1)
    # Nothing but the transfer goes to 3 (an object resent every second silent interval).
    to3 = [m for m in c.bag if m.dest == 3]
    assert {m.type for m in to3} == {MsgType.INSTALL_SNAPSHOT_REQUEST}
    assert len(to3) == 2
    run(c, 1)
    assert c.applied_data(3) == c.applied_data(1)


# ==============================================================================================
# Receiving a snapshot (one follower driven by hand)
# ==============================================================================================
def follower(entries: list[LogEntry] | None = None, commit: int = 0) -> RaftNode:
    return node(2, term=1, entries=entries or [], commit=commit)


def test_objects_are_staged_and_acknowledged_after_persist_then_installed() -> None:
    n = follower()
    m = meta(7, cfg=config([1, 2, 3]).at_index(5))
    n.step(chunk_msg(m, 0, b"aa"))
    rd = flush(n)
    assert [(ch.obj_id, ch.data, ch.is_first, ch.is_last) for ch in rd.snapshot_chunks] == [
        (0, b"aa", True, False)]
    assert rd.messages == [] and snap_replies(rd.messages_after_persist) == [(1, False, 7)]
    assert rd.snapshot_to_install is None
    n.step(chunk_msg(m, 1, b"bb", last=True, commit=9))
    rd = flush(n)
    assert [(ch.obj_id, ch.is_last) for ch in rd.snapshot_chunks] == [(1, True)]
    assert rd.snapshot_to_install == m
    assert rd.messages == [] and snap_replies(rd.messages_after_persist) == [(8, True, 7)]
    assert rd.hard_state is not None and rd.hard_state.commit == 7
    assert rd.config_to_save == m.config
    assert rd.committed == []
    assert (n.commit, n.applied, n.snapshot) == (7, 7, m)
    assert (n.log.start_index, n.log.last_index, n.log.last_term) == (8, 7, 1)
    # The next append continues right after the snapshot.
    n.step(append_req(1, 1, 2, prev_index=7, prev_term=1, entries=log_terms(1), commit=8))
    out = drain(n)
    assert [c.index for c in out.committed] == [8]


def test_install_keeps_the_matching_suffix_and_applies_it_after_the_snapshot() -> None:
    """Raft §7: a follower whose log holds the snapshot's last entry keeps what follows."""
    n = follower(log_terms(1, 1, 1, 1, 1, 1, 1, 1, 1, 1))
    n.step(chunk_msg(meta(6), 0, b"x", last=True, commit=10))
    # Same batch: the leader's next append commits the kept entries.
    n.step(append_req(1, 1, 2, prev_index=10, prev_term=1, commit=10))
    rd = flush(n)
    assert rd.snapshot_to_install == meta(6)
    assert rd.truncate_from == 0 and rd.entries == []
    assert [c.index for c in rd.committed] == [7, 8, 9, 10]  # applied after the install
    assert (n.log.start_index, n.log.last_index) == (7, 10)


def test_install_discards_a_conflicting_log() -> None:
    n = follower(log_terms(1, 1, 1, 1, 1, 1, 1, 1))
    n.step(chunk_msg(meta(6, term=2), 0, b"x", last=True, term=2))
    rd = flush(n)
    assert rd.snapshot_to_install == meta(6, term=2)
    assert rd.truncate_from == 7
    assert (n.log.start_index, n.log.last_index, n.log.last_term) == (7, 6, 2)


def test_install_of_unpersisted_entries_rewrites_them_after_the_snapshot() -> None:
    """Entries appended in the same batch (not persisted yet) after a snapshot boundary they
    match are kept and handed to the runtime after the install."""
    n = follower()
    n.step(append_req(1, 1, 2, entries=log_terms(1, 1, 1, 1, 1)))
    n.step(chunk_msg(meta(3), 0, b"x", last=True))
    rd = flush(n)
    assert rd.snapshot_to_install == meta(3)
    assert rd.first_index == 4 and len(rd.entries) == 2
    assert n.log.persisted == 5


def test_duplicate_and_stale_objects_are_harmless() -> None:
    n = follower()
    m = meta(9)
    for k in range(3):
        n.step(chunk_msg(m, k))
    rd = flush(n)
    assert [ch.obj_id for ch in rd.snapshot_chunks] == [0, 1, 2]
    # A duplicate of object 1 and a skipped-ahead object 5: nothing staged, "send 3".
    n.step(chunk_msg(m, 1))
    n.step(chunk_msg(m, 5))
    rd = flush(n)
    assert rd.snapshot_chunks == []
    assert snap_replies(rd.messages_after_persist) == [(3, False, 9), (3, False, 9)]
    # An object of another snapshot we have nothing of: "send 0".
    n.step(chunk_msg(meta(12), 2))
    rd = flush(n)
    assert rd.snapshot_chunks == [] and snap_replies(rd.messages_after_persist) == [
        (0, False, 12)]
    n.step(chunk_msg(m, 3, last=True))
    rd = flush(n)
    assert rd.snapshot_to_install == m
    # After the install any object of it, or of an older snapshot, is answered "done".
    n.step(chunk_msg(m, 3, last=True))
    n.step(chunk_msg(meta(4), 0))
    rd = flush(n)
    assert rd.snapshot_chunks == [] and rd.snapshot_to_install is None
    assert snap_replies(rd.messages_after_persist) == [(10, True, 9), (5, True, 4)]


def test_stale_term_snapshot_is_refused_with_the_current_term() -> None:
    n = node(2, term=3)
    n.step(chunk_msg(meta(5), 0, term=2))
    rd = flush(n)
    (resp,) = rd.messages_after_persist
    assert not resp.accepted and resp.result_code == ResultCode.TERM_MISMATCH and resp.term == 3
    assert rd.snapshot_chunks == []


def _raw(buf: bytes, *, index: int = 5, term: int = 1, entry_term: int = 1,
         entries: tuple[LogEntry, ...] | None = None, msg_term: int = 1) -> Message:
    return Message(MsgType.INSTALL_SNAPSHOT_REQUEST, msg_term, 1, 2, last_log_index=index,
                   last_log_term=term,
                   entries=entries if entries is not None else (
                       LogEntry(entry_term, LogType.SNAPSYNC, buf),))


def _good(obj: int = 0, flags: int = 0, cfg: bytes | None = None, cfg_len: int | None = None
          ) -> bytes:
    body = cfg if cfg is not None else config().at_index(1).encode()
    return struct.pack(">BBQI", 1, flags, obj, len(body) if cfg_len is None else cfg_len) + body


HOSTILE = [
    _raw(b"", entries=()),
    _raw(b"", entries=(LogEntry(1, LogType.APP, _good()),)),
    _raw(b"", entries=(LogEntry(1, LogType.SNAPSYNC, _good()),) * 2),
    _raw(b"\x01\x00"),
    _raw(b"\x02" + _good()[1:]),
    _raw(_good(flags=0x80)),
    _raw(_good(obj=1 << 63)),
    _raw(_good(cfg_len=1 << 20)),
    _raw(_good(cfg=b"{not json")),
    _raw(_good(cfg=b"[" * 100_000)),
    _raw(_good(cfg=b'{"servers": []}')),
    _raw(_good(cfg=config().at_index(9).encode())),
    _raw(_good(), index=0),
    _raw(_good(), term=0, entry_term=0),
    _raw(_good(), term=2, entry_term=2),  # snapshot term beyond the leader's
    _raw(_good(), entry_term=0),
]


@pytest.mark.parametrize("msg", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_snapshot_messages_are_refused(msg: Message) -> None:
    n = follower(log_terms(1, 1))
    n.step(msg)
    rd = flush(n)
    (resp,) = rd.messages_after_persist
    assert resp.type == MsgType.INSTALL_SNAPSHOT_RESPONSE
    assert not resp.accepted and resp.result_code == ResultCode.BAD_REQUEST
    assert rd.snapshot_chunks == [] and rd.snapshot_to_install is None
    assert (n.commit, n.log.start_index, n.log.last_index) == (0, 1, 2)


def test_a_leader_refuses_a_snapshot_in_its_own_term() -> None:
    n = node(1, config([1]))
    elect(n)
    n.step(chunk_msg(meta(1), 0, term=n.term, src=2, dest=1))
    rd = flush(n)
    (resp,) = rd.messages_after_persist
    assert not resp.accepted and resp.result_code == ResultCode.BAD_REQUEST
    assert n.is_leader


def test_leader_ignores_bogus_snapshot_responses() -> None:
    c = snap_cluster(chunk=2)
    c.elect(1)
    c.crash(3)
    write(c, 1, 20)
    c.restart(3)
    c.heartbeat(1)
    for _ in range(3):
        assert c.deliver(0) is not None
    leader = c.core(1)
    pr = leader.progress[3]
    assert pr.state == ReplState.SNAPSHOT and pr.snapshot_sent_max >= 0
    snap = leader.snapshot
    assert snap is not None
    base = (pr.snapshot_obj, pr.snapshot_sent_max)
    bogus = [
        Message(MsgType.INSTALL_SNAPSHOT_RESPONSE, leader.term, 3, 1, next_index=1,
                accepted=True, context=b"garbage"),
        Message(MsgType.INSTALL_SNAPSHOT_RESPONSE, leader.term, 3, 1, next_index=50,
                accepted=True, context=encode_snapshot_reply(snap.last_index, False)),
        Message(MsgType.INSTALL_SNAPSHOT_RESPONSE, leader.term, 3, 1, next_index=-1,
                accepted=True, context=encode_snapshot_reply(snap.last_index, False)),
        Message(MsgType.INSTALL_SNAPSHOT_RESPONSE, leader.term, 3, 1, next_index=1,
                accepted=True, context=encode_snapshot_reply(snap.last_index + 1, False)),
        Message(MsgType.INSTALL_SNAPSHOT_RESPONSE, leader.term, 3, 1, next_index=10 ** 6,
                accepted=True, context=encode_snapshot_reply(10 ** 6, True)),
        Message(MsgType.INSTALL_SNAPSHOT_RESPONSE, leader.term, 3, 1,
                result_code=ResultCode.BAD_REQUEST),
    ]
    for m in bogus:
        leader.step(m)
        rd = leader.ready()
        assert rd.snapshot_reads == [] and rd.messages == []
        leader.advance(rd)
    assert pr.state == ReplState.SNAPSHOT and (pr.snapshot_obj, pr.snapshot_sent_max) == base
    # The transfer still completes.
    run(c, 1, rounds=8)
    assert c.applied_data(3) == c.applied_data(1)


# ==============================================================================================
# Restart
# ==============================================================================================
def test_restart_after_a_crash_in_the_middle_of_an_install() -> None:
    """The state machine applied the snapshot (at 9) but the log store still holds the old,
    conflicting log: the core restarts its log after the snapshot and tells the store."""
    snap = meta(9, term=2)
    n = RaftNode(2, params(), config=config(), entries=log_terms(1, 1, 1, 1, 1),
                 applied_index=9, snapshot=snap)
    assert (n.log.start_index, n.log.last_index, n.applied, n.commit) == (10, 9, 9, 9)
    rd = n.ready()
    assert (rd.compact_to, rd.compact_term, rd.truncate_from) == (9, 2, 10)
    assert rd.committed == []
    n.advance(rd)
    n.step(append_req(2, 1, 2, prev_index=9, prev_term=2, entries=log_terms(2), commit=10))
    out = drain(n)
    assert [c.index for c in out.committed] == [10]


def test_restart_with_a_snapshot_inside_the_log() -> None:
    n = RaftNode(2, params(), config=config(), entries=log_terms(1, 1, 1, 1, 1, 1),
                 log_start_index=4, log_boundary_term=1, applied_index=6, snapshot=meta(6))
    assert (n.log.start_index, n.log.last_index, n.applied) == (4, 9, 6)
    assert n.snapshot == meta(6)
    rd = n.ready()
    assert rd.compact_to == 0 and rd.truncate_from == 0


# ==============================================================================================
# Ordering with slow storage, and random schedules
# ==============================================================================================
def test_install_with_slow_storage_keeps_every_promise() -> None:
    """auto_persist off: every response waits for its Ready's write; the checker verifies
    that a "done" leaves only once the snapshot is durable."""
    c = snap_cluster(chunk=2, auto_persist=False)
    c.elect(1)
    c.crash(3)
    for k in range(20):
        c.propose(1, b"w%d" % k)
        c.deliver_all()
    c.stabilize()
    c.restart(3)
    for _ in range(8):
        c.heartbeat(1)
        c.deliver_all()
    assert c.core(3).snapshot is not None
    assert c.applied_data(3) == c.applied_data(1)


@pytest.mark.parametrize("seed", range(30))
def test_random_schedules_with_snapshots_stay_safe(seed: int) -> None:
    """Random faults (crashes, partitions, drops, duplicates, slow writes) with snapshots every
    few entries and small objects; the SafetyChecker watches every step.  Afterwards the
    cluster heals, commits, and every node ends with the same state."""
    rng = random.Random(seed)
    prm = RaftParams(snapshot_distance=rng.choice([3, 5, 8]),
                     reserved_log_items=rng.choice([0, 1, 4]))
    c = CoreCluster((1, 2, 3), params=prm, snapshot_chunk=rng.choice([1, 2, 5]), seed=seed,
                    auto_persist=rng.random() < 0.5)
    k = 0
    for _ in range(400):
        x = rng.random()
        ids = list(c.nodes)
        i = rng.choice(ids)
        if x < 0.25 and c.bag:
            j = rng.randrange(len(c.bag))
            c.deliver(j, keep=rng.random() < 0.05)
        elif x < 0.30 and c.bag:
            c.drop(rng.randrange(len(c.bag)))
        elif x < 0.45:
            c.persist(i)
        elif x < 0.55:
            c.heartbeat(i)
        elif x < 0.60:
            c.election_timeout(i)
        elif x < 0.80:
            lead = c.leader()
            if lead is not None:
                try:
                    c.propose(lead, b"r%d" % k)
                    k += 1
                except Exception:
                    pass
        elif x < 0.83:
            if sum(n.alive for n in c.nodes.values()) > 2:
                c.crash(i)
        elif x < 0.90:
            c.restart(i)
        elif x < 0.93:
            c.isolate(i)
        elif x < 0.97:
            c.heal()
        else:
            c.deliver_all()
    lead = None
    for _ in range(5):  # a restarted node may still depose the leader: settle again
        c.wait_leader_liveness()
        for _ in range(15):
            c.persist_all()
            c.stabilize()
        lead = c.leader()
        if lead is not None and len({c.core(i).commit for i in c.nodes}) == 1:
            break
    assert lead is not None
    final = c.core(lead).commit
    for i in c.nodes:
        assert c.core(i).commit == final, (i, c.core(i).commit, final)
        same_state(c, lead, i)
        assert c.nodes[i].applied[-1][0] == final
