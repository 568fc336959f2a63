"""Read index, follower reads and leases in the sans-IO core (Raft thesis §6.4).

One rule per test: a read waits for the leader's own-term commit; one quorum-acknowledged
heartbeat round serves every read queued before it started, and a read queued while it is in
flight waits for the next; a deposed (partitioned) leader never completes a read; a follower
read carries the leader's index and is served only once applied there; a lease serves without
a round only while it holds, and is refused when lease reads are off or cannot be safe.
"""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
)

from nuraft_mesg.errors import BadRequest, Cancelled, NotLeader, RaftError, RaftTimeout
from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import ReadFailure, ReadState, Ready
from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.testing.core_cluster import CoreCluster, SafetyViolation

from .helpers import (
    Out,
    ack_all,
    append_resp,
    cluster,
    config,
    deliver_matching,
    deliver_only,
    drain,
    elect,
    node,
    params,
)
from .test_property import (
    LIVENESS_ROUNDS,
    STEPS,
    CountingChecker,
    History,
    RaftMachine,
    _bucket,
    _pick,
)

AE_REQ = MsgType.APPEND_ENTRIES_REQUEST
RI_REQ = MsgType.READ_INDEX_REQUEST
RI_RESP = MsgType.READ_INDEX_RESPONSE


def _reads(out: Out) -> list[ReadState]:
    return [s for rd in out.readies for s in rd.read_states]


def _failures(out: Out) -> list[ReadFailure]:
    return [f for rd in out.readies for f in rd.read_failures]


def _leader(prm: RaftParams | None = None) -> RaftNode:
    """Node 1, leader of {1, 2, 3}, its no-op committed (acknowledged by 2 and 3)."""
    n = node(1, prm=prm)
    elect(n)
    ack_all(n, [2, 3])
    assert n.log.term_at(n.commit) == n.term
    return n


def _ack(n: RaftNode, peer: int, hb: Message) -> Out:
    """``peer`` answers the append ``hb`` (echoing its read round)."""
    n.step(append_resp(n.term, peer, n.id, next_index=hb.last_log_index + len(hb.entries) + 1,
                       read_id=hb.read_id))
    return drain(n)


# -- the leader ---------------------------------------------------------------------------
def test_no_read_before_an_entry_of_the_leaders_term_commits() -> None:
    n = node(1)
    won = elect(n)
    noop = n.log.last_index
    assert n.commit < noop
    n.read_index(7)
    out = drain(n)
    assert _reads(out) == [] and out.of_type(AE_REQ) == []  # no round yet
    # A quorum answering the no-op's appends (round 0: no read round started) commits it;
    # only then does the read's round start, and only its acknowledgement releases the read.
    (first,) = won.of_type(AE_REQ, dest=2)
    out = _ack(n, 2, first)
    assert n.commit == noop and _reads(out) == []
    (hb,) = out.of_type(AE_REQ, dest=2)
    assert hb.read_id > first.read_id
    out = _ack(n, 2, hb)
    assert _reads(out) == [ReadState(7, noop)]


def test_one_round_serves_every_read_queued_before_it() -> None:
    n = _leader()
    index = n.commit
    for ctx in (1, 2, 3):
        n.read_index(ctx)
    out = drain(n)
    rounds = {m.read_id for m in out.of_type(AE_REQ)}
    assert len(out.of_type(AE_REQ, dest=2)) == len(out.of_type(AE_REQ, dest=3)) == 1
    assert len(rounds) == 1
    # A read queued while the round is in flight waits for the next one.
    n.read_index(4)
    assert drain(n).messages == []
    (hb,) = out.of_type(AE_REQ, dest=3)
    out = _ack(n, 3, hb)  # with the leader: a quorum of {1, 2, 3}
    assert _reads(out) == [ReadState(1, index), ReadState(2, index), ReadState(3, index)]
    (nxt,) = out.of_type(AE_REQ, dest=2)  # read 4's round starts at once
    assert nxt.read_id == hb.read_id + 1
    assert _reads(_ack(n, 2, nxt)) == [ReadState(4, index)]


