"""Leader election (Raft §5.2, §5.4.1), pre-vote (Raft thesis §9.6) and check-quorum with
follower leases (thesis §6.2, §9.6), one claim per test.

Each test: init (a node from given durable state, or a CoreCluster), act (step / timeout /
advance), check (the messages in the next Ready, the node's state).
"""

from __future__ import annotations

import pytest

from nuraft_mesg.raft.node import FORCE_VOTE, Role
from nuraft_mesg.raft.ready import BecomeFollower, BecomeLeader
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, LogType, Message, MsgType

from .helpers import (
    ack_all,
    append_req,
    cluster,
    config,
    drain,
    elect,
    flush,
    log_terms,
    node,
    of_type,
    params,
    vote_req,
)

PRE_REQ = MsgType.PRE_VOTE_REQUEST
PRE_RESP = MsgType.PRE_VOTE_RESPONSE
VOTE_REQ = MsgType.REQUEST_VOTE_REQUEST
VOTE_RESP = MsgType.REQUEST_VOTE_RESPONSE


def _grant(kind: MsgType, term: int, src: int, dest: int = 1, ok: bool = True) -> Message:
    return Message(kind, term, src, dest, accepted=ok)


# ---------------------------------------------------------------------------------------------
# Randomized election timeouts
# ---------------------------------------------------------------------------------------------


def _timeouts(seed: int, low: int = 200, high: int = 400, rounds: int = 60) -> list[int]:
    n = node(2, prm=params(election_timeout_ms=(low, high)), seed=seed, boot=False)
    values = [t.timeout_ms for t in drain(n).election_timers]
    for _ in range(rounds):
        n.election_timeout()
        values += [t.timeout_ms for t in drain(n).election_timers]
    return values


def test_election_timeouts_are_randomized_within_bounds() -> None:
    """Raft §5.2: "election timeouts are chosen randomly from a fixed interval" so that split
    votes are rare.  Every election timer the core arms lies within
    RaftParams.election_timeout_ms, and the values vary."""
    values = _timeouts(seed=7, low=300, high=700)
    assert len(values) == 61  # the boot timer, then one per timeout (re-armed by pre-vote)
    assert all(300 <= v <= 700 for v in values)
    assert len(set(values)) > 20


def test_election_timeouts_are_reproducible_from_the_seeded_rng() -> None:
    """Raft §5.2's randomness comes only from the rng the core is handed (sans-IO): same seed,
    same timeouts; another seed, other timeouts."""
    assert _timeouts(seed=3) == _timeouts(seed=3)
    assert _timeouts(seed=3) != _timeouts(seed=4)


def test_a_booted_node_is_a_follower_waiting_an_election_timeout() -> None:
    """Raft §5.2: "When servers start up, they begin as followers" and campaign only after an
    election timeout; no heartbeat timer runs on a follower."""
    n = node(1, boot=False)
    rd = n.ready()
    assert n.role == Role.FOLLOWER
    assert rd.election_timer is not None and 200 <= rd.election_timer.timeout_ms <= 400
    assert rd.heartbeat_timer is None
    assert rd.messages == [] and rd.messages_after_persist == []


# ---------------------------------------------------------------------------------------------
# Pre-vote
# ---------------------------------------------------------------------------------------------


def test_timeout_starts_a_pre_vote_without_bumping_the_term() -> None:
    """Thesis §9.6 (pre-vote, on by default): on timeout a follower first asks whether it
    could win, for term + 1, without incrementing its own term or voting.  A pre-vote
    promises nothing, so the requests may leave before any fsync."""
    n = node(1, term=3, entries=log_terms(1, 2, 3))
    n.election_timeout()
    rd = flush(n)
    pre = of_type(rd.messages, PRE_REQ)
    assert sorted(m.dest for m in pre) == [2, 3]
    assert all((m.term, m.last_log_index, m.last_log_term) == (4, 3, 3) for m in pre)
    assert of_type(rd.messages_after_persist, VOTE_REQ) == []
    assert rd.hard_state is None
    assert (n.term, n.vote, n.role) == (3, -1, Role.PRE_CANDIDATE)


