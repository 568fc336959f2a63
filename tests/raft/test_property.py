"""Stateful property test of the Raft core: every interleaving Hypothesis can think of.

A :class:`RaftMachine` drives 3 to 5 member cores (plus one or two spare node ids that can be
added) joined by :class:`~nuraft_mesg.testing.core_cluster.CoreCluster`'s message bag, with
``auto_persist=False`` so that a storage write completing is a step of its own.  The network
is the bag of the TLA+ spec (``ongardie/raft.tla``): any in-flight message may be delivered
next (reordering), dropped or duplicated, and links may be cut (symmetric partitions, one
isolated node, or a single direction).  Nodes crash, losing everything they had not persisted,
and restart from what they had.  Local requests (propose, add/remove a member, yield or
request leadership) are issued at random; a refusal (any :class:`RaftError`) is legitimate.

The cluster's :class:`SafetyChecker` runs on every pump and on every send; on top of it the
invariants below check, after every step, against the whole history of the run:

* Election Safety: at most one leader per term, ever;
* Leader Append-Only: a leader's log only grows while it leads that term;
* Log Matching over every live log *and* every durable log, plus "log terms never decrease
  along a log and never exceed the owner's current term";
* Leader Completeness: an entry committed in term T is in the log of every leader of a term
  >= T (live leaders at every step, and every past leader's last known log for terms > T);
* State Machine Safety: each incarnation applies 1, 2, 3, ... in order, only committed
  entries, and every node applies the same entry at an index;
* per node incarnation, term and commit index never decrease; across crashes the durable term
  never decreases and a durable vote never changes within its term;
* acknowledged writes: a proposal whose entry its proposer applied (at the proposal's index,
  with the proposal's term) is in every later leader's log.

``teardown`` is a liveness phase (TigerBeetle's VOPR does the same): faults stop, crashed
nodes restart, the network heals, and a leader must commit a new entry within a bounded
number of rounds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from nuraft_mesg.errors import RaftError
from nuraft_mesg.raft.node import Proposal, RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import RemovedFromCluster
from nuraft_mesg.raft.types import LogEntry, Message, MsgType, ServerConfig
from nuraft_mesg.testing.core_cluster import CoreCluster, SafetyChecker

#: In-flight messages beyond this are dropped, oldest first (an overflowing link).
MAX_BAG = 200
#: Rounds of CoreCluster.wait_leader_liveness allowed in the liveness phase.
LIVENESS_ROUNDS = 60
STEPS = 60

T = TypeVar("T")


def _pick(items: Sequence[T], k: int) -> T:
    return items[k % len(items)]


class CountingChecker(SafetyChecker):
    """The cluster's checker, counting the promises (vote grants, acknowledgements) that the
    "nothing promised before it is durable" checks looked at as they left (so a run can show
    those checks were exercised)."""

    def __init__(self, cluster: CoreCluster) -> None:
        super().__init__(cluster)
        self.votes_checked = 0
        self.acks_checked = 0

    def check_sent(self, src: int, m: Message) -> None:
        if m.accepted and m.type == MsgType.REQUEST_VOTE_RESPONSE:
            self.votes_checked += 1
        elif m.accepted and m.type == MsgType.APPEND_ENTRIES_RESPONSE and m.next_index > 1:
            self.acks_checked += 1
        super().check_sent(src, m)


@dataclass(slots=True, frozen=True)
class Acked:
    """A write its proposer applied: committed in a term <= ``term``."""

    index: int
    entry: LogEntry
    term: int


class History:
    """What the invariants remember across steps, and the invariants themselves.

    Every failure goes through the cluster checker's ``fail`` (a :class:`SafetyViolation`
    carrying the recent message history)."""

    def __init__(self, cluster: CoreCluster) -> None:
        self.c = cluster
        self.leader_of_term: dict[int, int] = {}
        self.leader_logs: dict[tuple[int, int], list[LogEntry]] = {}
        self.committed: dict[int, LogEntry] = {}
        self.commit_term: dict[int, int] = {}
        # node -> (incarnation, term, commit) last seen
        self.seen: dict[int, tuple[RaftNode, int, int]] = {}
        self.durable_term: dict[int, int] = {}
        self.durable_vote: dict[int, tuple[int, int]] = {}
        # node -> (incarnation, how many of its applied entries were checked)
        self.apply_cursor: dict[int, tuple[RaftNode, int]] = {}
        self.applied_at: dict[int, LogEntry] = {}
        self.proposals: list[tuple[int, Proposal, bytes]] = []
        self.acked: dict[int, Acked] = {}
        self.max_term = 0

    def fail(self, what: str) -> None:
        self.c.checker.fail(what)

    def live(self) -> list[tuple[int, RaftNode]]:
        return [(i, n.core) for i, n in self.c.nodes.items() if n.core is not None]

    # -- Election Safety / Leader Append-Only -------------------------------------------------
    def check_leaders(self) -> None:
        for i, core in self.live():
            self.max_term = max(self.max_term, core.term)
            if not core.is_leader:
                continue
            other = self.leader_of_term.setdefault(core.term, i)
            if other != i:
                self.fail(f"Election Safety: nodes {other} and {i} both led term {core.term}")
            entries = core.log.slice(1, core.log.last_index + 1)
            before = self.leader_logs.get((i, core.term))
            if before is not None and entries[: len(before)] != before:
                self.fail(f"Leader Append-Only: leader {i} of term {core.term} changed its log")
            self.leader_logs[(i, core.term)] = entries

    # -- Log Matching -------------------------------------------------------------------------
    def check_log_matching(self) -> None:
        """Every live and every durable log: if two hold the same (index, term), their
        prefixes up to it are identical.  Checked with a hash chain over each log, so the
        cost is linear in the total log length."""
        logs: list[tuple[str, int, int, list[LogEntry]]] = []
        for i, n in self.c.nodes.items():
            d = n.durable
            logs.append((f"node {i} (disk)", d.hard_state.term, d.start_index, d.entries))
            if n.core is not None:
                log = n.core.log
                logs.append((f"node {i}", n.core.term, log.start_index,
                             log.slice(log.start_index, log.last_index + 1)))
        chain: dict[tuple[int, int], tuple[int, str]] = {}
        for name, term, start, entries in logs:
            assert start == 1, "no compaction in this machine"
            h = 0
            last_term = 0
            for off, e in enumerate(entries):
                if e.term < last_term:
                    self.fail(f"{name}: log term goes down at index {start + off}")
                if e.term > term:
                    self.fail(f"{name}: entry {start + off} has term {e.term} > current {term}")
                last_term = e.term
                h = hash((h, e))
                first = chain.setdefault((start + off, e.term), (h, name))
                if first[0] != h:
                    self.fail(f"Log Matching: {first[1]} and {name} both hold index "
                              f"{start + off} in term {e.term} but differ before it")

    # -- Commits, Leader Completeness, acknowledged writes ------------------------------------
    def record_commits(self) -> None:
        for i, core in self.live():
            for idx in range(1, core.commit + 1):
                entry = core.log.entry(idx)
                seen = self.committed.setdefault(idx, entry)
                if seen != entry:
                    self.fail(f"two entries committed at {idx}: {seen} and {entry} (node {i})")
                if core.term < self.commit_term.get(idx, core.term + 1):
                    self.commit_term[idx] = core.term

    def _check_in_leaders(self, what: str, idx: int, entry: LogEntry, term: int) -> None:
        """``entry`` at ``idx`` was committed in a term <= ``term``: every leader of a term
        >= ``term`` holds it (a past leader's last known log, for terms > ``term``, as it
        held every such entry from its election on)."""
        for i, core in self.live():
            if core.is_leader and core.term >= term and (
                idx > core.log.last_index or core.log.entry(idx) != entry
            ):
                self.fail(f"{what}: leader {i} of term {core.term} lacks entry {idx} "
                          f"({entry.term}) committed by term {term}")
        for (i, t), entries in self.leader_logs.items():
            if t > term and (idx > len(entries) or entries[idx - 1] != entry):
                self.fail(f"{what}: node {i}, leader of term {t}, lacked entry {idx} "
                          f"({entry.term}) committed by term {term}")

    def check_leader_completeness(self) -> None:
        for idx, entry in self.committed.items():
            self._check_in_leaders("Leader Completeness", idx, entry, self.commit_term[idx])

    def check_applied(self) -> None:
        """State Machine Safety, and acknowledgement of proposals."""
        for i, n in self.c.nodes.items():
            core = n.core
            if core is None:
                continue
            inc, done = self.apply_cursor.get(i, (core, 0))
            if inc is not core:
                done = 0  # a new incarnation re-applies from the start
            for pos in range(done, len(n.applied)):
                idx, entry = n.applied[pos]
                if idx != pos + 1:
                    self.fail(f"node {i} applied index {idx} as its entry number {pos + 1}")
                if idx > core.commit or self.committed.get(idx) != entry:
                    self.fail(f"node {i} applied {entry} at {idx}, which is not committed "
                              f"(commit {core.commit}, committed {self.committed.get(idx)})")
                seen = self.applied_at.setdefault(idx, entry)
                if seen != entry:
                    self.fail(f"State Machine Safety: node {i} applied {entry} at {idx}, "
                              f"another node applied {seen}")
                self._maybe_ack(i, idx, entry, core.term)
            self.apply_cursor[i] = (core, len(n.applied))

    def _maybe_ack(self, i: int, idx: int, entry: LogEntry, now_term: int) -> None:
        for k, (node, prop, data) in enumerate(self.proposals):
            if (node == i and prop.last_index == idx and prop.term == entry.term
                    and entry.buffer == data):
                # Applied on its proposer: the client hears "done".  It was committed in a
                # term <= the proposer's current term.
                self.acked[idx] = Acked(idx, entry, now_term)
                del self.proposals[k]
                return

    def check_acknowledged(self) -> None:
        for ack in self.acked.values():
            self._check_in_leaders("acknowledged write lost", ack.index, ack.entry, ack.term)

    # -- monotonic state ----------------------------------------------------------------------
    def check_monotonic(self) -> None:
        for i, n in self.c.nodes.items():
            hs = n.durable.hard_state
            if hs.term < self.durable_term.get(i, 0):
                self.fail(f"node {i}'s durable term went back to {hs.term}")
            self.durable_term[i] = hs.term
            if hs.vote != -1:
                t, v = self.durable_vote.get(i, (hs.term, hs.vote))
                if t == hs.term and v != hs.vote:
                    self.fail(f"node {i} changed its durable vote in term {t} from {v} to "
                              f"{hs.vote}")
                self.durable_vote[i] = (hs.term, hs.vote)
            core = n.core
            if core is None:
                self.seen.pop(i, None)
                continue
            if core.term < hs.term:
                self.fail(f"node {i} runs in term {core.term} behind its disk ({hs.term})")
            inc, term, commit = self.seen.get(i, (core, 0, 0))
            if inc is core and (core.term < term or core.commit < commit):
                self.fail(f"node {i}: term/commit went from {term}/{commit} to "
                          f"{core.term}/{core.commit}")
            self.seen[i] = (core, core.term, core.commit)

    def check_all(self) -> None:
        self.check_leaders()
        self.check_log_matching()
        self.record_commits()
        self.check_leader_completeness()
        self.check_applied()
        self.check_acknowledged()
        self.check_monotonic()


class RaftMachine(RuleBasedStateMachine):
    """Random faults and requests against a CoreCluster; see the module docstring."""

    #: Builds each core; test_checker.py plugs deliberately broken cores in here.
    node_factory: ClassVar[Callable[..., RaftNode]] = RaftNode

    c: CoreCluster
    h: History
    checker: CountingChecker

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.next_value = 0
        self.steps = 0

    # -- set-up -------------------------------------------------------------------------------
    @initialize(
        size=st.integers(3, 5),
        spares=st.integers(1, 2),
        seed=st.integers(0, 2**32 - 1),
        pre_vote=st.booleans(),
        expiry_ms=st.sampled_from([300, 0, -1]),  # 3 ticks, 20 ticks, off
        batch=st.sampled_from([1, 3, 100]),
        inflight=st.sampled_from([1, 4]),
        warm=st.integers(0, 5),
        writes=st.integers(0, 3),
    )
    def setup(self, size: int, spares: int, seed: int, pre_vote: bool, expiry_ms: int,
              batch: int, inflight: int, warm: int, writes: int) -> None:
        """``warm`` > 0: start from a healthy cluster led by member ``warm`` (if it exists)
        that has committed and acknowledged ``writes`` proposals, so that the steps are
        spent on faults rather than on the first election."""
        params = RaftParams(pre_vote=pre_vote, leadership_expiry_ms=expiry_ms,
                            max_append_entries=batch, max_inflight_appends=inflight)
        self.c = CoreCluster(range(1, size + spares + 1), members=range(1, size + 1),
                             params=params, seed=seed, auto_persist=False,
                             node_factory=type(self).node_factory)
        # Booting pumped the nodes once (timers only); count from here on.
        self.checker = CountingChecker(self.c)
        self.c.checker = self.checker
        self.h = History(self.c)
        self.ids = sorted(self.c.nodes)
        self.ready = True
        if 0 < warm <= size:
            self.c.elect(warm)
            for _ in range(writes):
                self.propose(0, 1)
            self.c.stabilize()
            self.h.check_all()  # records the acknowledgements

    # -- helpers ------------------------------------------------------------------------------
    def alive(self) -> list[int]:
        return [i for i in self.ids if self.c.nodes[i].alive]

    def dead(self) -> list[int]:
        return [i for i in self.ids if not self.c.nodes[i].alive]

    def leaders(self) -> list[int]:
        return self.c.leaders()

    def has_bag(self) -> bool:
        return bool(self.c.bag)

    def has_leader(self) -> bool:
        return bool(self.c.leaders())

    def _cap_bag(self) -> None:
        while len(self.c.bag) > MAX_BAG:
            self.c.drop(0)

    def _local(self, i: int, fn: Callable[[RaftNode], object]) -> None:
        """A local request; refusals are legitimate outcomes."""
        try:
            self.c.do(i, fn)
        except RaftError as exc:
            event(f"refused: {type(exc).__name__}")
        self._cap_bag()

    # -- the network --------------------------------------------------------------------------
    @precondition(has_bag)
    @rule(k=st.integers(0, MAX_BAG))
    def deliver(self, k: int) -> None:
        self.c.deliver(k % len(self.c.bag))
        self._cap_bag()

    @precondition(has_bag)
    @rule(ks=st.lists(st.integers(0, MAX_BAG), min_size=2, max_size=12))
    def deliver_several(self, ks: list[int]) -> None:
        for k in ks:
            if not self.c.bag:
                break
            self.c.deliver(k % len(self.c.bag))
        self._cap_bag()

    @precondition(has_bag)
    @rule(k=st.integers(0, MAX_BAG))
    def drop(self, k: int) -> None:
        self.c.drop(k % len(self.c.bag))

    @precondition(has_bag)
    @rule(k=st.integers(0, MAX_BAG))
    def duplicate(self, k: int) -> None:
        self.c.deliver(k % len(self.c.bag), keep=True)
        self._cap_bag()

    @rule(steps=st.integers(1, 40))
    def calm(self, steps: int) -> None:
        """A calm spell: FIFO delivery, every storage write completing at once."""
        self.c.deliver_all(max_steps=steps)
        self._cap_bag()

    @rule(k=st.integers(0, 6), steps=st.integers(1, 60))
    def campaign(self, k: int, steps: int) -> None:
        """A node's election timer fires and the network is calm for a while."""
        alive = self.alive()
        if alive:
            self.c.election_timeout(_pick(alive, k))
            self.calm(steps)

    @precondition(has_leader)
    @rule(steps=st.integers(1, 100))
    def stabilize(self, steps: int) -> None:
        """Every leader heartbeats and the network is calm for a while."""
        for i in self.leaders():
            self.c.heartbeat(i)
        self.calm(steps)

    @rule(mask=st.integers(0, 127))
    def partition(self, mask: int) -> None:
        side = [i for k, i in enumerate(self.ids) if mask >> k & 1]
        other = [i for i in self.ids if i not in side]
        if side and other:
            self.c.partition(side, other)
        else:
            self.c.isolate(_pick(self.ids, mask))

    @rule(a=st.integers(0, 6), b=st.integers(0, 6))
    def cut_one_way(self, a: int, b: int) -> None:
        src, dest = _pick(self.ids, a), _pick(self.ids, b)
        if src != dest:
            self.c.cut.add((src, dest))
            self.c.checker.log(f"cut {src}->{dest}")

    @rule()
    def heal(self) -> None:
        self.c.heal()

    # -- timers and storage -------------------------------------------------------------------
    @rule(k=st.integers(0, 6))
    def election_timeout(self, k: int) -> None:
        alive = self.alive()
        if alive:
            self.c.election_timeout(_pick(alive, k))
            self._cap_bag()

    @precondition(has_leader)
    @rule(k=st.integers(0, 6))
    def heartbeat(self, k: int) -> None:
        self.c.heartbeat(_pick(self.leaders(), k))
        self._cap_bag()

    @rule(k=st.integers(0, 6))
    def persist(self, k: int) -> None:
        pending = [i for i in self.alive() if self.c.nodes[i].pending is not None]
        if pending:
            self.c.persist(_pick(pending, k))
            self._cap_bag()

    @rule()
    def persist_all(self) -> None:
        for i in self.alive():
            self.c.persist(i)
        self._cap_bag()

    @rule(k=st.integers(0, 6))
    def crash(self, k: int) -> None:
        alive = self.alive()
        if alive:
            self.c.crash(_pick(alive, k))

    @rule(k=st.integers(0, 6))
    def restart(self, k: int) -> None:
        dead = self.dead()
        if dead:
            self.c.restart(_pick(dead, k))
            self._cap_bag()

    # -- local requests -----------------------------------------------------------------------
    @precondition(has_leader)
    @rule(k=st.integers(0, 6), count=st.integers(1, 3))
    def propose(self, k: int, count: int) -> None:
        i = _pick(self.leaders(), k)
        for _ in range(count):
            self.next_value += 1
            data = b"v%d" % self.next_value
            try:
                prop = self.c.propose(i, data)
            except RaftError as exc:
                event(f"refused: {type(exc).__name__}")
                break
            self.h.proposals.append((i, prop, data))
        self._cap_bag()

    @precondition(has_leader)
    @rule(k=st.integers(0, 6), t=st.integers(0, 6))
    def add_member(self, k: int, t: int) -> None:
        i = _pick(self.leaders(), k)
        outside = [j for j in self.ids if j not in self.c.core(i).config]
        new = _pick(outside or self.ids, t)
        self._local(i, lambda n: n.add_server(ServerConfig(new, f"node-{new}")))

    @precondition(has_leader)
    @rule(k=st.integers(0, 6), t=st.integers(0, 6))
    def remove_member(self, k: int, t: int) -> None:
        i = _pick(self.leaders(), k)
        victim = _pick(sorted(self.c.core(i).config.ids), t)
        self._local(i, lambda n: n.remove_server(victim))

    @precondition(has_leader)
    @rule(k=st.integers(0, 6), t=st.integers(0, 6))
    def yield_leadership(self, k: int, t: int) -> None:
        i = _pick(self.leaders(), k)
        voters = sorted(self.c.core(i).config.voters - {i}) or [i]
        to = _pick(voters, t)
        self._local(i, lambda n: n.yield_leadership(to))

    @rule(k=st.integers(0, 6))
    def request_leadership(self, k: int) -> None:
        followers = [i for i in self.alive() if not self.c.core(i).is_leader]
        if followers:
            self._local(_pick(followers, k), lambda n: n.request_leadership())

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def election_safety_and_leader_append_only(self) -> None:
        self.h.check_leaders()

    @invariant()
    def log_matching(self) -> None:
        self.h.check_log_matching()

    @invariant()
    def leader_completeness(self) -> None:
        self.h.record_commits()
        self.h.check_leader_completeness()

    @invariant()
    def state_machine_safety_and_acknowledged_writes(self) -> None:
        self.h.record_commits()
        self.h.check_applied()
        self.h.check_acknowledged()

    @invariant()
    def terms_and_commits_never_go_back(self) -> None:
        self.h.check_monotonic()

    @invariant()
    def bag_is_bounded(self) -> None:
        self.steps += 1
        assert len(self.c.bag) <= MAX_BAG

    # -- liveness -----------------------------------------------------------------------------
    def teardown(self) -> None:
        # Only after a run that passed (teardown also runs while a failure propagates).
        if not self.ready or sys.exc_info()[1] is not None:
            return
        committed = len(self.h.committed)
        event(f"steps (rules run): {self.steps // 10 * 10}-{self.steps // 10 * 10 + 9}")
        event(f"terms reached: {_bucket(self.h.max_term)}")
        event(f"entries committed: {_bucket(committed)}")
        event(f"writes acknowledged: {_bucket(len(self.h.acked))}")
        event(f"vote grants checked durable: {_bucket(self.checker.votes_checked)}")
        event(f"acks checked durable: {_bucket(self.checker.acks_checked)}")
        rounds = self.c.wait_leader_liveness(max_rounds=LIVENESS_ROUNDS)
        event(f"liveness rounds: {_bucket(rounds)}")
        self.h.check_all()


