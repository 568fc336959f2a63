"""Log replication (Raft §5.3), commitment (§5.4.2), batching and pipelining, fast
backtracking, and client requests, one claim per test.

Leader-side tests drive a single RaftNode and play its followers by hand; follower-side tests
play the leader.  Each test: init, act, check.
"""

from __future__ import annotations

from collections.abc import Callable

import hypothesis.strategies as st
import pytest
from hypothesis import given

from nuraft_mesg.errors import NotLeader, ResultCode
from nuraft_mesg.raft.node import RaftNode, ReplState, Role
from nuraft_mesg.raft.types import (
    LogEntry,
    LogType,
    Message,
    MsgType,
    NotificationType,
    ServerConfig,
)

from .helpers import (
    Out,
    ack_all,
    append_req,
    append_resp,
    cluster,
    config,
    drain,
    elect,
    flush,
    log_terms,
    node,
    of_type,
    params,
    settle,
)

AE_REQ = MsgType.APPEND_ENTRIES_REQUEST
AE_RESP = MsgType.APPEND_ENTRIES_RESPONSE


def _leader(*, prm_kw: dict[str, int] | None = None, entries: list[LogEntry] | None = None,
            term: int = 0) -> RaftNode:
    """Node 1, leader of {1, 2, 3}, both followers in sync (REPLICATE) with its no-op."""
    n = node(1, prm=params(**(prm_kw or {})), entries=entries or [], term=term)
    elect(n)
    ack_all(n, [2, 3])
    assert n.progress[2].state == ReplState.REPLICATE
    return n


def _sizes(out: Out, dest: int) -> list[int]:
    return [len(m.entries) for m in out.of_type(AE_REQ, dest=dest) if m.entries]


# ---------------------------------------------------------------------------------------------
# Leader: appending and sending
# ---------------------------------------------------------------------------------------------


def test_leader_appends_proposal_and_sends_it_before_persisting() -> None:
    """Raft §5.3 / thesis §10.2.1: the leader appends the command to its log and issues
    AppendEntries in parallel with its own disk write: the requests are in Ready.messages
    (which may leave at once), the entry in Ready.entries."""
    n = _leader()
    prop = n.propose([b"x"])
    assert (prop.term, prop.first_index, prop.last_index) == (1, 2, 2)
    rd = flush(n)
    assert [e.buffer for e in rd.entries] == [b"x"] and rd.first_index == 2
    appends = of_type(rd.messages, AE_REQ)
    assert sorted(m.dest for m in appends) == [2, 3]
    for m in appends:
        assert (m.last_log_index, m.last_log_term, m.term) == (1, 1, 1)
        assert [e.buffer for e in m.entries] == [b"x"]
    assert of_type(rd.messages_after_persist, AE_REQ) == []


def test_leader_counts_its_own_copy_only_once_durable() -> None:
    """Thesis §10.2.1: the leader may count itself toward the majority only once the entry is
    on its own disk.  One follower's acknowledgement is not a majority of three until then."""
    n = _leader()
    n.propose([b"x"])
    rd = n.ready()  # handed to storage, not yet durable
    n.step(append_resp(1, 2, 1, next_index=3))
    assert n.commit == 1
    n.advance(rd)
    assert n.commit == 2


def test_majority_of_followers_commits_without_the_leaders_disk() -> None:
    """Raft §5.3: an entry is committed once a majority stores it; two followers of three are
    a majority even while the leader's own write is still in progress."""
    n = _leader()
    n.propose([b"x"])
    rd = n.ready()
    n.step(append_resp(1, 2, 1, next_index=3))
    n.step(append_resp(1, 3, 1, next_index=3))
    assert n.commit == 2
    n.advance(rd)
    # ...but nothing is applied before the leader's own copy is durable (see below).
    assert [c.index for c in drain(n).committed] == [2]


def test_entries_are_batched_by_max_append_entries() -> None:
    """Raft §5.3 ("may send more than one for efficiency"), NuRaft's max_append_entries: at
    most that many entries per request; consecutive batches continue where the previous one
    ended."""
    n = _leader(prm_kw={"max_append_entries": 3})
    n.propose([b"%d" % i for i in range(10)])
    out = drain(n)
    appends = [m for m in out.of_type(AE_REQ, dest=2) if m.entries]
    assert [len(m.entries) for m in appends] == [3, 3, 3, 1]
    assert [m.last_log_index for m in appends] == [1, 4, 7, 10]