def test_pre_vote_quorum_starts_the_real_election() -> None:
    """Thesis §9.6: only once a majority would grant its vote does a pre-candidate increment
    its term, vote for itself and send RequestVote (Raft §5.2)."""
    n = node(1, term=3)
    n.election_timeout()
    flush(n)
    n.step(_grant(PRE_RESP, 4, 2))
    rd = flush(n)
    assert (n.role, n.term, n.vote) == (Role.CANDIDATE, 4, 1)
    assert rd.hard_state == HardState(4, 1, 0)
    assert sorted(m.dest for m in of_type(rd.messages_after_persist, VOTE_REQ)) == [2, 3]


def test_partitioned_node_does_not_raise_its_term() -> None:
    """Thesis §9.6: with pre-vote, a server cut off from the majority keeps timing out but
    never increments its term, so rejoining does not depose the healthy leader."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.isolate(3)
    for _ in range(10):
        c.election_timeout(3)
        c.deliver_all()
    assert c.core(3).term == 1
    c.heal()
    c.stabilize()
    assert c.leader() == 1 and c.core(1).term == 1
    assert c.core(3).leader_id == 1


def test_without_pre_vote_a_partitioned_node_disrupts_the_leader_on_rejoin() -> None:
    """The contrast that motivates pre-vote (thesis §9.6): with pre_vote=False (and no
    check-quorum lease) each timeout increments the term, and the rejoining node's higher
    term forces the leader to step down."""
    c = cluster(params=params(pre_vote=False, leadership_expiry_ms=-1))
    c.elect(1)
    c.stabilize()
    c.isolate(3)
    for _ in range(10):
        c.election_timeout(3)
        c.deliver_all()
    assert c.core(3).term == 11
    c.heal()
    c.heartbeat(1)
    c.deliver_all()
    assert c.core(1).term >= 11
    assert not (c.core(1).is_leader and c.core(1).term == 1)


def test_pre_vote_does_not_change_the_voters_term_or_vote() -> None:
    """Thesis §9.6: granting a pre-vote changes nothing on the voter: term, vote and
    HardState stay as they were; the grant carries the pre-candidate's future term."""
    n = node(2, term=1, vote=1, entries=log_terms(1))
    n.step(vote_req(2, 3, 2, last_term=1, last_index=1, pre=True))
    rd = flush(n)
    (resp,) = of_type(rd.messages + rd.messages_after_persist, PRE_RESP)
    assert resp.accepted and resp.term == 2 and resp.dest == 3
    assert (n.term, n.vote) == (1, 1)
    assert rd.hard_state is None


def test_pre_vote_refused_to_a_less_up_to_date_log() -> None:
    """Thesis §9.6 applies the §5.4.1 up-to-date check to pre-votes too."""
    n = node(2, term=2, entries=log_terms(1, 2))
    n.step(vote_req(3, 3, 2, last_term=1, last_index=5, pre=True))
    (resp,) = of_type(flush(n).messages_after_persist, PRE_RESP)
    assert not resp.accepted
    assert n.term == 2


def test_pre_vote_refused_for_a_term_not_above_ours() -> None:
    """Thesis §9.6 / Raft §5.1: a pre-vote for a term the voter has already reached could never
    win, so it is refused (with the voter's term)."""
    n = node(2, term=5)
    n.step(vote_req(5, 3, 2, pre=True))
    (resp,) = of_type(flush(n).messages_after_persist, PRE_RESP)
    assert not resp.accepted and resp.term == 5


def test_pre_candidate_adopts_a_higher_term_from_a_refusal() -> None:
    """Raft §5.1: a server that learns of a higher term adopts it and reverts to follower --
    also from a pre-vote refusal, so that a stale node catches up its term."""
    n = node(1, term=2)
    n.election_timeout()
    flush(n)
    n.step(_grant(PRE_RESP, 7, 2, ok=False))
    assert (n.role, n.term) == (Role.FOLLOWER, 7)