def _bucket(n: int) -> str:
    if n == 0:
        return "0"
    lo = 1
    while lo * 4 <= n:
        lo *= 4
    return f"{lo}-{lo * 4 - 1}"


RaftMachine.TestCase.settings = settings(settings.default, stateful_step_count=STEPS)
TestRaftMachine = RaftMachine.TestCase


# ==============================================================================================
# Regression tests: scenarios the machine (or writing it) found.
# ==============================================================================================
def _only(c: CoreCluster, keep: Callable[[Message], bool]) -> None:
    """Deliver (FIFO) what ``keep`` accepts, drop the rest, until the bag is empty."""
    while c.bag:
        if keep(c.bag[0]):
            c.deliver(0)
        else:
            c.drop(0)


def test_stale_leader_may_lack_an_entry_committed_in_a_later_term() -> None:
    """Figure 8's S5: a leader of term 2, cut off, does not hold index 2 (term 1) that the
    leader of term 3 committed.  That is legal Raft; the checker used to flag it because it
    compared with the entry's term instead of the term in which the entry was committed."""
    c = CoreCluster((1, 2, 3, 4, 5), params=RaftParams(leadership_expiry_ms=-1, pre_vote=False))
    c.elect(1)
    c.stabilize()
    c.propose(1, b"a")  # index 2, term 1: reaches node 2 only
    _only(c, lambda m: not (m.type == MsgType.APPEND_ENTRIES_REQUEST and m.dest != 2))
    c.election_timeout(5)  # term 2, votes of 3 and 4; its no-op reaches nobody
    _only(c, lambda m: m.type != MsgType.APPEND_ENTRIES_REQUEST and {m.src, m.dest} <= {3, 4, 5})
    assert c.core(5).is_leader and c.core(5).term == 2
    c.partition([5], [1, 2, 3, 4])
    c.heartbeat(1)
    c.deliver_all()  # node 1 learns of term 2 and steps down
    c.elect(1)  # term 3
    c.stabilize()
    assert c.core(1).commit == 3 and c.core(1).log.term_at(2) == 1
    c.heartbeat(5)  # the stale leader of term 2 is observed again: no violation
    assert c.core(5).is_leader and c.core(5).log.term_at(2) == 2