def test_entries_are_batched_by_max_append_bytes() -> None:
    """Raft §5.3 batching, NuRaft's max_append_bytes: the payload of one request is bounded
    (entry size = buffer + 16): 100-byte entries, 250-byte budget, two per request."""
    n = _leader(prm_kw={"max_append_bytes": 250})
    n.propose([bytes(100)] * 5)
    assert _sizes(drain(n), 2) == [2, 2, 1]


def test_an_entry_larger_than_max_append_bytes_still_goes_alone() -> None:
    """Raft §5.3 liveness (the leader retries until every entry is stored): at least one entry
    is always sent, else a large entry would never replicate."""
    n = _leader(prm_kw={"max_append_bytes": 50})
    n.propose([bytes(100)] * 3)
    assert _sizes(drain(n), 2) == [1, 1, 1]


def test_inflight_appends_are_bounded_by_max_inflight_appends() -> None:
    """Thesis §10.2.2 (pipelining), RaftParams.max_inflight_appends: a follower in sync gets up
    to that many unacknowledged requests; each acknowledgement frees room for more."""
    n = _leader(prm_kw={"max_append_entries": 1, "max_inflight_appends": 2})
    n.propose([b"a", b"b", b"c", b"d", b"e"])  # indices 2..6
    out = drain(n)
    assert [m.last_log_index for m in out.of_type(AE_REQ, dest=2)] == [1, 2]
    n.step(append_resp(1, 2, 1, next_index=3))  # acknowledges index 2
    assert [m.last_log_index for m in drain(n).of_type(AE_REQ, dest=2)] == [3]
    n.step(append_resp(1, 2, 1, next_index=5))  # acknowledges 3 and 4
    assert [m.last_log_index for m in drain(n).of_type(AE_REQ, dest=2)] == [4, 5]


def test_probing_follower_gets_one_append_at_a_time() -> None:
    """Until a follower's match is known (after election), the leader sends one request and
    waits for its answer (etcd's probe state); then it pipelines."""
    n = node(1, prm=params(max_append_entries=1))
    out = elect(n)
    assert len(out.of_type(AE_REQ, dest=2)) == 1  # the no-op probe
    n.propose([b"a", b"b", b"c"])
    assert drain(n).of_type(AE_REQ, dest=2) == []
    n.step(append_resp(1, 2, 1, next_index=2))
    assert [m.last_log_index for m in drain(n).of_type(AE_REQ, dest=2)] == [1, 2, 3]
    assert n.progress[2].state == ReplState.REPLICATE


def test_lost_appends_are_resent_after_a_silent_heartbeat_interval() -> None:
    """Raft §5.3: "If followers crash or run slowly, or if network packets are lost, the
    leader retries AppendEntries indefinitely".  A pipelined follower that acknowledged
    nothing for a whole heartbeat interval is probed again from its match."""
    n = _leader()
    n.propose([b"x"])
    drain(n)  # the append to 2 is lost
    n.heartbeat_timeout()
    first = drain(n).of_type(AE_REQ, dest=2)
    assert [m.entries for m in first] == [()]  # a heartbeat: the append may still arrive
    n.heartbeat_timeout()
    (retry,) = drain(n).of_type(AE_REQ, dest=2)
    assert retry.last_log_index == 1 and [e.buffer for e in retry.entries] == [b"x"]


def test_lost_append_is_resent_to_a_follower_that_answers_heartbeats() -> None:
    """Raft §5.3's retry must not depend on the follower going silent: a follower that lost
    an append but keeps acknowledging heartbeats (anchored at its match, so they succeed)
    makes no progress, and the leader re-probes it after a heartbeat interval.
    (Regression: heartbeat acks used to count as progress, so the entry never went out.)"""
    n = _leader()
    n.propose([b"x"])
    drain(n)  # the append to 2 is lost
    resent = []
    for _ in range(3):
        n.heartbeat_timeout()
        for m in drain(n).of_type(AE_REQ, dest=2):
            if m.entries:
                resent.append(m)
            else:
                n.step(append_resp(1, 2, 1, next_index=m.last_log_index + 1))
    assert resent and [e.buffer for e in resent[0].entries] == [b"x"]