def test_the_read_index_is_the_commit_index_when_the_round_starts() -> None:
    """A write committed after the round began is not needed by the read (it did not
    complete before the read started), and one committed before is covered."""
    n = _leader()
    n.propose([b"w1"])
    drain(n)
    ack_all(n, [2])
    committed = n.commit
    n.read_index(1)
    out = drain(n)
    (hb,) = out.of_type(AE_REQ, dest=2)
    n.propose([b"w2"])
    drain(n)
    out = _ack(n, 2, hb)
    assert _reads(out) == [ReadState(1, committed)]


def test_acknowledgements_of_an_older_round_do_not_confirm_a_newer_one() -> None:
    n = _leader()
    n.heartbeat_timeout()
    old = drain(n).of_type(AE_REQ, dest=2)[0]
    n.read_index(1)
    out = drain(n)
    (hb,) = out.of_type(AE_REQ, dest=2)
    assert hb.read_id > old.read_id
    assert _reads(_ack(n, 2, old)) == []
    # A refusal in our term (log mismatch) still shows the follower follows us.
    n.step(append_resp(n.term, 3, 1, next_index=1, accepted=False, read_id=hb.read_id))
    assert _reads(drain(n)) == [ReadState(1, n.commit)]


def test_an_echo_of_a_round_never_started_is_ignored() -> None:
    n = _leader()
    n.read_index(1)
    drain(n)
    n.step(append_resp(n.term, 2, 1, next_index=n.log.last_index + 1, read_id=10**6))
    assert _reads(drain(n)) == []


def test_a_group_of_one_reads_without_messages() -> None:
    n = node(1, config([1]))
    elect(n)
    drain(n)
    n.read_index(9)
    out = drain(n)
    assert _reads(out) == [ReadState(9, n.commit)] and out.messages == []


def test_a_deposed_partitioned_leader_never_completes_a_read() -> None:
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.partition([1], [2, 3])
    c.read(1, 5)
    c.deliver_all()
    c.election_timeout(3)  # 3 stops hearing from 1 (and then grants 2 its vote)
    c.deliver_all()
    c.elect(2)
    c.propose(2, b"after")
    c.stabilize()
    for _ in range(5):
        c.heartbeat(1)  # its rounds reach nobody
        c.deliver_all()
    assert c.nodes[1].read_states == []
    c.heal()
    c.heartbeat(1)
    c.deliver_all()  # the answers carry term 2: node 1 steps down
    assert not c.core(1).is_leader
    assert c.nodes[1].read_states == []
    # Failed, typed: it timed out waiting for a quorum, or the leader stepped down.
    (failure,) = c.nodes[1].read_failures
    assert failure.ctx == 5 and isinstance(failure.error, NotLeader | RaftTimeout)


def test_a_leader_that_loses_its_quorum_fails_reads_when_check_quorum_steps_it_down() -> None:
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.isolate(1)
    c.read(1, 5)
    for _ in range(c.params.leadership_expiry_ticks + 1):
        c.heartbeat(1)
        c.deliver_all()
    assert not c.core(1).is_leader
    assert [f.ctx for f in c.nodes[1].read_failures] == [5]
    assert c.nodes[1].read_states == []


def test_without_check_quorum_an_unconfirmed_read_times_out() -> None:
    c = cluster(params=params(leadership_expiry_ms=-1))
    c.elect(1)
    c.stabilize()
    c.isolate(1)
    c.read(1, 5)
    for _ in range(c.params.read_timeout_ticks):
        c.heartbeat(1)
        c.deliver_all()
    assert c.core(1).is_leader  # it does not know it is cut off
    (failure,) = c.nodes[1].read_failures
    assert isinstance(failure.error, RaftTimeout) and c.nodes[1].read_states == []