# ---------------------------------------------------------------------------------------------
# Candidates and votes (Raft §5.2, §5.4.1)
# ---------------------------------------------------------------------------------------------


def test_single_voter_wins_only_once_its_vote_is_durable() -> None:
    """Thesis §3.8: a candidate's vote for itself counts only once its term and vote are on
    disk.  A one-voter group is a candidate until advance() acknowledges the HardState."""
    n = node(1, config((1,)))
    n.election_timeout()
    rd = n.ready()
    assert n.role == Role.CANDIDATE
    assert rd.hard_state == HardState(1, 1, 0)
    n.advance(rd)
    assert n.is_leader
    assert BecomeLeader(1) in flush(n).events


def test_peer_grant_before_own_vote_is_durable_is_not_enough() -> None:
    """Thesis §3.8: with three voters, one peer's grant plus an unpersisted self-vote is not a
    majority; the candidate becomes leader when its own vote becomes durable."""
    n = node(1)
    n.election_timeout()
    flush(n)
    n.step(_grant(PRE_RESP, 1, 2))
    rd = n.ready()  # term 1 / vote 1 handed to storage, not yet durable
    assert rd.hard_state == HardState(1, 1, 0)
    n.step(_grant(VOTE_RESP, 1, 2))
    assert n.role == Role.CANDIDATE
    n.advance(rd)
    assert n.is_leader


def test_vote_requests_leave_only_after_persisting_term_and_vote() -> None:
    """Thesis §3.8: a RequestVote names a term the candidate must not forget, so it sits in
    Ready.messages_after_persist next to the HardState that records it."""
    n = node(1, prm=params(pre_vote=False))
    n.election_timeout()
    rd = flush(n)
    assert of_type(rd.messages, VOTE_REQ) == []
    reqs = of_type(rd.messages_after_persist, VOTE_REQ)
    assert sorted(m.dest for m in reqs) == [2, 3]
    assert rd.hard_state == HardState(1, 1, 0)


def test_vote_granted_to_up_to_date_candidate_and_persisted_first() -> None:
    """Raft §5.2/§5.4.1: a follower grants its vote for a newer term to a candidate whose log
    is at least as up to date, records the vote durably and answers after the fsync."""
    n = node(2, term=1, entries=log_terms(1))
    n.step(vote_req(2, 3, 2, last_term=1, last_index=1))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, VOTE_RESP)
    assert resp.accepted and resp.term == 2 and resp.dest == 3
    assert rd.hard_state == HardState(2, 3, 0)
    assert of_type(rd.messages, VOTE_RESP) == []
    assert rd.election_timer is not None and not rd.election_timer.stop


def test_at_most_one_vote_per_term() -> None:
    """Raft §5.2: "each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis".  A repeated request from the same candidate is granted
    again (the first answer may have been lost)."""
    n = node(2, term=1)
    n.step(vote_req(2, 3, 2))
    n.step(vote_req(2, 1, 2))
    n.step(vote_req(2, 3, 2))
    answers = [(m.dest, m.accepted) for m in of_type(flush(n).messages_after_persist, VOTE_RESP)]
    assert answers == [(3, True), (1, False), (3, True)]
    assert n.vote == 3


def test_vote_survives_restart() -> None:
    """Raft §5.2 and Figure 2: votedFor is persistent state; after a restart the node still
    refuses a second candidate in the same term."""
    n = node(2, term=2, vote=3)
    n.step(vote_req(2, 1, 2))
    (resp,) = of_type(flush(n).messages_after_persist, VOTE_RESP)
    assert not resp.accepted