def test_heartbeat_carries_the_commit_index() -> None:
    """Raft §5.3: the leader includes its commit index in every AppendEntries, heartbeats
    included, so followers learn which entries are committed.  An idle heartbeat is an empty
    append anchored at the follower's match, so it cannot fail the consistency check."""
    n = _leader()
    n.propose([b"x"])
    drain(n)
    ack_all(n, [2, 3])
    assert n.commit == 2
    n.heartbeat_timeout()
    beats = drain(n).of_type(AE_REQ)
    assert sorted(m.dest for m in beats) == [2, 3]
    for m in beats:
        assert (m.entries, m.commit_index, m.last_log_index, m.last_log_term) == ((), 2, 2, 1)


def test_leader_steps_down_on_a_response_with_a_higher_term() -> None:
    """Raft §5.1: a leader that discovers a higher term reverts to follower at once."""
    n = _leader()
    n.step(append_resp(4, 2, 1, next_index=0, accepted=False))
    rd = flush(n)
    assert (n.role, n.term, n.leader_id) == (Role.FOLLOWER, 4, -1)
    assert rd.heartbeat_timer is not None and rd.heartbeat_timer.stop


# ---------------------------------------------------------------------------------------------
# Commitment (Raft §5.4.2)
# ---------------------------------------------------------------------------------------------


def test_old_term_entry_on_every_server_is_not_committed_by_counting() -> None:
    """Raft §5.4.2: "Raft never commits log entries from previous terms by counting
    replicas" -- not even when every server stores it.  The leader of term 3 holds entry 2 of
    term 2 and its no-op at 3; only the no-op's replication commits both."""
    n = node(1, term=2, entries=log_terms(1, 2))
    elect(n)
    assert (n.term, n.log.last_index) == (3, 3)
    n.step(append_resp(3, 2, 1, next_index=3))
    n.step(append_resp(3, 3, 1, next_index=3))
    assert n.commit == 0
    n.step(append_resp(3, 2, 1, next_index=4))
    assert n.commit == 3


def test_commit_waits_for_a_majority() -> None:
    """Raft §5.3: in a five-server cluster, the leader plus one follower is not a majority."""
    n = node(1, config((1, 2, 3, 4, 5)))
    elect(n)
    n.step(append_resp(1, 2, 1, next_index=2))
    assert n.commit == 0
    n.step(append_resp(1, 5, 1, next_index=2))
    assert n.commit == 1


# ---------------------------------------------------------------------------------------------
# Follower: consistency check, conflicts, commit, apply
# ---------------------------------------------------------------------------------------------


def test_follower_acknowledges_only_after_persisting() -> None:
    """Thesis §3.8: a follower's acknowledgement promises the entries are durable, so it sits
    in Ready.messages_after_persist with the entries to write."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2, entries=log_terms(1, 1)))
    rd = flush(n)
    assert [e.term for e in rd.entries] == [1, 1] and rd.first_index == 1
    assert of_type(rd.messages, AE_RESP) == []
    (ack,) = of_type(rd.messages_after_persist, AE_RESP)
    assert ack.accepted and ack.next_index == 3 and ack.dest == 1


def test_follower_rejects_append_whose_previous_entry_does_not_match() -> None:
    """Raft §5.3: "If the follower does not find an entry in its log with the same index and
    term, then it refuses the new entries"."""
    n = node(2, term=2, entries=log_terms(1, 1))
    n.step(append_req(2, 1, 2, prev_index=2, prev_term=2, entries=log_terms(2)))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, AE_RESP)
    assert not resp.accepted
    assert rd.entries == [] and rd.truncate_from == 0
    assert n.log.last_index == 2