# -- followers ---------------------------------------------------------------------------
def test_a_follower_read_carries_the_leaders_index_and_waits_to_apply_it() -> None:
    c = cluster()
    c.elect(1)
    c.stabilize()
    # Node 3 misses the write's appends (and the commit that follows).
    c.propose(1, b"w")
    deliver_only(c, lambda m: m.dest != 3 or m.type != AE_REQ)
    write = c.core(1).commit
    assert c.applied_index(3) < write <= c.applied_index(1)
    c.read(3, 8)
    deliver_only(c, lambda m: m.dest != 3 or m.type != AE_REQ)
    (state,) = c.nodes[3].read_states
    assert state == ReadState(8, write)
    assert c.applied_index(3) < state.index  # the runtime must wait before serving
    c.stabilize()
    assert c.applied_index(3) >= state.index


def test_follower_reads_are_forwarded_in_batches() -> None:
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.core(2).read_index(1)
    c.core(2).read_index(2)
    c.read(2, 3)
    forwards = [m for m in c.bag if m.type == RI_REQ]
    assert len(forwards) == 1 and forwards[0].dest == 1
    c.deliver_all()
    assert [s.ctx for s in c.nodes[2].read_states] == [1, 2, 3]


def test_a_follower_without_a_leader_refuses_at_once() -> None:
    n = node(2)
    with pytest.raises(NotLeader):
        n.read_index(1)


def test_a_removed_member_refuses_reads() -> None:
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.do(1, lambda core: core.remove_server(3))
    c.stabilize()
    assert c.core(3).removed
    with pytest.raises(Cancelled):
        c.read(3, 1)


def test_a_follower_read_fails_when_its_leader_steps_down() -> None:
    c = cluster(params=params(leadership_expiry_ms=-1))
    c.elect(1)
    c.stabilize()
    c.read(2, 4)
    deliver_matching(c, lambda m: m.type == RI_REQ)  # queued on the leader
    c.bag.clear()  # the round's heartbeats are lost
    c.elect(3)  # node 1 steps down: it refuses the forwarded read
    c.deliver_all()
    assert c.nodes[2].read_states == []
    (failure,) = c.nodes[2].read_failures
    assert failure.ctx == 4 and isinstance(failure.error, NotLeader)


def test_a_leader_refuses_read_index_when_it_does_not_lead() -> None:
    n = node(2)
    n.step(Message(RI_REQ, 0, 1, 2, read_id=3))
    (resp,) = [m for m in drain(n).messages if m.type == RI_RESP]
    assert not resp.accepted and resp.read_id == 3