def test_promises_are_checked_durable() -> None:
    """check_after_persist / check_sent really look at vote grants and acknowledgements."""
    c = CoreCluster((1, 2, 3), auto_persist=False)
    checker = CountingChecker(c)
    c.checker = checker
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    assert checker.votes_checked >= 2 and checker.acks_checked >= 2
    assert c.applied_data(2) == [b"x"]



def test_leader_left_out_of_uncommitted_config_still_campaigns() -> None:
    """Dissertation §4.2.2, Figure 4.6 (found by the machine as a liveness failure): leader 1
    removes itself from {1, 2}; C_new = {2} reaches nobody and 1 steps down.  Node 2 needs
    1's vote under {1, 2} and 1 refuses it (2's log is shorter), so only 1 can lead -- yet 1,
    not in its own latest configuration, used to never campaign: the group was stuck.

    Shrunk machine run: setup(size=3, spares=1, warm=3, pre_vote=False, expiry_ms=300,
    batch=1, inflight=1); heartbeat; remove_member (node 1); stabilize(5); campaign(node 2,
    1 delivery); remove_member (leader 3 removes itself); liveness failed."""
    c = CoreCluster((1, 2), params=RaftParams(leadership_expiry_ms=-1, pre_vote=False))
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.remove_server(1))
    c.bag.clear()  # C_new reaches nobody
    assert c.core(1).config.ids == {2} and c.core(2).config.ids == {1, 2}
    c.election_timeout(2)
    c.deliver_all()
    assert c.leader() is None  # 1 stepped down and refused 2
    c.election_timeout(1)  # 1 campaigns, counting only 2's vote ...
    c.deliver_all()  # ... leads term 3, commits {2}, hands over to 2 and steps down
    assert c.checker.leader_of_term[3] == 1
    assert c.core(1).removed and not c.core(1).is_leader
    assert c.leader() == 2 and c.core(2).committed_config.ids == {2}
    c.wait_leader_liveness(max_rounds=10)