def test_follower_deletes_a_conflicting_suffix() -> None:
    """Raft §5.3: "If an existing entry conflicts with a new one (same index but different
    terms), delete the existing entry and all that follow it"."""
    n = node(2, term=2, entries=log_terms(1, 2, 2, 2))
    n.step(append_req(3, 1, 2, prev_index=1, prev_term=1,
                      entries=[LogEntry(3, buffer=b"n2"), LogEntry(3, buffer=b"n3")]))
    rd = flush(n)
    assert rd.truncate_from == 2 and rd.first_index == 2
    assert [e.buffer for e in rd.entries] == [b"n2", b"n3"]
    assert [n.log.term_at(i) for i in (1, 2, 3, 4)] == [1, 3, 3, None]
    (resp,) = of_type(rd.messages_after_persist, AE_RESP)
    assert resp.accepted and resp.next_index == 4


def test_follower_keeps_entries_a_reordered_append_already_covers() -> None:
    """Raft §5.3 deletes only *conflicting* entries: a delayed, shorter append whose entries
    the follower already holds must not truncate the newer ones after them."""
    n = node(2, term=1, entries=log_terms(1, 1, 1))
    n.step(append_req(1, 1, 2, prev_index=0, prev_term=0, entries=log_terms(1)))
    rd = flush(n)
    assert rd.truncate_from == 0 and rd.entries == []
    assert n.log.last_index == 3
    (resp,) = of_type(rd.messages_after_persist, AE_RESP)
    assert resp.accepted and resp.next_index == 2


def test_append_with_a_stale_term_is_refused_with_our_term() -> None:
    """Raft §5.1: a request with a stale term is rejected; the reply's term updates the
    sender."""
    n = node(2, term=3)
    n.step(append_req(2, 1, 2, entries=log_terms(2)))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, AE_RESP)
    assert (resp.accepted, resp.term, resp.result_code) == (False, 3, ResultCode.TERM_MISMATCH)
    assert n.log.last_index == 0 and n.leader_id == -1


def test_follower_commit_is_capped_by_the_last_new_entry() -> None:
    """Raft §5.3 / Figure 2: "If leaderCommit > commitIndex, set commitIndex =
    min(leaderCommit, index of last new entry)" -- a follower never commits past what this
    append vouched for."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2, entries=log_terms(1, 1, 1), commit=5))
    drain(n)
    assert n.commit == 3
    n.step(append_req(1, 1, 2, prev_index=1, prev_term=1, commit=9))
    drain(n)
    assert n.commit == 3  # the heartbeat vouches only for index 1


def test_follower_learns_commit_from_a_heartbeat() -> None:
    """Raft §5.3: the commit index reaches followers with later AppendEntries, heartbeats
    included; the follower then applies."""
    n = node(2, term=1, entries=log_terms(1, 1, 1))
    n.step(append_req(1, 1, 2, prev_index=3, prev_term=1, commit=2))
    out = drain(n)
    assert n.commit == 2
    assert [c.index for c in out.committed] == [1, 2]


def test_entries_are_applied_only_once_committed_and_durable_here() -> None:
    """Thesis §10.2.1 / the Ready contract: an entry reaches the state machine only once it
    is committed *and* on this node's disk.  An append that brings entries together with a
    commit index covering them yields no committed entries until advance()."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2, entries=log_terms(1, 1), commit=2))
    rd = n.ready()
    assert n.commit == 2
    assert len(rd.entries) == 2 and rd.committed == []
    n.advance(rd)
    rd = flush(n)
    assert [c.index for c in rd.committed] == [1, 2]


def test_cluster_follower_applies_only_after_its_own_write() -> None:
    """Thesis §10.2.1, across a cluster with asynchronous writes (auto_persist=False): a
    lagging follower receives entries already committed elsewhere, with the commit index; its
    pending Ready carries them to persist but not to apply; after the write it applies them."""
    c = cluster(auto_persist=False)
    settle(c)
    c.election_timeout(1)
    settle(c)
    assert c.leader() == 1
    c.partition([1, 2], [3])
    c.propose(1, b"x")
    settle(c)
    c.heartbeat(1)
    settle(c)
    assert c.core(1).commit == 2 and c.applied_data(1) == [b"x"]
    c.heal()
    c.heartbeat(1)
    # Deliver until node 3 has received the entry, without completing its write.
    while c.bag:
        m = c.deliver(0)
        assert m is not None
        if m.dest == 3 and m.type == AE_REQ and m.entries:
            break
    pending = c.nodes[3].pending
    assert pending is not None
    assert [e.buffer for e in pending.entries] == [b"x"]
    assert c.core(3).commit == 2
    # The no-op (index 1) was already durable here, so it may apply; index 2 may not.
    assert [ce.index for ce in pending.committed] == [1]
    assert c.applied_data(3) == []
    c.persist(3)  # the write completes; the next Ready applies
    applying = c.nodes[3].pending
    assert applying is not None and [ce.index for ce in applying.committed] == [2]
    c.persist(3)
    assert c.applied_data(3) == [b"x"]