def test_an_answer_to_a_previous_incarnation_does_not_answer_a_new_read() -> None:
    """Follower 2 forwards a read and restarts; a write then completes, and the leader's
    answer to the old request (an index from before the write) arrives only after the new
    incarnation forwarded a read of its own: it must not answer that one."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.read(2, 1)
    deliver_matching(c, lambda m: m.type == RI_REQ)  # queued on the leader, round in flight
    c.crash(2)
    c.restart(2)
    c.bag = [m for m in c.bag if m.dest != 2]
    c.propose(1, b"w")
    deliver_matching(c, lambda m: {m.src, m.dest} == {1, 3})  # committed by {1, 3}
    write = c.core(1).commit
    old_answers = [m for m in c.bag if m.type == RI_RESP and m.dest == 2]
    assert old_answers and old_answers[0].next_index < write
    deliver_matching(c, lambda m: m.type == AE_REQ and m.dest == 2)  # 2 learns its leader
    c.read(2, 2)
    deliver_matching(c, lambda m: m.type == RI_RESP)  # the old answer arrives now
    c.stabilize()
    states = c.nodes[2].read_states
    assert [s.ctx for s in states] == [2]
    assert states[0].index >= write


# -- leases ------------------------------------------------------------------------------
LEASE = params(lease_reads=True)


def _lease_elect(c: CoreCluster, leader: int) -> None:
    """With lease reads, a member helps elect nobody before its first election timeout
    (it may have acknowledged a round just before it restarted): let every timer fire."""
    for i in c.nodes:
        if i != leader:
            c.election_timeout(i)
    c.deliver_all()
    c.elect(leader)


def _lease_cluster() -> CoreCluster:
    c = cluster(params=LEASE)
    _lease_elect(c, 1)
    c.now = 10.0
    c.stabilize()  # a tick round at t=10, acknowledged by everyone
    return c


def test_a_lease_serves_without_a_round_while_it_holds() -> None:
    c = _lease_cluster()
    c.now = 10.0 + LEASE.lease_duration_s * 0.9
    c.bag.clear()
    c.read(1, 1, lease=True)
    assert [s.ctx for s in c.nodes[1].read_states] == [1]
    assert c.bag == []  # no message at all


def test_an_expired_lease_falls_back_to_a_round() -> None:
    c = _lease_cluster()
    c.now = 10.0 + LEASE.lease_duration_s + 0.001
    c.bag.clear()
    c.read(1, 1, lease=True)
    assert c.nodes[1].read_states == []
    assert {m.dest for m in c.bag if m.type == AE_REQ} == {2, 3}
    c.deliver_all()
    assert [s.ctx for s in c.nodes[1].read_states] == [1]
    # That round renewed the lease from its start.
    c.now += LEASE.lease_duration_s * 0.5
    c.read(1, 2, lease=True)
    assert [s.ctx for s in c.nodes[1].read_states] == [1, 2]


def test_the_lease_runs_from_the_round_start_not_its_acknowledgement() -> None:
    c = cluster(params=LEASE)
    _lease_elect(c, 1)
    c.stabilize()
    c.now = 100.0
    c.heartbeat(1)  # the round starts at t=100
    c.now = 100.0 + LEASE.lease_duration_s + 0.001  # ... and its answers arrive later
    c.deliver_all()
    assert not c.core(1).lease_valid(c.now)
    assert c.core(1).lease_valid(100.0 + LEASE.lease_duration_s * 0.99)


def test_a_lease_is_refused_when_lease_reads_are_off_or_check_quorum_is() -> None:
    with pytest.raises(ValueError, match="check-quorum"):
        RaftParams(lease_reads=True, leadership_expiry_ms=-1)
    c = cluster()
    c.elect(1)
    c.stabilize()
    with pytest.raises(BadRequest):
        c.read(1, 1, lease=True)
    with pytest.raises(BadRequest):
        _lease_cluster().core(1).read_index(1, lease=True)  # no time given


def test_with_leases_a_restarted_member_votes_only_after_its_election_timeout() -> None:
    """Node 3 acknowledged leader 1's round, then restarted: it must not help elect 2 while
    1's lease may still hold -- not before its own election timer has fired once."""
    c = _lease_cluster()
    c.crash(3)
    c.restart(3)
    c.isolate(1)
    c.election_timeout(2)
    c.deliver_all()
    assert not c.core(2).is_leader and c.core(2).term == c.core(1).term
    c.election_timeout(3)  # the lower election timeout has passed on 3's clock
    c.deliver_all()
    for _ in range(5):
        if any(c.core(i).is_leader for i in (2, 3)):
            break
        c.election_timeout(2)
        c.deliver_all()
    assert any(c.core(i).is_leader for i in (2, 3))


def test_a_leader_that_offered_its_leadership_has_no_lease() -> None:
    c = _lease_cluster()
    c.now = 10.0 + LEASE.lease_duration_s * 0.5
    assert c.core(1).lease_valid(c.now)
    c.do(1, lambda core: core.yield_leadership(2))
    assert not c.core(1).lease_valid(c.now)
    c.bag.clear()
    c.read(1, 1, lease=True)
    assert c.nodes[1].read_states == []  # it needs a round


