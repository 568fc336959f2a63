"""Core-level regression tests for bugs the live-group harness found (CoreCluster, no trio).

Each test names the shrunk machine run that found it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import ClusterConfig, Message, MsgType, ServerConfig
from nuraft_mesg.testing.core_cluster import CoreCluster, DurableState


@pytest.mark.parametrize("restart", [False, True], ids=["caught-up", "restarted-mid-catch-up"])
def test_creator_added_back_with_an_empty_log_does_not_elect_itself(restart: bool) -> None:
    """Found by RaftClusterMachine (live groups): g1's creator n1 was removed (and, as an
    application does, destroyed its state), then added back with an empty log.  While
    catching up it appended index 1 -- the group's first configuration, which lists only
    n1 -- and, configurations taking effect on append, took itself for the only voter: it
    elected itself (term 3) and appended its own entry at index 2, where the group had
    committed another (two leaders committing different entries at one index).  The join
    adopted the leader's configuration but rebased it at the log boundary (index 0), so the
    replayed history overrode it.

    Shrunk run: setup(seed=901, 4 nodes, 1 group on n1..n3); partition(n1 | others);
    remove_member(n1); degrade(drop=0.05); remove_member(n3); add_member(n1); heal().
    """
    c = CoreCluster((1, 2, 3), members=[1], params=RaftParams(max_append_entries=1))
    c.elect(1)
    c.stabilize()
    for new in (2, 3):
        srv = ServerConfig(new, f"node-{new}")
        c.do(1, lambda n, srv=srv: n.add_server(srv))  # type: ignore[misc]
        c.stabilize(rounds=6)
    assert c.core(1).committed_config.ids == {1, 2, 3}
    c.do(1, lambda n: n.remove_server(1))  # hands leadership over, then steps down
    c.stabilize(rounds=6)
    leader = c.leader()
    assert leader in (2, 3) and 1 not in c.core(leader).committed_config
    # n1 loses everything and comes back as a fresh replica (its initial configuration lists
    # only itself, as a new state manager's does), then is invited again.
    c.crash(1)
    c.nodes[1].durable = DurableState(config=ClusterConfig((ServerConfig(1, "node-1"),)))
    for memory in (c.checker.last_term, c.checker.last_durable_term):
        memory.pop(1, None)  # a new replica: its term starts again from 0
    c.restart(1)
    c.do(leader, lambda n: n.add_server(ServerConfig(1, "node-1")))
    # Deliver until n1 holds index 1 (the creator's one-member configuration), and no more.
    while c.core(1).log.last_index < 1:
        assert c.bag, "n1 was never sent index 1"
        c.deliver(0)
    assert c.core(1).log.last_index == 1
    if restart:
        c.crash(1)
        c.restart(1)
    for _ in range(3):
        c.election_timeout(1)  # the checker raises if n1 leads without the committed log
        assert not c.core(1).is_leader
        assert not [m for m in c.bag if m.src == 1 and m.type in (
            MsgType.PRE_VOTE_REQUEST, MsgType.REQUEST_VOTE_REQUEST)]
    c.stabilize(rounds=8)
    assert 1 in c.core(leader).committed_config and c.leader() == leader
    c.wait_leader_liveness(max_rounds=10)


def _only(c: CoreCluster, keep: Callable[[Message], bool]) -> None:
    """Deliver (FIFO) what ``keep`` accepts, drop the rest, until the bag is empty."""
    while c.bag:
        if keep(c.bag[0]):
            c.deliver(0)
        else:
            c.drop(0)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_member_added_back_empty_does_not_vote_for_a_stale_config(pre_vote: bool) -> None:
    """Found by RaftClusterMachine (live groups): n3 was removed while cut off and never
    heard of it; n2 was removed too, destroyed its state, and was added back.  While n2
    caught up from an empty log, n3 campaigned in its stale configuration {n1, n2, n3}: n2,
    whose empty log any candidate's beats, granted the pre-vote and the vote, and n3 led
    term 5 with a majority of a configuration the group had left -- without the entries
    committed since (Leader Completeness; followers then refused to overwrite them).
    Raft's single-server-change argument needs every member of the old majority to keep
    its log; a member re-added with a wiped log breaks it.  Until a joiner holds the log up
    to the configuration it adopted from its leader, it cannot tell whether a candidate is
    up to date, so it refuses (pre-)votes.

    Shrunk run (partly): setup(seed=18575, 3 nodes, 3 groups); remove_member(g3, n3) over a
    lossy n2<->n3 link; remove_member(g3, n2); add_member(g3, n2); heal(); ... ."""
    c = CoreCluster((1, 2, 3), params=RaftParams(pre_vote=pre_vote, leadership_expiry_ms=-1))
    c.elect(1)
    c.stabilize()
    c.isolate(3)
    c.do(1, lambda n: n.remove_server(3))
    c.stabilize()
    c.do(1, lambda n: n.remove_server(2))
    c.stabilize()
    assert c.core(1).committed_config.ids == {1} and 3 in c.core(3).config
    # n2 destroys its state (as an application does on leave) and is invited again.
    c.crash(2)
    c.nodes[2].durable = DurableState(config=ClusterConfig((ServerConfig(2, "node-2"),)))
    for memory in (c.checker.last_term, c.checker.last_durable_term):
        memory.pop(2, None)
    c.restart(2)
    c.heal()
    c.do(1, lambda n: n.add_server(ServerConfig(2, "node-2")))
    _only(c, lambda m: m.type in (MsgType.JOIN_CLUSTER_REQUEST, MsgType.JOIN_CLUSTER_RESPONSE))
    assert c.core(2).log.last_index == 0
    # Stale n3 campaigns; only n2 hears it.
    for _ in range(2):
        c.election_timeout(3)
        _only(c, lambda m: {m.src, m.dest} == {2, 3})
        assert not c.core(3).is_leader
    # The group goes on (without pre-vote, n3's higher term may depose n1 first: the known
    # disruption by removed servers, a matter of liveness); n3 never wins, as n2 catches up.
    c.wait_leader_liveness(max_rounds=20)
    assert not c.core(3).is_leader


def test_a_lost_invitation_does_not_make_a_member_that_left() -> None:
    """Found by RaftClusterMachine (thorough profile, as a liveness failure): n1 was removed
    while down, and added back while still down, so the leader's invitation (join_cluster)
    was lost.  The leader replicated to the would-be joiner anyway, on every heartbeat.  n1
    restarted from its old disk, caught up through those appends and -- never having
    accepted an invitation -- took its committed removal for news: RemovedFromCluster, and
    the application left the group (destroying it).  Meanwhile the leader took the same
    acknowledgements for a caught-up joiner and committed a configuration with n1: a member
    that no longer hosted the group (NOT_FOUND for ever).  A joiner is replicated to only
    once it has accepted the invitation.

    Shrunk run: setup(seed=355, 4 nodes, 1 group on n1..n3); add_member(n4); crash(n1);
    restart(n1); partition; crash(n1); remove_member(n1); add_member(n1); teardown (heal,
    restart n1)."""
    c = CoreCluster((1, 2, 3), params=RaftParams(max_append_entries=1))
    c.elect(2)
    c.stabilize()
    c.crash(1)
    c.do(2, lambda n: n.remove_server(1))
    c.stabilize()
    assert c.core(2).committed_config.ids == {2, 3}
    c.do(2, lambda n: n.add_server(ServerConfig(1, "node-1")))
    c.deliver_all()  # the invitation is lost: n1 is down
    c.restart(1)
    for _ in range(12):
        c.stabilize(rounds=1)
        if 1 in c.core(2).committed_config:
            assert not c.core(1).removed, "a member of the committed configuration left"
    # Invited for real this time, n1 joins and stays.
    while c.core(2).joining_server is not None:  # the first attempt times out
        c.heartbeat(2)
        c.deliver_all()
    if 1 not in c.core(2).config:
        c.do(2, lambda n: n.add_server(ServerConfig(1, "node-1")))
    c.stabilize(rounds=10)
    assert 1 in c.core(2).committed_config and not c.core(1).removed