def _compacted_follower() -> RaftNode:
    """Node 2 whose log is only the snapshot boundary (100, term 5) (Raft §7)."""
    return node(2, term=5, commit=100, log_start_index=101, log_boundary_term=5)


def test_consistency_check_at_the_snapshot_boundary() -> None:
    """Raft §7: the snapshot keeps "the last included index and term ... to support the
    AppendEntries consistency check for the first log entry following the snapshot".  An
    append whose previous entry is the boundary matches (or not) on the boundary's term."""
    n = _compacted_follower()
    n.step(append_req(6, 1, 2, prev_index=100, prev_term=4, entries=[LogEntry(6)]))
    n.step(append_req(6, 1, 2, prev_index=100, prev_term=5, entries=[LogEntry(6)]))
    rd = flush(n)
    answers = [(m.accepted, m.next_index) for m in of_type(rd.messages_after_persist, AE_RESP)]
    assert answers[0][0] is False
    assert answers[1] == (True, 102)
    assert rd.first_index == 101 and [e.term for e in rd.entries] == [6]


def test_entries_inside_the_snapshot_are_skipped() -> None:
    """Raft §7 / Log Matching: entries up to the boundary are committed, so equal to the
    leader's; an append that starts inside the snapshot is accepted for its part after it."""
    n = _compacted_follower()
    n.step(append_req(6, 1, 2, prev_index=98, prev_term=5,
                      entries=[LogEntry(5), LogEntry(5), LogEntry(6, buffer=b"101")]))
    n.step(append_req(6, 1, 2, prev_index=95, prev_term=5, entries=[LogEntry(5)] * 3))
    rd = flush(n)
    answers = [(m.accepted, m.next_index) for m in of_type(rd.messages_after_persist, AE_RESP)]
    assert answers == [(True, 102), (True, 99)]
    assert [(rd.first_index, e.buffer) for e in rd.entries] == [(101, b"101")]
    assert n.log.last_index == 101 and n.log.start_index == 101


# ---------------------------------------------------------------------------------------------
# Fast backtracking
# ---------------------------------------------------------------------------------------------


def _repair(leader: RaftNode, follower: RaftNode, out: Out) -> tuple[int, int]:
    """Exchange appends between ``leader`` and ``follower`` (id 2) until quiet.
    Returns (round trips, rejections)."""
    rounds = rejections = 0
    msgs = out.of_type(AE_REQ, dest=2)
    while msgs and rounds < 100:
        rounds += 1
        for m in msgs:
            follower.step(m)
        for r in drain(follower).of_type(AE_RESP):
            rejections += not r.accepted
            leader.step(r)
        msgs = [m for m in drain(leader).of_type(AE_REQ, dest=2) if m.entries]
    return rounds, rejections


def test_fast_backtracking_over_a_long_stale_suffix() -> None:
    """Raft §5.3 (last paragraph) / etcd's findConflictByTerm: a follower with 50 entries of a
    stale term is repaired in a couple of round trips, not one per entry.  The rejection names
    the follower's last index whose term could match; the leader skips to its own last index
    of at most that term.  One index per round trip would take 57."""
    leader = node(1, term=3, entries=log_terms(*([1] * 3 + [3] * 57)))  # 1..3 t1, 4..60 t3
    follower = node(2, term=3, entries=log_terms(*([1] * 3 + [2] * 50)))  # 4..53 stale t2
    out = elect(leader)
    (probe,) = out.of_type(AE_REQ, dest=2)
    naive = probe.last_log_index - 3
    assert naive == 57
    rounds, rejections = _repair(leader, follower, out)
    assert rounds <= 3 and rejections <= 2
    assert follower.log.last_index == leader.log.last_index == 61
    assert all(follower.log.term_at(i) == leader.log.term_at(i) for i in range(1, 62))