def test_no_lease_before_an_entry_of_the_leaders_term_commits() -> None:
    n = node(1, prm=LEASE)
    elect(n)
    n.heartbeat_timeout(1.0)
    out = drain(n)
    for hb in out.of_type(AE_REQ):
        n.step(append_resp(n.term, hb.dest, 1, next_index=1, accepted=False,
                           read_id=hb.read_id))  # leadership confirmed, no-op not yet held
    drain(n)
    assert n.commit == 0
    assert not n.lease_valid(1.0)


# -- property: reads never go back in time ---------------------------------------------------
class ReadMachine(RaftMachine):
    """:class:`RaftMachine`'s faults (reordering, loss, duplication, partitions, crashes,
    membership changes, leadership transfers) plus reads issued on any node at any time.

    Invariant: a read released with index ``i`` started when no index above ``i`` was
    committed anywhere in the cluster -- so the state it is served from (applied >= ``i``)
    holds every write that completed before it began.  Sequential steps are the real-time
    order.  Failures must be typed; teardown checks that reads complete on a healed cluster.
    """

    def __init__(self) -> None:
        super().__init__()
        self.next_ctx = 0
        self.read_bound: dict[int, tuple[int, int]] = {}  # ctx -> (node, committed at start)
        self.cursors: dict[int, tuple[RaftNode, int, int]] = {}
        self.released = 0
        self.failed = 0

    def _committed_max(self) -> int:
        self.h.record_commits()
        return max(self.h.committed, default=0)

    @rule(k=st.integers(0, 6), count=st.integers(1, 3))
    def read(self, k: int, count: int) -> None:
        alive = self.alive()
        if alive:
            self._read(_pick(alive, k), count)

    @precondition(lambda self: bool(self.c.leaders()))
    @rule(k=st.integers(0, 6), count=st.integers(1, 3), steps=st.integers(0, 30))
    def read_on_leader_then_calm(self, k: int, count: int, steps: int) -> None:
        self._read(_pick(self.leaders(), k), count)
        self.calm(steps)

    @precondition(lambda self: bool(self.c.leaders()))
    @rule(k=st.integers(0, 6), count=st.integers(1, 3), steps=st.integers(0, 30))
    def read_on_follower_then_calm(self, k: int, count: int, steps: int) -> None:
        followers = [i for i in self.alive() if not self.c.core(i).is_leader]
        if followers:
            self._read(_pick(followers, k), count)
            self.calm(steps)

    def _read(self, i: int, count: int, *, lease: bool = False) -> None:
        for _ in range(count):
            self.next_ctx += 1
            bound = self._committed_max()
            try:
                self.c.read(i, self.next_ctx, lease=lease)
            except RaftError as exc:
                event(f"read refused: {type(exc).__name__}")
                return
            self.read_bound[self.next_ctx] = (i, bound)
        self._cap_bag()

    @invariant()
    def reads_are_not_stale(self) -> None:
        for i, n in self.c.nodes.items():
            core = n.core
            if core is None:
                continue
            seen_core, states, failures = self.cursors.get(i, (core, 0, 0))
            if seen_core is not core:
                states = failures = 0
            for s in n.read_states[states:]:
                node, bound = self.read_bound.pop(s.ctx)
                if node != i or s.index < bound:
                    self.c.checker.fail(f"stale read {s.ctx} on node {i} (issued on {node}): "
                                        f"index {s.index} < {bound} committed at its start")
                self.released += 1
            for f in n.read_failures[failures:]:
                assert isinstance(f.error, RaftError)
                self.read_bound.pop(f.ctx)
                self.failed += 1
            self.cursors[i] = (core, len(n.read_states), len(n.read_failures))

    def teardown(self) -> None:
        if not self.ready or sys.exc_info()[1] is not None:
            return
        super().teardown()
        event(f"reads released: {_bucket(self.released)}")
        event(f"reads failed: {_bucket(self.failed)}")
        # Liveness: on the healed cluster, a read on the leader and one on a follower complete.
        for _ in range(LIVENESS_ROUNDS):
            lead = self.c.leader()
            if lead is None or not self.c.core(lead).is_leader:
                self.c.wait_leader_liveness(max_rounds=LIVENESS_ROUNDS)
                continue
            members = self.c.core(lead).config
            follower = next((j for j in self.alive() if j != lead and j in members), None)
            targets = [lead] + ([follower] if follower is not None else [])
            before = {j: len(self.c.nodes[j].read_states) for j in targets}
            try:
                for j in targets:
                    self.next_ctx += 1
                    self.read_bound[self.next_ctx] = (j, self._committed_max())
                    self.c.read(j, self.next_ctx)
            except RaftError:
                continue
            for _ in range(3):
                self.c.heartbeat(lead)
                self.c.deliver_all()
            self.reads_are_not_stale()
            if all(len(self.c.nodes[j].read_states) > before[j] for j in targets):
                return
        self.c.checker.fail("reads did not complete on a healed cluster")


