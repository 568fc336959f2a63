"""The safety checker can fail: deliberately broken cores must be caught.

Each broken core is a :class:`RaftNode` subclass overriding one method (or a node factory
that mangles what it loads), plugged into :class:`CoreCluster` through ``node_factory``.  A
short deterministic scenario drives the cluster into the state the bug makes unsafe and must
raise :class:`SafetyViolation`; the same scenario with the real core must not (so the
scenario itself is legal Raft, and the checker is not simply over-eager).  The last test
runs the property-test state machine itself over broken cores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.testing.core_cluster import CoreCluster, SafetyViolation
from tests.broken_cores import (
    AcksEarly,
    AppliesEarly,
    CommitsOldTerms,
    Factory,
    PromisesEarly,
    SkipsPrevCheck,
    VotesEarly,
    forgets_vote,
    only_on,
)
from tests.raft.test_property import RaftMachine

VOTES = (MsgType.REQUEST_VOTE_REQUEST, MsgType.REQUEST_VOTE_RESPONSE)
AE_REQ = MsgType.APPEND_ENTRIES_REQUEST
AE_RESP = MsgType.APPEND_ENTRIES_RESPONSE
# No pre-vote and no check-quorum leases: the scenarios spell out every vote.
PLAIN = RaftParams(pre_vote=False, leadership_expiry_ms=-1)


def _only(c: CoreCluster, keep: Callable[[Message], bool]) -> None:
    """Deliver (FIFO) what ``keep`` accepts, drop the rest, until the bag is empty."""
    while c.bag:
        if keep(c.bag[0]):
            c.deliver(0)
        else:
            c.drop(0)


def _among(*ids: int) -> Callable[[Message], bool]:
    return lambda m: m.src in ids and m.dest in ids


# ==============================================================================================
# Scenarios
# ==============================================================================================
def figure_8(factory: Factory) -> CoreCluster:
    """Raft paper, Figure 8, with five nodes (terms shifted down by one)."""
    c = CoreCluster((1, 2, 3, 4, 5), params=dataclasses.replace(PLAIN, max_append_entries=1),
                    node_factory=factory)
    c.elect(1)
    c.stabilize()
    # (a) Leader 1 (term 1) replicates index 2 to node 2 only.
    c.propose(1, b"x")
    _only(c, _among(1, 2))
    # (b) 1 crashes; 5 wins term 2 with the votes of 3 and 4; its no-op (index 2, term 2)
    # stays on 5 alone.
    c.crash(1)
    c.election_timeout(5)
    _only(c, lambda m: m.type in VOTES and m.src != 2 and m.dest != 2)
    assert c.core(5).is_leader and c.core(5).log.term_at(2) == 2
    # (c) 5 crashes; 1 restarts and wins term 3 (after losing term 2: 3 and 4 voted for 5)
    # with the votes of 2, 3 and 4.  Its first append to 3 and to 4 (prev = (2, term 1),
    # [no-op of term 3]) is refused, so it backs up and copies index 2 (term 1) to them; its
    # no-op goes no further.  Index 2 is now on a majority, {1, 2, 3, 4}, in term 3.
    c.crash(5)
    c.restart(1)
    for _ in range(2):
        c.election_timeout(1)
        _only(c, lambda m: m.type in VOTES)
    assert c.core(1).is_leader and c.core(1).term == 3
    probed: set[int] = set()

    def first_probes_only(m: Message) -> bool:
        if m.type != AE_REQ or all(e.term != 3 for e in m.entries):
            return True
        if m.dest in (3, 4) and m.dest not in probed:
            probed.add(m.dest)
            return True
        return False

    c.heartbeat(1)  # re-sends the probes the vote-only delivery above dropped
    _only(c, first_probes_only)
    assert [c.core(i).log.term_at(2) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert [c.core(i).log.last_index for i in (2, 3, 4)] == [2, 2, 2]
    # (d) 1 crashes; 5 restarts and wins term 4 (votes of 2, 3, 4: its last term, 2, beats
    # their 1), although index 2 (term 1) may have been committed in term 3.
    c.crash(1)
    c.restart(5)
    for _ in range(2):
        c.election_timeout(5)
        _only(c, lambda m: m.type in VOTES)
    assert c.core(5).is_leader
    c.stabilize()  # 5 overwrites index 2 everywhere
    return c


def two_leaders_after_forgetting(factory: Factory) -> CoreCluster:
    """Node 2 votes for 1 in term 1, restarts, and is asked again by 3 in term 1."""
    c = CoreCluster((1, 2, 3), params=PLAIN, node_factory=factory)
    c.election_timeout(1)
    _only(c, lambda m: m.type in VOTES and _among(1, 2)(m))
    assert c.core(1).is_leader and c.core(1).term == 1
    c.bag.clear()  # 1's appends are lost
    c.crash(2)
    c.restart(2)
    c.election_timeout(3)
    _only(c, lambda m: m.type in VOTES and _among(2, 3)(m))
    return c


def append_after_mismatch(factory: Factory) -> CoreCluster:
    """Node 2 holds (2, term 1), which no leader after 1 has; leader 5 of term 2 pipelines
    (prev = (2, term 2), [y]) to it, as it does to node 3 (an earlier append lost)."""
    c = CoreCluster((1, 2, 3, 4, 5), params=dataclasses.replace(PLAIN, max_append_entries=1),
                    node_factory=factory)
    c.elect(1)
    c.stabilize()
    c.propose(1, b"x")
    _only(c, _among(1, 2))
    c.crash(1)
    c.election_timeout(5)
    _only(c, lambda m: m.src != 2 and m.dest != 2)  # 5 leads term 2; 3 and 4 follow
    c.propose(5, b"y")
    to_3 = next(m for m in c.bag if m.dest == 3 and m.type == AE_REQ and m.entries)
    assert (to_3.last_log_index, to_3.last_log_term) == (2, 2)
    c.bag[:] = [dataclasses.replace(to_3, dest=2)]
    c.deliver(0)
    return c


def apply_uncommitted(factory: Factory) -> CoreCluster:
    c = CoreCluster((1, 2, 3), node_factory=factory)
    c.elect(1)
    c.stabilize()
    c.propose(1, b"x")  # durable on 1 at once (auto_persist); not committed yet
    c.deliver_all()
    return c


def early_vote_in_a_known_term(factory: Factory) -> CoreCluster:
    """Node 2 learns term 2 durably from lagging node 5's request, which it refuses; then it
    grants up-to-date node 3's term-2 request.  A grant that leaves before (term 2, vote 3)
    is durable is caught although its term is durable."""
    c = CoreCluster((1, 2, 3, 4, 5), params=PLAIN)
    c.elect(1)
    c.stabilize()
    c.propose(1, b"x")
    _only(c, lambda m: 5 not in (m.src, m.dest))  # everyone but 5 holds x
    c.node_factory = factory  # node 2 comes back as the core under test
    c.crash(2)
    c.restart(2)
    c.election_timeout(5)
    _only(c, lambda m: (m.src, m.dest) in ((5, 2), (2, 5)))
    assert c.nodes[2].durable.hard_state.term == 2 and c.nodes[2].durable.hard_state.vote == -1
    c.election_timeout(3)
    _only(c, lambda m: (m.src, m.dest) in ((3, 2), (2, 3)) and m.type in VOTES)
    return c


def early_ack(factory: Factory) -> CoreCluster:
    """Asynchronous writes: a follower acknowledging entries before its write completes."""
    c = CoreCluster((1, 2, 3), node_factory=factory, auto_persist=False)
    c.elect(1)
    c.stabilize()
    c.propose(1, b"x")
    c.deliver_all()
    return c


Scenario = Callable[[Factory], CoreCluster]
SCENARIOS: dict[str, tuple[Scenario, Factory, str]] = {
    "figure 8 (old-term commit)": (figure_8, CommitsOldTerms, "Leader Completeness"),
    "vote forgotten on restart": (two_leaders_after_forgetting, forgets_vote,
                                  "Election Safety"),
    # Node 2 applies its own index 2 (the leader's commit index covers it) before the Log
    # Matching check sees the mixed log: either failure is the same bug.
    "no previous-entry check": (append_after_mismatch, SkipsPrevCheck,
                                "Log Matching|State Machine Safety"),
    "apply before commit": (apply_uncommitted, AppliesEarly, "beyond its commit"),
    "vote before persist": (early_vote_in_a_known_term, only_on(2, VotesEarly),
                            "granted a vote"),
    "acknowledgement before persist": (early_ack, AcksEarly, "acknowledged index"),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_broken_core_is_caught(name: str) -> None:
    scenario, broken, message = SCENARIOS[name]
    with pytest.raises(SafetyViolation, match=message):
        scenario(broken)


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_scenario_is_safe_with_the_real_core(name: str) -> None:
    scenario, _, _ = SCENARIOS[name]
    scenario(RaftNode)


# ==============================================================================================
# The state machine over broken cores
# ==============================================================================================
@pytest.mark.parametrize("broken", [AppliesEarly, PromisesEarly],
                         ids=["applies-early", "promises-early"])
def test_state_machine_catches_broken_core(broken: Factory) -> None:
    """The machine finds these within a few examples.  It also finds a forgotten vote
    ("changed its durable vote") and a skipped previous-entry check ("two different entries
    committed") after 15-80 s of examples, too slowly for a unit test; an old-term commit
    (Figure 8, four leader changes deep) it did not find in 3000 examples.  The scenarios
    above pin all of them down."""
    class Broken(RaftMachine):
        node_factory = broken

    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            Broken,
            settings=settings(max_examples=300, stateful_step_count=60, deadline=None,
                              derandomize=True, database=None, phases=[Phase.generate],
                              suppress_health_check=list(HealthCheck), print_blob=False),
        )