def test_fast_backtracking_over_a_longer_suffix_of_a_higher_stale_term() -> None:
    """Raft §5.3 fast backtracking, when the follower's stale suffix has a *higher* term than
    the leader's entries there (from a later, failed leader) and is longer than the leader's
    log: the follower's hint skips its whole suffix at once."""
    leader = node(1, term=3, entries=log_terms(*([1] * 3 + [2] * 7)))  # 4..10 t2
    follower = node(2, term=3, entries=log_terms(*([1] * 3 + [3] * 50)))  # 4..53 t3
    out = elect(leader)
    rounds, rejections = _repair(leader, follower, out)
    assert rounds <= 3 and rejections <= 2
    assert follower.log.last_index == 11
    assert [follower.log.term_at(i) for i in (3, 4, 10, 11)] == [1, 2, 2, 4]


def test_lagging_follower_is_caught_up_after_one_rejection() -> None:
    """Raft §5.3: a follower that is merely behind (no conflict) answers the leader's probe
    with its last index + 1, and the next request carries everything it misses."""
    leader = node(1, term=1, entries=log_terms(*([1] * 40)))
    follower = node(2, term=1, entries=log_terms(*([1] * 5)))
    out = elect(leader)
    rounds, rejections = _repair(leader, follower, out)
    assert (rounds, rejections) == (2, 1)
    assert follower.log.last_index == 41


def test_stale_rejection_does_not_move_next_below_match() -> None:
    """Raft §5.3 backtracking must tolerate reordering: a rejection delayed past a later
    acknowledgement says nothing new, and nextIndex stays above the known matchIndex."""
    n = _leader()
    n.propose([b"a", b"b"])
    drain(n)
    n.step(append_resp(1, 2, 1, next_index=4))
    assert n.progress[2].match == 3
    n.step(append_resp(1, 2, 1, next_index=1, accepted=False))
    assert n.progress[2].match == 3 and n.progress[2].next >= 4


# ---------------------------------------------------------------------------------------------
# Client requests
# ---------------------------------------------------------------------------------------------


def test_propose_on_a_follower_raises_not_leader_naming_the_leader() -> None:
    """Raft §8: clients talk to the leader; a follower refuses and names the leader it
    knows (NuRaft's NOT_LEADER)."""
    n = node(2, term=1)
    n.step(append_req(1, 3, 2))
    drain(n)
    with pytest.raises(NotLeader) as exc:
        n.propose([b"x"])
    assert exc.value.leader_id == 3


def test_propose_without_a_known_leader_raises_not_leader_minus_one() -> None:
    """Raft §8: a server that knows no leader refuses client requests with NOT_LEADER and
    leader id -1 (the client retries elsewhere)."""
    n = node(2, term=1)
    with pytest.raises(NotLeader) as exc:
        n.propose([b"x"])
    assert exc.value.leader_id == -1


def _client_request(dest: int, *data: bytes, src: int = 0) -> Message:
    return Message(MsgType.CLIENT_REQUEST, 0, src, dest,
                   entries=tuple(LogEntry(0, LogType.APP, d) for d in data))


def test_client_request_to_a_follower_is_refused_naming_the_leader_in_dest() -> None:
    """NuRaft: a follower answers a client_request with NOT_LEADER and puts the leader's id
    in the response's ``dest`` so the client can redirect."""
    n = node(2, term=1)
    n.step(append_req(1, 3, 2))
    drain(n)
    n.step(_client_request(2, b"x", src=7))
    (resp,) = of_type(drain(n).messages, AE_RESP)
    assert (resp.accepted, resp.result_code, resp.dest) == (False, ResultCode.NOT_LEADER, 3)
    assert n.log.last_index == 0


def test_client_request_without_a_known_leader_names_no_leader_in_dest() -> None:
    """NuRaft puts its ``leader_`` (-1 when unknown) in the refusal's ``dest``; naming the
    requester instead would tell a forwarding member that it leads itself."""
    n = node(2, term=1)
    n.step(_client_request(2, b"x", src=3))
    (resp,) = of_type(drain(n).messages, AE_RESP)
    assert (resp.accepted, resp.result_code, resp.dest) == (False, ResultCode.NOT_LEADER, -1)