@pytest.mark.parametrize(
    ("last_term", "last_index", "granted"),
    [
        (1, 10, False),  # older last term, however long
        (2, 2, False),  # same last term, shorter
        (2, 3, True),  # same last term, same length
        (2, 4, True),  # same last term, longer
        (3, 1, True),  # newer last term, however short
    ],
)
def test_vote_requires_an_up_to_date_log(last_term: int, last_index: int, granted: bool) -> None:
    """Raft §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of
    the candidate" -- compare last terms, then lengths.  Voter log terms: 1 1 2."""
    n = node(2, term=2, entries=log_terms(1, 1, 2))
    n.step(vote_req(3, 3, 2, last_term=last_term, last_index=last_index))
    (resp,) = of_type(flush(n).messages_after_persist, VOTE_RESP)
    assert resp.accepted is granted
    assert n.vote == (3 if granted else -1)


def test_higher_term_is_adopted_even_when_the_vote_is_refused() -> None:
    """Raft §5.1: "If a server receives a request with a stale term number" it rejects it;
    one with a newer term makes it update its term, whatever it answers."""
    n = node(2, term=2, entries=log_terms(1, 2))
    n.step(vote_req(5, 3, 2, last_term=1, last_index=9))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, VOTE_RESP)
    assert not resp.accepted and resp.term == 5
    assert rd.hard_state == HardState(5, -1, 0)


def test_vote_request_with_stale_term_is_refused_with_our_term() -> None:
    """Raft §5.1: a request with a stale term is rejected, and the reply carries the current
    term so the sender updates itself."""
    n = node(2, term=4)
    n.step(vote_req(3, 3, 2))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, VOTE_RESP)
    assert (resp.accepted, resp.term) == (False, 4)
    assert n.vote == -1 and rd.hard_state is None


def test_candidate_steps_down_on_a_higher_term_response() -> None:
    """Raft §5.1: a candidate that sees a higher term reverts to follower in that term."""
    n = node(1, prm=params(pre_vote=False))
    n.election_timeout()
    flush(n)
    n.step(_grant(VOTE_RESP, 3, 2, ok=False))
    assert (n.role, n.term, n.vote) == (Role.FOLLOWER, 3, -1)


def test_candidate_returns_to_follower_when_a_majority_refuses() -> None:
    """Raft §5.2: a candidate that cannot win waits for the next timeout as a follower."""
    n = node(1, prm=params(pre_vote=False))
    n.election_timeout()
    flush(n)
    n.step(_grant(VOTE_RESP, 1, 2, ok=False))
    assert n.role == Role.CANDIDATE  # one refusal of three: still possible
    n.step(_grant(VOTE_RESP, 1, 3, ok=False))
    assert (n.role, n.term) == (Role.FOLLOWER, 1)


def test_candidate_yields_to_a_leader_of_its_term() -> None:
    """Raft §5.2: "If the leader's term ... is at least as large as the candidate's current
    term, then the candidate recognizes the leader as legitimate and returns to follower"."""
    n = node(1, prm=params(pre_vote=False))
    n.election_timeout()
    flush(n)
    n.step(append_req(1, 2, 1))
    rd = flush(n)
    assert (n.role, n.leader_id, n.term) == (Role.FOLLOWER, 2, 1)
    assert BecomeFollower(1, 2) in rd.events
    (resp,) = of_type(rd.messages_after_persist, MsgType.APPEND_ENTRIES_RESPONSE)
    assert resp.accepted


def test_learner_votes_do_not_count() -> None:
    """NuRaft learners are outside every quorum: with voters {1, 2} and learner 3, a grant
    from the learner does not elect the candidate, and it is not even asked."""
    n = node(1, config((1, 2), learners=(3,)), prm=params(pre_vote=False))
    n.election_timeout()
    rd = flush(n)
    assert [m.dest for m in of_type(rd.messages_after_persist, VOTE_REQ)] == [2]
    n.step(_grant(VOTE_RESP, 1, 3))
    assert n.role == Role.CANDIDATE
    n.step(_grant(VOTE_RESP, 1, 2))
    assert n.is_leader


def test_learner_never_campaigns() -> None:
    """NuRaft: learners replicate the log but never start an election."""
    n = node(3, config((1, 2), learners=(3,)))
    for _ in range(5):
        n.election_timeout()
        rd = flush(n)
        assert rd.messages == [] and rd.messages_after_persist == []
        assert rd.election_timer is not None and not rd.election_timer.stop
    assert (n.role, n.term) == (Role.FOLLOWER, 0)


