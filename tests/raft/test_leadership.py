"""Who leads: NuRaft's priority elections (with target-priority decay) and leadership
transfer (thesis §3.10; NuRaft's yield_leadership / request_leadership).  One claim per test:
init, act, check.
"""

from __future__ import annotations

import pytest

from nuraft_mesg.errors import Cancelled, NotLeader
from nuraft_mesg.raft.node import FORCE_VOTE, RaftNode, Role
from nuraft_mesg.raft.types import (
    LogEntry,
    LogType,
    Message,
    MsgType,
    NotificationType,
    ServerConfig,
)
from nuraft_mesg.testing.core_cluster import CoreCluster

from .helpers import (
    ack_all,
    append_req,
    cluster,
    config,
    drain,
    elect,
    node,
    params,
)

NOTIFY = MsgType.CUSTOM_NOTIFICATION_REQUEST


def _is_takeover(m: Message) -> bool:
    return (m.type == NOTIFY and len(m.entries) == 1
            and m.entries[0].buffer == bytes([NotificationType.LEADERSHIP_TAKEOVER]))


def _timeouts_until_campaign(n: RaftNode, limit: int = 100) -> int:
    """Fire n's election timer until it sends a pre-vote; return how many firings it took."""
    for k in range(1, limit + 1):
        n.election_timeout()
        if drain(n).of_type(MsgType.PRE_VOTE_REQUEST):
            return k
    raise AssertionError(f"node {n.id} did not campaign in {limit} election timeouts")


# ---------------------------------------------------------------------------------------------
# Priority
# ---------------------------------------------------------------------------------------------


def test_priority_zero_never_campaigns() -> None:
    """NuRaft: a member with priority 0 never becomes leader, so it never starts an
    election, however long it goes without a leader."""
    n = node(2, config(priorities={2: 0}))
    for _ in range(50):
        n.election_timeout()
        out = drain(n)
        assert out.messages == []
    assert (n.role, n.term) == (Role.FOLLOWER, 0)


def test_highest_priority_wins_first() -> None:
    """NuRaft's priority election: with priorities 100/1/1, the low-priority members let
    their first timeouts pass, so the priority-100 member is elected even if it times out
    last."""
    c = cluster(priorities={1: 100, 2: 1, 3: 1})
    c.election_timeout(2)
    c.election_timeout(3)
    assert c.bag == []  # neither campaigned
    c.election_timeout(1)
    c.deliver_all()
    assert c.leader() == 1


def test_lower_priority_campaigns_after_target_priority_decays() -> None:
    """NuRaft's decay_target_priority: each election timeout without a leader lowers the
    target priority by max(10, priority_decay_percent of it), never below 1, until a
    lower-priority member may campaign.  From 100 with 20 %: 80 64 52 42 32 22 12 2 1 --
    nine decays, so the priority-1 member campaigns on its 10th timeout (and not before)."""
    n = node(2, config(priorities={1: 100, 2: 1, 3: 1}))
    assert _timeouts_until_campaign(n) == 10


def test_priority_decay_rate_is_configurable() -> None:
    """NuRaft's priority decay with priority_decay_percent=50: gaps of max(10, 50 %) give
    100 50 25 13 3 1 -- the priority-1 member campaigns on its 6th timeout."""
    n = node(2, config(priorities={1: 100, 2: 1, 3: 1}), prm=params(priority_decay_percent=50))
    assert _timeouts_until_campaign(n) == 6


def test_hearing_from_a_leader_resets_the_target_priority() -> None:
    """NuRaft: the decay restarts from the highest priority whenever a leader is known, so
    an intermittent leader does not let low-priority members campaign early."""
    n = node(2, config(priorities={1: 100, 2: 1, 3: 1}))
    for _ in range(9):
        n.election_timeout()  # target 1: the next timeout would campaign
    drain(n)
    n.step(append_req(1, 1, 2))
    drain(n)
    assert _timeouts_until_campaign(n) == 10


def test_low_priority_members_elect_a_leader_when_the_high_one_is_down() -> None:
    """NuRaft's priority decay guarantees liveness (Raft §5.2's "eventually elected"): with the
    priority-100 member crashed, the others decay their target and one of them is elected --
    not at the first timeout."""
    c = cluster(priorities={1: 100, 2: 1, 3: 1})
    c.crash(1)
    rounds = 0
    while c.leader() is None:
        rounds += 1
        assert rounds <= 30, "no leader"
        for i in (2, 3):
            c.election_timeout(i)
            c.deliver_all()
    assert c.leader() in (2, 3)
    assert rounds > 1  # not on the first timeout: the decay took its turn