def test_grant_overtaken_by_a_newer_term_before_its_write() -> None:
    """Found by the machine (the checker was wrong): node 1 grants 2 its vote in term 1, but
    before that write completes its own timer fires and it campaigns in term 2; the write
    that finally lands holds (term 2, vote 1), and the term-1 grant leaves after it.  That
    is safe -- a durable term 2 means node 1 never votes in term 1 again -- but the checker
    demanded a durable (term 1, vote 2).

    Shrunk machine run: setup(size=4, spares=1, pre_vote=False, warm=0); crash(1);
    persist_all; election_timeout(2); persist(2); restart(1); deliver_several([0, 0]);
    campaign(node 1, 1 delivery)."""
    c = CoreCluster((1, 2, 3), params=RaftParams(pre_vote=False), auto_persist=False)
    c.election_timeout(2)
    c.persist(2)  # its boot Ready
    c.persist(2)  # (term 1, vote 2) lands; its vote requests leave
    request = next(k for k, m in enumerate(c.bag) if m.dest == 1)
    c.deliver(request)  # 1 grants; its boot Ready is still being written
    assert c.core(1).vote == 2 and c.nodes[1].pending is not None
    c.election_timeout(1)  # term 2, votes for itself
    c.persist(1)  # the boot Ready
    c.persist(1)  # (term 2, vote 1) lands, then the term-1 grant leaves
    assert c.nodes[1].durable.hard_state.term == 2
    grant = [m for m in c.bag if m.type == MsgType.REQUEST_VOTE_RESPONSE and m.src == 1]
    assert grant and grant[0].term == 1 and grant[0].accepted