# ---------------------------------------------------------------------------------------------
# Becoming leader: the no-op
# ---------------------------------------------------------------------------------------------


def test_new_leader_appends_a_config_no_op_and_starts_heartbeats() -> None:
    """Raft §8 / thesis §6.4: a new leader appends an entry of its own term at once.  NuRaft's
    no-op is a CONFIG entry re-appending the current configuration.  The leader arms its
    heartbeat timer, stops its election timer, and sends the entry to every follower."""
    n = node(1, term=1, entries=log_terms(1, 1))
    n.election_timeout()
    n.step(_grant(PRE_RESP, 2, 2))
    rd = n.ready()
    n.advance(rd)
    n.step(_grant(VOTE_RESP, 2, 2))
    rd = flush(n)
    assert BecomeLeader(2) in rd.events
    assert rd.first_index == 3 and len(rd.entries) == 1
    noop = rd.entries[0]
    assert (noop.term, noop.type) == (2, LogType.CONFIG)
    assert ClusterConfig.decode(noop.buffer).servers == config().servers
    assert rd.heartbeat_timer is not None and rd.heartbeat_timer.timeout_ms == 100
    assert rd.election_timer is not None and rd.election_timer.stop
    appends = of_type(rd.messages, MsgType.APPEND_ENTRIES_REQUEST)
    assert sorted(m.dest for m in appends) == [2, 3]
    assert all(m.entries and m.entries[-1] == noop for m in appends)


def test_committing_the_no_op_commits_earlier_term_entries() -> None:
    """Raft §5.4.2: entries of earlier terms are never committed by counting replicas, but
    once an entry of the current term commits, every entry before it is committed too.
    The leader of term 2 holds entries 1-2 of term 1 and its no-op at 3."""
    n = node(1, term=1, entries=log_terms(1, 1))
    elect(n)
    assert n.term == 2 and n.log.last_index == 3
    n.step(Message(MsgType.APPEND_ENTRIES_RESPONSE, 2, 2, 1, next_index=3, accepted=True))
    assert n.commit == 0  # 1..2 are on a majority, but are of term 1
    n.step(Message(MsgType.APPEND_ENTRIES_RESPONSE, 2, 2, 1, next_index=4, accepted=True))
    assert n.commit == 3
    assert [c.index for c in drain(n).committed] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Check-quorum and leases (thesis §6.2, §9.6)
# ---------------------------------------------------------------------------------------------


def test_leader_steps_down_without_quorum_after_leadership_expiry() -> None:
    """Thesis §6.2 (NuRaft's leadership expiry): a leader that hears from no majority for
    leadership_expiry_ms steps down.  500 ms at a 100 ms heartbeat = the 5th heartbeat."""
    n = node(1, prm=params(leadership_expiry_ms=500))
    elect(n)
    for _ in range(4):
        n.heartbeat_timeout()
        assert n.is_leader
    n.heartbeat_timeout()
    rd = flush(n)
    assert n.role == Role.FOLLOWER and n.term == 1
    assert BecomeFollower(1, -1) in rd.events
    assert rd.heartbeat_timer is not None and rd.heartbeat_timer.stop
    assert rd.election_timer is not None and not rd.election_timer.stop


def test_leadership_expiry_counts_from_the_last_answer() -> None:
    """NuRaft's leadership expiry: the leader steps down once no majority has answered for
    leadership_expiry -- measured from the last answer, not in fixed windows (which could let
    a deposed leader linger for almost twice the expiry).  Followers answer the first six
    heartbeats, then fall silent: with a 5-tick expiry the leader steps down 5 or 6 ticks
    later (the answer came somewhere within the 6th interval), never 9."""
    n = node(1, prm=params(leadership_expiry_ms=500))
    elect(n)
    for _ in range(6):
        n.heartbeat_timeout()
        drain(n)
        n.step(Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 2, 1, next_index=2, accepted=True))
    silent_ticks = 0
    while n.is_leader and silent_ticks < 50:
        n.heartbeat_timeout()
        silent_ticks += 1
    assert 5 <= silent_ticks <= 6