def test_priority_zero_member_is_never_handed_leadership() -> None:
    """NuRaft: priority 0 never leads -- neither by yield_leadership nor by
    request_leadership."""
    c = cluster(priorities={1: 1, 2: 0, 3: 1})
    c.elect(1)
    c.stabilize()
    with pytest.raises(Cancelled):
        c.do(1, lambda n: n.yield_leadership(2))
    with pytest.raises(Cancelled):
        c.do(2, lambda n: n.request_leadership())
    assert c.do(1, lambda n: n.yield_leadership()) == 3


def test_removed_leader_does_not_hand_over_to_priority_zero() -> None:
    """NuRaft: priority 0 never leads.  A leader removing itself (thesis §4.2.2) hands over to
    a voter that may lead, not to the priority-0 member, even when that one is the most caught
    up.  (Regression: the hand-over ignored priority.)"""
    c = cluster(priorities={1: 1, 2: 0, 3: 1})
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.remove_server(1))
    c.deliver_all()
    assert c.leader() == 3
    assert not c.core(2).is_leader


def test_priority_zero_member_refuses_a_takeover_notification() -> None:
    """NuRaft: priority 0 never leads, even when told to take over (thesis §3.10's TimeoutNow):
    it refuses and stays a follower of the sender."""
    n = node(2, config(priorities={2: 0}), term=1)
    n.step(Message(NOTIFY, 1, 1, 2, entries=(
        LogEntry(1, LogType.CUSTOM, bytes([NotificationType.LEADERSHIP_TAKEOVER])),)))
    out = drain(n)
    (resp,) = out.of_type(MsgType.CUSTOM_NOTIFICATION_RESPONSE)
    assert not resp.accepted
    assert out.of_type(MsgType.REQUEST_VOTE_REQUEST) == []
    assert (n.role, n.term, n.leader_id) == (Role.FOLLOWER, 1, 1)


# ---------------------------------------------------------------------------------------------
# Leadership transfer: yield_leadership
# ---------------------------------------------------------------------------------------------