@pytest.mark.parametrize("restart", [False, True], ids=["caught-up", "restarted-mid-catch-up"])
def test_member_added_back_is_not_removed_by_its_old_removal(restart: bool) -> None:
    """Found by the machine as a liveness failure: node 1 is removed, then added back; while
    catching up (one entry per append) it commits the old configuration that left it out and
    marked itself removed again -- a spurious RemovedFromCluster (the runtime then calls the
    state manager's ``leave``) and a node that never campaigns again although it is a member.
    Later the leader removed everyone else and the group was stuck.

    Shrunk machine run: setup(size=3, spares=1, warm=3, pre_vote=False, batch=1, inflight=1);
    campaign(node 1, 4 deliveries); remove_member(1); stabilize(6); election_timeout(node 2);
    calm(6); add_member(1); calm(10); remove_member(3); calm(2); remove_member(2)."""
    c = CoreCluster((1, 2, 3), params=RaftParams(max_append_entries=1))
    c.elect(2)
    c.stabilize()
    c.do(2, lambda n: n.remove_server(1))
    c.stabilize()
    assert c.core(1).removed and 1 not in c.core(2).committed_config
    c.do(2, lambda n: n.add_server(ServerConfig(1, "node-1")))
    joined = len(c.nodes[1].events)
    if restart:
        c.deliver(next(k for k, m in enumerate(c.bag) if m.dest == 1))  # the invitation
        c.crash(1)
        c.restart(1)
    c.stabilize(rounds=6)
    assert 1 in c.core(2).committed_config and 1 in c.core(1).committed_config
    assert not c.core(1).removed
    if not restart:
        assert not [e for e in c.nodes[1].events[joined:] if isinstance(e, RemovedFromCluster)]
    c.do(2, lambda n: n.remove_server(3))
    c.stabilize()
    c.do(2, lambda n: n.remove_server(2))  # hands over to 1, the last voter
    c.stabilize()
    c.wait_leader_liveness(max_rounds=10)
    assert c.leader() == 1 and c.core(1).committed_config.ids == {1}