ReadMachine.TestCase.settings = settings(settings.default, stateful_step_count=STEPS)
TestReadMachine = ReadMachine.TestCase


class ServesWithoutRound(RaftNode):
    """Planted bug: a leader serves every read at once at its commit index, with no round
    (so a deposed leader that does not know it yet answers stale)."""

    def read_index(self, ctx: int, *, lease: bool = False, now: float | None = None) -> None:
        if self.is_leader:
            self._read_states.append(ReadState(ctx, self.commit))
            return
        super().read_index(ctx, lease=lease, now=now)


def _deposed_leader_reads(factory: type[RaftNode]) -> ReadMachine:
    """Drive the read machine by hand: leader 1 is cut off, 2 is elected and commits a
    write, then a read is issued on 1 (which does not know it was deposed)."""
    class Machine(ReadMachine):
        node_factory = factory

    m = Machine()
    m.setup(size=3, spares=0, seed=1, pre_vote=False, expiry_ms=-1, batch=100, inflight=4,
            warm=1, writes=1)
    m.c.partition([1], [2, 3])
    m.c.elect(2)
    m.propose(0, 1)
    m.c.stabilize()
    m.reads_are_not_stale()
    m._read(1, 1)
    m.c.stabilize()
    return m


def test_the_read_invariant_flags_a_stale_read() -> None:
    """The machine's invariant is not vacuous: a core whose leader serves reads without a
    round answers from a deposed leader, and the invariant flags it (the real core leaves
    that read pending)."""
    broken = _deposed_leader_reads(ServesWithoutRound)
    with pytest.raises(SafetyViolation, match="stale read"):
        broken.reads_are_not_stale()
    real = _deposed_leader_reads(RaftNode)
    real.reads_are_not_stale()
    assert real.c.nodes[1].read_states == []