def test_default_leadership_expiry_is_twenty_heartbeats() -> None:
    """NuRaft's default leadership expiry is 20 heartbeats."""
    n = node(1)
    elect(n)
    for _ in range(19):
        n.heartbeat_timeout()
    assert n.is_leader
    n.heartbeat_timeout()
    assert not n.is_leader


def test_leader_hearing_from_a_quorum_keeps_leading() -> None:
    """Thesis §6.2: one follower's answers plus the leader itself are a majority of three."""
    n = node(1, prm=params(leadership_expiry_ms=300))
    elect(n)
    for _ in range(30):
        n.heartbeat_timeout()
        drain(n)
        n.step(Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, 2, 1, next_index=2, accepted=True))
    assert n.is_leader


def test_negative_leadership_expiry_disables_check_quorum() -> None:
    """Thesis §6.2 is optional: a negative leadership_expiry_ms disables check-quorum, and a
    leader that hears from no one keeps leading."""
    n = node(1, prm=params(leadership_expiry_ms=-1))
    elect(n)
    for _ in range(100):
        n.heartbeat_timeout()
    assert n.is_leader


def test_follower_with_live_leader_refuses_pre_votes_and_votes() -> None:
    """Thesis §6.2/§9.6 (check-quorum's lease): a follower that heard from its leader within
    the election timeout refuses pre-votes and votes, and does not even adopt the higher term,
    so a disruptive server cannot depose a live leader."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2))
    flush(n)
    n.step(vote_req(2, 3, 2, pre=True))
    n.step(vote_req(2, 3, 2))
    rd = flush(n)
    answers = [(m.type, m.accepted) for m in rd.messages_after_persist]
    assert answers == [(PRE_RESP, False), (VOTE_RESP, False)]
    assert (n.term, n.vote, n.leader_id) == (1, -1, 1)


def test_lease_ends_when_the_election_timer_fires() -> None:
    """Thesis §6.2/§9.6: the lease lasts one election timeout; once the timer fired without
    word from the leader, the follower votes again."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2))
    flush(n)
    n.election_timeout()
    drain(n)
    n.step(vote_req(2, 3, 2))
    (resp,) = of_type(flush(n).messages_after_persist, VOTE_RESP)
    assert resp.accepted and n.vote == 3


def test_leadership_transfer_vote_bypasses_the_lease() -> None:
    """Thesis §3.10: a vote request sent on the leader's behalf (leadership transfer) carries
    a force flag and is granted despite the lease."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2))
    flush(n)
    n.step(vote_req(2, 3, 2, entries=(LogEntry(2, LogType.CUSTOM, FORCE_VOTE),)))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, VOTE_RESP)
    assert resp.accepted
    assert rd.hard_state == HardState(2, 3, 0)


def test_leader_ignores_vote_requests_while_check_quorum_is_on() -> None:
    """Thesis §6.2: the leader itself is within its lease: a higher-term vote request from a
    disruptive server is refused and the leader keeps its term."""
    n = node(1)
    elect(n)
    ack_all(n, [2, 3])
    n.step(vote_req(5, 3, 1, last_term=1, last_index=9))
    rd = flush(n)
    (resp,) = of_type(rd.messages_after_persist, VOTE_RESP)
    assert not resp.accepted
    assert n.is_leader and n.term == 1


def test_without_check_quorum_a_follower_grants_despite_a_live_leader() -> None:
    """The lease is part of check-quorum: with leadership expiry disabled, plain Raft §5.2
    applies and the follower votes for a newer term."""
    n = node(2, term=1, prm=params(leadership_expiry_ms=-1))
    n.step(append_req(1, 1, 2))
    flush(n)
    n.step(vote_req(2, 3, 2))
    (resp,) = of_type(flush(n).messages_after_persist, VOTE_RESP)
    assert resp.accepted and n.term == 2