def test_acknowledgement_overtaken_by_a_later_leader_before_its_write() -> None:
    """The checker was wrong (found by reading it against the vote case above, not by the
    machine): follower 2, with a write in progress, accepts stale leader 1's entries 2..3
    (term 1), then leader 3's conflicting entry 2 (term 2) before anything is written.  Its
    next write holds term 2 and the truncated log, and the term-1 acknowledgement of index 3
    leaves after it.  The checker demanded index 3 on disk; but the entries were replaced by
    a later leader, exactly as without a crash, so the promise is moot (and leader 1 cannot
    commit with it: any majority of term 1 meets leader 3's voters in a node that refused
    term 1 or voted only for logs holding its entries)."""
    c = CoreCluster((1, 2, 3, 4, 5), params=RaftParams(pre_vote=False, leadership_expiry_ms=-1),
                    auto_persist=False)
    c.elect(1)
    c.stabilize()
    c.partition([1, 2], [3, 4, 5])
    c.election_timeout(3)
    c.deliver_all()
    assert c.core(3).is_leader and c.core(3).term == 2
    c.heartbeat(1)
    c.deliver(next(k for k, m in enumerate(c.bag) if m.dest == 2))
    assert c.nodes[2].pending is not None  # node 2's write is in progress
    c.propose(1, b"e1")
    c.propose(1, b"e2")
    c.persist(1)
    c.persist(1)
    c.deliver(next(k for k, m in enumerate(c.bag) if m.dest == 2 and m.entries))
    assert [e.term for e in c.core(2).log.slice(1, 9)] == [1, 1, 1]
    c.cut -= {(3, 2), (2, 3)}
    c.heartbeat(3)
    c.deliver(next(k for k, m in enumerate(c.bag) if (m.src, m.dest) == (3, 2)))
    assert [e.term for e in c.core(2).log.slice(1, 9)] == [1, 2]
    c.persist(2)
    c.persist(2)  # term 2 and the truncated log land; then both acknowledgements leave
    assert any(m.type == MsgType.APPEND_ENTRIES_RESPONSE and m.term == 1 and m.next_index == 4
               for m in c.bag)
    c.deliver_all()
    assert c.core(1).commit == 1  # leader 1 did not commit e1/e2 with the stale ack
    c.wait_leader_liveness(max_rounds=10)
    assert b"e1" not in c.applied_data(3)