# -- property: lease reads, with the clocks of the lease's assumption ------------------------
class TimedCluster(CoreCluster):
    """One clock for every node (no drift): an election timer fires only once it is due --
    firing one moves the clock there -- so followers keep the promise a lease rests on."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.deadlines: dict[int, float] = {}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def on_ready(self, i: int, rd: Ready) -> None:
        timer = rd.election_timer
        if timer is not None:
            self.deadlines[i] = math.inf if timer.stop else self.now + timer.timeout_ms / 1000

    def election_timeout(self, i: int) -> None:
        due = self.deadlines.get(i, self.now)
        if due != math.inf:
            self.now = max(self.now, due)
        super().election_timeout(i)


class LeaseMachine(ReadMachine):
    """:class:`ReadMachine` with lease reads on, on a :class:`TimedCluster`: lease reads, the
    clock moving on, and every fault of the machines before it.  Same invariant: no read
    (lease or not) older than what was committed when it began."""

    @initialize(
        size=st.integers(3, 5),
        seed=st.integers(0, 2**32 - 1),
        pre_vote=st.booleans(),
        expiry_ms=st.sampled_from([300, 0]),  # check-quorum is required for leases
        warm=st.integers(0, 3),
    )
    def setup_timed(self, size: int, seed: int, pre_vote: bool, expiry_ms: int,
                    warm: int) -> None:
        prm = RaftParams(pre_vote=pre_vote, leadership_expiry_ms=expiry_ms, lease_reads=True)
        self.c = TimedCluster(range(1, size + 2), members=range(1, size + 1), params=prm,
                              seed=seed, auto_persist=False,
                              node_factory=type(self).node_factory)
        self.checker = CountingChecker(self.c)
        self.c.checker = self.checker
        self.h = History(self.c)
        self.ids = sorted(self.c.nodes)
        self.ready = True
        if warm:
            for i in self.ids:
                if i != warm:
                    self.c.election_timeout(i)
            self.c.deliver_all()
            self.c.elect(warm)
            self.c.stabilize()

    def setup(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("LeaseMachine uses setup_timed")

    @rule(ms=st.integers(1, 400))
    def clock(self, ms: int) -> None:
        self.c.now += ms / 1000

    @precondition(lambda self: bool(self.c.leaders()))
    @rule(k=st.integers(0, 6), count=st.integers(1, 3), steps=st.integers(0, 30))
    def lease_read_on_leader(self, k: int, count: int, steps: int) -> None:
        self._read(_pick(self.leaders(), k), count, lease=True)
        self.calm(steps)

    @precondition(lambda self: bool(self.c.leaders()))
    @rule(k=st.integers(0, 6), steps=st.integers(0, 60))
    def depose_leader(self, k: int, steps: int) -> None:
        """Cut a leader off and let every other member's election timer fire (the clock
        moves on as far as that takes): the others may elect a new leader while the old one
        still leads in its own eyes -- the case a lease must survive."""
        lead = _pick(self.leaders(), k)
        self.c.isolate(lead)
        for i in self.alive():
            if i != lead:
                self.c.election_timeout(i)
        self.calm(steps)


LeaseMachine.TestCase.settings = settings(settings.default, stateful_step_count=STEPS)
TestLeaseMachine = LeaseMachine.TestCase


class LeaseNeverExpires(RaftNode):
    """Planted bug: once a round confirmed, the leader's lease holds forever."""

    def lease_valid(self, now: float) -> bool:
        return (self.is_leader and self._own_term_committed()
                and self._lreads.lease_start is not None)


def _lease_read_on_a_deposed_leader(factory: type[RaftNode]) -> LeaseMachine:
    """Drive the lease machine by hand: leader 1 is cut off, the others' timers fire and
    they elect a new leader, then 1 (which does not know) is asked for a lease read."""
    class Machine(LeaseMachine):
        node_factory = factory

    m = Machine()
    m.setup_timed(size=3, seed=1, pre_vote=True, expiry_ms=0, warm=1)
    m.depose_leader(0, 200)
    for _ in range(5):
        if any(m.c.core(i).is_leader for i in (2, 3)):
            break
        m.campaign(1, 200)
    assert m.c.core(1).is_leader and any(m.c.core(i).is_leader for i in (2, 3))
    m.reads_are_not_stale()
    m._read(1, 1, lease=True)
    return m


def test_the_lease_invariant_flags_a_lease_that_never_expires() -> None:
    broken = _lease_read_on_a_deposed_leader(LeaseNeverExpires)
    with pytest.raises(SafetyViolation, match="stale read"):
        broken.reads_are_not_stale()
    real = _lease_read_on_a_deposed_leader(RaftNode)
    real.reads_are_not_stale()
    assert real.c.nodes[1].read_states == []  # its lease ran out: it needs a round