def _lagging_target_cluster() -> CoreCluster:
    """Leader 1 with entries that node 2 has not received."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.partition([1, 3], [2])
    for k in range(3):
        c.propose(1, b"p%d" % k)
    c.stabilize()
    c.heal()
    return c


def test_yield_waits_for_the_target_to_catch_up_then_it_wins_at_once() -> None:
    """Thesis §3.10: the leader stops accepting requests, brings the target's log up to date,
    then tells it to campaign (NuRaft's leadership_takeover).  The target starts an election
    at once -- its vote requests marked as forced, so the followers' leases do not refuse
    them -- and wins without any election timer firing."""
    c = _lagging_target_cluster()
    leader = c.core(1)
    assert leader.progress[2].match < leader.log.last_index
    assert c.do(1, lambda n: n.yield_leadership(2)) == 2
    assert not any(_is_takeover(m) for m in c.bag)  # target is behind: catch up first
    c.heartbeat(1)  # (the probe to node 2 was lost in the partition: the heartbeat resends)
    takeover_sent_when: list[tuple[int, int]] = []
    while c.bag:
        c.deliver(0)
        for m in c.bag:
            if _is_takeover(m) and not takeover_sent_when:
                takeover_sent_when.append((c.core(2).log.last_index, leader.log.last_index))
    assert takeover_sent_when and takeover_sent_when[0][0] == takeover_sent_when[0][1]
    assert c.leader() == 2 and c.core(2).term == 2
    assert leader.role == Role.FOLLOWER and leader.leader_id == 2
    assert [e.buffer for _, e in c.nodes[2].applied if e.type == LogType.APP] == \
        [b"p0", b"p1", b"p2"]


def test_vote_requests_of_a_transfer_are_forced() -> None:
    """Thesis §3.10: the target's RequestVote says it comes from a leadership transfer, so
    followers within their lease still grant it."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2))
    drain(n)
    n.step(Message(NOTIFY, 1, 1, 2, entries=(
        LogEntry(1, LogType.CUSTOM, bytes([NotificationType.LEADERSHIP_TAKEOVER])),)))
    out = drain(n)
    votes = out.of_type(MsgType.REQUEST_VOTE_REQUEST)
    assert sorted(m.dest for m in votes) == [1, 3]
    assert all(any(e.buffer == FORCE_VOTE for e in m.entries) for m in votes)
    assert (n.role, n.term) == (Role.CANDIDATE, 2)


def test_proposals_are_refused_during_a_transfer() -> None:
    """Thesis §3.10: "the prior leader stops accepting new client requests" during the
    transfer: propose raises NotLeader (leader unknown, -1); so do membership changes."""
    c = _lagging_target_cluster()
    c.do(1, lambda n: n.yield_leadership(2))
    with pytest.raises(NotLeader) as exc:
        c.propose(1, b"x")
    assert exc.value.leader_id == -1
    with pytest.raises(NotLeader):
        c.do(1, lambda n: n.remove_server(3))


def test_transfer_times_out_and_the_leader_resumes() -> None:
    """Thesis §3.10: "if the transfer does not complete within an election timeout, the
    prior leader aborts the transfer and resumes accepting client requests".  With a 600 ms
    transfer timeout at a 100 ms heartbeat, the 7th heartbeat aborts it."""
    c = cluster(params=params(leadership_transfer_timeout_ms=600))
    c.elect(1)
    c.stabilize()
    c.crash(2)
    c.propose(1, b"a")
    c.stabilize()
    c.do(1, lambda n: n.yield_leadership(2))
    for _ in range(6):
        c.heartbeat(1)
        c.deliver_all()
    assert c.core(1).transferring_leadership
    c.heartbeat(1)
    c.deliver_all()
    leader = c.core(1)
    assert not leader.transferring_leadership and leader.is_leader and leader.term == 1
    c.propose(1, b"b")
    c.stabilize()
    assert c.applied_data(3) == [b"a", b"b"]


def test_yield_to_an_ineligible_target_is_cancelled() -> None:
    """Thesis §3.10 / NuRaft yield_leadership: only a voter other than the leader, with
    priority > 0, can take over; otherwise the transfer is cancelled and never starts."""
    n = node(1, config((1, 2, 3), learners=(4,), priorities={3: 0}))
    elect(n)
    ack_all(n, [2, 3, 4])
    for target in (1, 3, 4, 9):
        with pytest.raises(Cancelled):
            n.yield_leadership(target)
    assert not n.transferring_leadership


def test_yield_without_target_picks_the_highest_priority_voter() -> None:
    """NuRaft yield_leadership without a target picks the member most fit to lead: the
    highest-priority voter (not the lowest id)."""
    n = node(1, config(priorities={1: 10, 2: 1, 3: 5}))
    elect(n)
    ack_all(n, [2, 3])
    assert n.yield_leadership() == 3


def test_yield_on_a_follower_raises_not_leader() -> None:
    """Thesis §3.10: only the leader can transfer leadership; a follower raises NotLeader
    naming the leader it knows."""
    n = node(2, term=1)
    n.step(append_req(1, 1, 2))
    drain(n)
    with pytest.raises(NotLeader) as exc:
        n.yield_leadership()
    assert exc.value.leader_id == 1


# ---------------------------------------------------------------------------------------------
# Leadership transfer: request_leadership
# ---------------------------------------------------------------------------------------------


def test_follower_requests_leadership_and_gets_it() -> None:
    """NuRaft's request_leadership: a follower asks the leader to resign in its favour
    (request_resignation); the leader yields to it and it wins without timers."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.do(3, lambda n: n.request_leadership())
    (req,) = c.bag
    assert (req.type, req.src, req.dest) == (NOTIFY, 3, 1)
    c.deliver_all()
    assert c.leader() == 3 and c.core(3).term == 2
    assert c.core(1).leader_id == 3


def test_request_leadership_needs_a_known_leader_and_eligibility() -> None:
    """NuRaft request_leadership: the request goes to the known leader, so without one it is
    cancelled; a learner (never in a quorum) may not ask."""
    n = node(2, term=1)
    with pytest.raises(Cancelled):
        n.request_leadership()  # no leader known
    learner = node(3, config((1, 2), learners=(3,)), term=1)
    learner.step(append_req(1, 1, 3))
    drain(learner)
    with pytest.raises(Cancelled):
        learner.request_leadership()


def test_no_config_change_while_transferring() -> None:
    """Thesis §3.10 / §4.1: a leader handing over accepts no configuration change either (it
    may no longer lead when the entry would commit)."""
    n = node(1)
    elect(n)
    ack_all(n, [2, 3])
    n.yield_leadership(2)
    with pytest.raises(NotLeader):
        n.add_server(ServerConfig(4))
    with pytest.raises(NotLeader):
        n.update_server(ServerConfig(2, priority=7))
    assert n.config.get(2) == config().get(2)