def test_client_request_to_the_leader_is_appended_and_answered_with_next_index() -> None:
    """NuRaft: the leader appends the request's entries in its own term and accepts, with
    next_index = its last index + 1 (so the client can wait for that index)."""
    n = _leader()
    n.step(_client_request(1, b"a", b"b"))
    out = drain(n)
    (resp,) = out.of_type(AE_RESP)
    assert resp.accepted and resp.next_index == 4 and resp.term == 1 and resp.dest == 0
    assert [(e.term, e.buffer) for e in n.log.slice(2, 4)] == [(1, b"a"), (1, b"b")]
    assert out.of_type(AE_REQ, dest=2)  # and replicates them


def test_client_request_without_app_entries_is_a_bad_request() -> None:
    """NuRaft client_request carries application (APP) entries only; a configuration entry
    smuggled in is BAD_REQUEST (thesis §4.1: membership changes go through add/remove_server)."""
    n = _leader()
    n.step(Message(MsgType.CLIENT_REQUEST, 0, 0, 1,
                   entries=(LogEntry(0, LogType.CONFIG, config().encode()),)))
    (resp,) = drain(n).of_type(AE_RESP)
    assert (resp.accepted, resp.result_code) == (False, ResultCode.BAD_REQUEST)
    assert n.log.last_index == 1


# ---------------------------------------------------------------------------------------------
# Every request gets exactly one response
# ---------------------------------------------------------------------------------------------

REQUEST_TYPES = [t for t in MsgType if t.is_request]


def _sample_request(t: MsgType, n: RaftNode, src: int) -> Message:
    """A plausible request of type ``t`` for node ``n``."""
    term = n.term
    entries: tuple[LogEntry, ...] = ()
    if t == MsgType.CLIENT_REQUEST:
        entries = (LogEntry(0, LogType.APP, b"x"),)
    elif t == MsgType.ADD_SERVER_REQUEST:
        entries = (LogEntry(0, LogType.CLUSTER, ServerConfig(9, "node-9").encode()),)
    elif t == MsgType.REMOVE_SERVER_REQUEST:
        entries = (LogEntry(0, LogType.CLUSTER, (3).to_bytes(4, "little")),)
    elif t == MsgType.JOIN_CLUSTER_REQUEST:
        entries = (LogEntry(term, LogType.CONFIG, config().encode()),)
    elif t == MsgType.CUSTOM_NOTIFICATION_REQUEST:
        entries = (LogEntry(term, LogType.CUSTOM,
                            bytes([NotificationType.REQUEST_RESIGNATION])),)
    elif t in (MsgType.REQUEST_VOTE_REQUEST, MsgType.PRE_VOTE_REQUEST):
        term += 1
    return Message(t, term, src, n.id, last_log_term=n.log.last_term,
                   last_log_index=n.log.last_index, commit_index=n.commit, entries=entries)


def _follower() -> RaftNode:
    n = node(2, term=1, entries=log_terms(1))
    n.step(append_req(1, 1, 2, prev_index=1, prev_term=1, commit=1))
    drain(n)
    return n


def _candidate() -> RaftNode:
    n = node(3, term=1, prm=params(pre_vote=False))
    n.election_timeout()
    drain(n)
    return n


@pytest.mark.parametrize("make", [_follower, _leader, _candidate],
                         ids=["follower", "leader", "candidate"])
@pytest.mark.parametrize("t", REQUEST_TYPES, ids=lambda t: t.name.lower())
def test_every_request_gets_exactly_one_response(t: MsgType,
                                                 make: Callable[[], RaftNode]) -> None:
    """nuraft_mesg's transport is request/response: every request, whatever the receiver's
    role and whether or not it is understood, is answered by exactly one message of the
    matching response type (NuRaft answers client requests with an append_entries_response)."""
    n = make()
    src = 2 if n.id != 2 else 1
    n.step(_sample_request(t, n, src))
    out = drain(n)
    if t == MsgType.READ_INDEX_REQUEST and n.is_leader:
        # Answered later: once a quorum acknowledged the heartbeat round it waits for.
        assert not [m for m in out.messages if not m.is_request]
        (hb,) = out.of_type(AE_REQ, dest=3)
        n.step(append_resp(n.term, 3, 1, next_index=hb.last_log_index + 1, read_id=hb.read_id))
        out = drain(n)
    responses = [m for m in out.messages if not m.is_request]
    assert [m.type for m in responses] == [t.response_type]


@pytest.mark.parametrize("t", REQUEST_TYPES, ids=lambda t: t.name.lower())
def test_stale_or_misaddressed_requests_still_get_one_response(t: MsgType) -> None:
    """Raft §5.1 (stale terms are rejected) with nuraft_mesg's request/response transport:
    requests from a stale term, or addressed to another node, are refused -- but answered, so
    the sender's RPC completes."""
    n = _follower()
    n.step(Message(t, 0, 3, 2))
    n.step(Message(t, 1, 3, 5))
    responses = [m for m in drain(n).messages if not m.is_request]
    assert [m.type for m in responses] == [t.response_type] * 2
    assert not any(m.accepted for m in responses)


_entries = st.lists(
    st.builds(
        LogEntry,
        term=st.integers(0, 4),
        type=st.sampled_from(LogType),
        buffer=st.one_of(
            st.binary(max_size=12),
            st.just(config().encode()),
            st.just(ServerConfig(4).encode()),
            st.just(b'{"servers": [{"id": "x"}]}'),
            st.sampled_from([bytes([k]) for k in NotificationType]),
        ),
    ),
    max_size=3,
).map(tuple)


@given(
    role=st.sampled_from(["follower", "leader", "candidate"]),
    t=st.sampled_from(REQUEST_TYPES),
    term=st.integers(0, 4),
    src=st.integers(0, 4),
    dest=st.integers(0, 4),
    prev=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    commit=st.integers(0, 6),
    entries=_entries,
)
def test_arbitrary_requests_never_raise_and_get_one_response(
    role: str, t: MsgType, term: int, src: int, dest: int, prev: tuple[int, int], commit: int,
    entries: tuple[LogEntry, ...],
) -> None:
    """Raft assumes non-Byzantine peers, but a library must survive garbled input: whatever the
    fields, step() does not raise and the request gets exactly one response of the right type
    (property test)."""
    n = {"follower": _follower, "leader": _leader, "candidate": _candidate}[role]()
    n.step(Message(t, term, src, dest, last_log_index=prev[0], last_log_term=prev[1],
                   commit_index=commit, entries=entries))
    responses = [m for m in drain(n).messages if not m.is_request]
    assert [m.type for m in responses] == [t.response_type]



def test_deeply_nested_config_json_is_a_bad_request_not_a_crash() -> None:
    """Hostile input (as in the property above): a CONFIG entry (or a srv_config) of deeply
    nested JSON makes the JSON parser recurse too deep; the request is refused BAD_REQUEST
    instead of raising out of step().  (Regression: RecursionError escaped the decoder.)"""
    bomb = b"[" * 50_000
    follower = _follower()
    follower.step(append_req(1, 1, 2, prev_index=1, prev_term=1,
                             entries=[LogEntry(1, LogType.CONFIG, bomb)]))
    follower.step(Message(MsgType.JOIN_CLUSTER_REQUEST, 1, 1, 2,
                          entries=(LogEntry(1, LogType.CONFIG, bomb),)))
    leader = _leader()
    leader.step(Message(MsgType.ADD_SERVER_REQUEST, 0, 0, 1,
                        entries=(LogEntry(0, LogType.CLUSTER, bomb),)))
    responses = [m for n in (follower, leader) for m in drain(n).messages if not m.is_request]
    assert [(m.type, m.result_code) for m in responses] == [
        (AE_RESP, ResultCode.BAD_REQUEST),
        (MsgType.JOIN_CLUSTER_RESPONSE, ResultCode.BAD_REQUEST),
        (MsgType.ADD_SERVER_RESPONSE, ResultCode.BAD_REQUEST),
    ]
    assert follower.log.last_index == 1 and leader.joining_server is None
