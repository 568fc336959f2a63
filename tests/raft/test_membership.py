"""Membership changes (Raft thesis §4.1-§4.2.2, one server at a time), NuRaft's join (catch-up
before the configuration entry), learners and promotion, removal of followers and of the
leader, and the external add/remove_server requests.  One claim per test: init, act, check.
"""

from __future__ import annotations

import pytest

from nuraft_mesg.errors import (
    BadRequest,
    ConfigChanging,
    NotLeader,
    ResultCode,
    ServerAlreadyExists,
    ServerIsJoining,
    ServerNotFound,
)
from nuraft_mesg.raft.node import RaftNode, Role
from nuraft_mesg.raft.ready import JoinedCluster, NewConfig, RemovedFromCluster
from nuraft_mesg.raft.types import ClusterConfig, LogEntry, LogType, Message, MsgType, ServerConfig

from .helpers import (
    ack_all,
    append_req,
    append_resp,
    boot_with_config,
    cluster,
    config,
    deliver_only,
    drain,
    elect,
    flush,
    node,
    of_type,
    params,
)

JOIN_REQ = MsgType.JOIN_CLUSTER_REQUEST
AE_REQ = MsgType.APPEND_ENTRIES_REQUEST

S4 = ServerConfig(4, "node-4")


def _removed(n: RaftNode) -> bool:
    """(Read through a call, so the type checker does not narrow it between steps.)"""
    return n.removed


def _leader(cfg: ClusterConfig | None = None, **prm: int) -> RaftNode:
    """Node 1, leader with every follower in sync and its no-op committed."""
    n = node(1, cfg or config(), prm=params(**prm))
    elect(n)
    ack_all(n, sorted(n.config.ids - {1}))
    assert n.commit == n.log.last_index
    return n


# ---------------------------------------------------------------------------------------------
# Adding a server (NuRaft's join)
# ---------------------------------------------------------------------------------------------


def test_add_server_invites_the_new_server_before_changing_the_config() -> None:
    """Thesis §4.2.1 / NuRaft: a new server first catches up as a non-voting member; the
    leader invites it (join_cluster_request carrying the current configuration) and does not
    append the new configuration yet."""
    n = _leader()
    n.add_server(S4)
    rd = flush(n)
    (invite,) = of_type(rd.messages, JOIN_REQ)
    assert invite.dest == 4 and invite.entries[0].type == LogType.CONFIG
    assert ClusterConfig.decode(invite.entries[0].buffer).ids == {1, 2, 3}
    assert n.joining_server == S4
    assert n.config.ids == {1, 2, 3} and rd.entries == []


def test_joined_server_catches_up_then_config_entry_is_appended() -> None:
    """Thesis §4.2.1: once the new server has caught up, the leader appends the new
    configuration -- which takes effect on append (§4.1), before it commits -- and commits
    it with the new quorum."""
    c = cluster((1, 2, 3, 4), members=(1, 2, 3))
    c.elect(1)
    c.propose(1, b"a")
    c.stabilize()
    c.do(1, lambda n: n.add_server(S4))
    # Only the invitation: node 4 accepts, the leader has not changed its configuration.
    (invite,) = c.bag
    assert invite.type == JOIN_REQ
    c.deliver(0)
    assert JoinedCluster(1, 1) in c.nodes[4].events
    assert c.core(1).config.ids == {1, 2, 3}
    last_before = c.core(1).log.last_index
    # Let node 4 catch up, but hold back what the leader sends to 2 and 3.
    deliver_only(c, lambda m: 4 in (m.src, m.dest))
    leader = c.core(1)
    assert c.core(4).log.last_index > last_before  # caught up, and got the new config entry
    assert leader.config.ids == {1, 2, 3, 4}  # effective on append...
    assert leader.log.entry(leader.config.log_idx).type == LogType.CONFIG
    assert leader.config_changing and leader.committed_config.ids == {1, 2, 3}  # ...uncommitted
    c.stabilize()
    assert leader.committed_config.ids == {1, 2, 3, 4}
    assert c.core(4).committed_config.ids == {1, 2, 3, 4}
    assert c.applied_data(4) == [b"a"]
    assert c.nodes[4].durable.config.ids == {1, 2, 3, 4}


def test_new_server_is_not_counted_before_its_config_entry() -> None:
    """Thesis §4.2.1: the catching-up server is not in any quorum; its acknowledgements do not
    commit anything before the configuration that adds it."""
    n = _leader()
    n.add_server(S4)
    drain(n)
    n.step(Message(MsgType.JOIN_CLUSTER_RESPONSE, 1, 4, 1, accepted=True, next_index=1))
    drain(n)
    n.propose([b"x"])
    drain(n)
    n.step(append_resp(1, 4, 1, next_index=n.log.last_index + 1))
    assert n.commit < n.log.last_index


def test_config_takes_effect_on_append_on_a_follower() -> None:
    """Thesis §4.1: "a server always uses the latest configuration in its log, regardless of
    whether the entry is committed".  It becomes the committed configuration, and is handed
    to storage to save, when the commit index covers it."""
    n = node(2)
    new = config((1, 2, 3, 4))
    n.step(append_req(1, 1, 2, entries=[LogEntry(1, LogType.CONFIG, new.encode())]))
    rd = flush(n)
    assert n.config.ids == {1, 2, 3, 4} and n.config.log_idx == 1
    assert n.committed_config.ids == {1, 2, 3}
    assert NewConfig(n.config, committed=False) in rd.events
    assert rd.config_to_save is None
    n.step(append_req(1, 1, 2, prev_index=1, prev_term=1, commit=1))
    rd = flush(n)
    assert n.committed_config.ids == {1, 2, 3, 4}
    assert rd.config_to_save is not None and rd.config_to_save.ids == {1, 2, 3, 4}
    assert NewConfig(n.committed_config, committed=True) in rd.events


def test_truncated_config_entry_is_rolled_back() -> None:
    """Thesis §4.1: "a log entry for a configuration change can be removed (if leadership
    changes); in this case, a server must be prepared to fall back to the previous
    configuration in its log"."""
    n = node(2)
    n.step(append_req(1, 1, 2, entries=[LogEntry(1, LogType.CONFIG,
                                                 config((1, 2, 3, 4)).encode())]))
    drain(n)
    assert n.config.ids == {1, 2, 3, 4}
    n.step(append_req(2, 3, 2, entries=[LogEntry(2, LogType.APP, b"x")]))
    rd = flush(n)
    assert rd.truncate_from == 1
    assert n.config.ids == {1, 2, 3}
    assert NewConfig(n.config, committed=False) in rd.events


def test_join_timeout_aborts_the_join() -> None:
    """NuRaft: a new server that does not answer within join_timeout is given up on; the
    leader is free to make another change.  500 ms at a 100 ms heartbeat = 5 ticks."""
    c = cluster((1, 2, 3, 4), members=(1, 2, 3), params=params(join_timeout_ms=500))
    c.elect(1)
    c.stabilize()
    c.crash(4)
    c.do(1, lambda n: n.add_server(S4))
    for _ in range(5):
        c.heartbeat(1)
        c.deliver_all()
    assert c.core(1).joining_server == S4
    c.heartbeat(1)
    c.deliver_all()
    leader = c.core(1)
    assert leader.joining_server is None
    assert 4 not in leader.progress and leader.config.ids == {1, 2, 3}
    c.do(1, lambda n: n.add_server(S4))  # no ServerIsJoining any more
    assert leader.joining_server == S4


def test_join_refused_by_the_new_server_aborts_the_join() -> None:
    """NuRaft's join (thesis §4.2.1 catch-up phase): a server that refuses the invitation is
    not added, and the leader is free for another change."""
    n = _leader()
    n.add_server(S4)
    drain(n)
    n.step(Message(MsgType.JOIN_CLUSTER_RESPONSE, 1, 4, 1, accepted=False))
    assert n.joining_server is None and 4 not in n.progress


def test_invited_server_that_restarts_does_not_campaign_alone() -> None:
    """NuRaft's join: the invited server saves the leader's configuration at once, so after a
    crash it does not boot as a one-member group that elects itself."""
    c = cluster((1, 2, 3, 4), members=(1, 2, 3))
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.add_server(S4))
    deliver_only(c, lambda m: m.type in (JOIN_REQ, MsgType.JOIN_CLUSTER_RESPONSE))
    c.crash(4)
    c.restart(4)
    assert c.core(4).config.ids == {1, 2, 3}
    for _ in range(3):
        c.election_timeout(4)
    assert c.core(4).role == Role.FOLLOWER and c.core(4).term == 1
    assert [m for m in c.bag if m.src == 4] == []


# ---------------------------------------------------------------------------------------------
# One change at a time
# ---------------------------------------------------------------------------------------------


def test_no_other_change_while_a_server_is_joining() -> None:
    """NuRaft: while a new server catches up, further changes are refused SERVER_IS_JOINING."""
    n = _leader()
    n.add_server(S4)
    with pytest.raises(ServerIsJoining):
        n.add_server(ServerConfig(5))
    with pytest.raises(ServerIsJoining):
        n.remove_server(3)
    with pytest.raises(ServerIsJoining):
        n.update_server(ServerConfig(2, priority=5))


def test_no_other_change_while_a_config_entry_is_uncommitted() -> None:
    """Thesis §4.1: "a leader ... does not begin a new configuration change until the
    previous one has committed" (CONFIG_CHANGING); once it commits, the next may start."""
    n = _leader()
    n.remove_server(3)
    with pytest.raises(ConfigChanging):
        n.add_server(S4)
    with pytest.raises(ConfigChanging):
        n.remove_server(2)
    drain(n)
    n.step(append_resp(1, 2, 1, next_index=n.log.last_index + 1))
    assert not n.config_changing
    n.add_server(S4)
    assert n.joining_server == S4


def test_new_leader_may_not_change_config_before_its_no_op_commits() -> None:
    """Thesis §4.1 (the single-server-change bug fix): a leader must commit an entry of its
    own term before changing the configuration; the no-op is that entry."""
    n = node(1)
    elect(n)
    with pytest.raises(ConfigChanging):
        n.remove_server(3)
    ack_all(n, [2])
    n.remove_server(3)
    assert n.config.ids == {1, 2}


def test_invalid_changes_are_refused() -> None:
    """Thesis §4.1 / NuRaft add_server/remove_server/update_server: a member cannot be added
    twice (SERVER_ALREADY_EXISTS), an unknown one not removed (SERVER_NOT_FOUND), the last
    voter neither removed nor demoted (BAD_REQUEST), and only the leader changes membership
    (NOT_LEADER)."""
    n = _leader(config((1,), learners=(2,)))
    with pytest.raises(ServerAlreadyExists):
        n.add_server(ServerConfig(2))
    with pytest.raises(ServerNotFound):
        n.remove_server(9)
    with pytest.raises(BadRequest):
        n.remove_server(1)  # the last voter
    with pytest.raises(BadRequest):
        n.update_server(ServerConfig(1, learner=True))
    follower = node(2)
    with pytest.raises(NotLeader):
        follower.add_server(S4)


# ---------------------------------------------------------------------------------------------
# Removing servers
# ---------------------------------------------------------------------------------------------


def test_removal_uses_the_new_quorum_from_append() -> None:
    """Thesis §4.1: the new configuration governs from append: after removing 3 from
    {1, 2, 3}, the entry needs node 2 (majority of {1, 2}); node 3's answer no longer counts
    and it gets no more appends."""
    n = _leader()
    n.remove_server(3)
    out = drain(n)
    assert out.of_type(AE_REQ, dest=3) == []
    n.step(append_resp(1, 3, 1, next_index=n.log.last_index + 1))
    assert n.commit < n.log.last_index
    n.step(append_resp(1, 2, 1, next_index=n.log.last_index + 1))
    assert n.commit == n.log.last_index


def test_removed_follower_is_told_by_leave_cluster_request() -> None:
    """NuRaft: once the removal commits, the leader sends the removed server a
    leave_cluster_request (it gets no more appends, so it could not learn it from the log).
    The server reports RemovedFromCluster and never campaigns again."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.remove_server(3))
    delivered = deliver_only(c, lambda m: True)
    assert [m.dest for m in delivered if m.type == MsgType.LEAVE_CLUSTER_REQUEST] == [3]
    assert any(isinstance(e, RemovedFromCluster) for e in c.nodes[3].events)
    assert c.core(3).removed
    c.election_timeout(3)
    assert [m for m in c.bag if m.src == 3] == []
    c.crash(3)
    c.propose(1, b"after")
    c.stabilize()
    assert c.applied_data(2) == [b"after"]


def test_delayed_leave_request_after_being_added_back_is_ignored() -> None:
    """NuRaft leave_cluster_request (thesis §4.2.2): the request names the leader's commit
    index when the removal committed; a server whose log holds a newer configuration listing it
    (it was added back since) is not removed by that stale request."""
    n = node(3, term=1)
    n.step(append_req(1, 1, 3, entries=[LogEntry(1), LogEntry(1),
                                        LogEntry(1, LogType.CONFIG, config().encode())]))
    drain(n)
    assert n.config.log_idx == 3
    n.step(Message(MsgType.LEAVE_CLUSTER_REQUEST, 1, 1, 3, commit_index=2))
    out = drain(n)
    assert not _removed(n) and out.of_type(MsgType.LEAVE_CLUSTER_RESPONSE)
    n.step(Message(MsgType.LEAVE_CLUSTER_REQUEST, 1, 1, 3, commit_index=4))
    out = drain(n)
    assert _removed(n) and RemovedFromCluster(1) in out.events


def test_follower_learns_its_removal_from_a_committed_config() -> None:
    """Thesis §4.2.2: a server whose log holds a committed configuration that no longer lists
    it knows it was removed (RemovedFromCluster) and stops its election timer, so it cannot
    disrupt the cluster."""
    n = node(3)
    n.step(append_req(1, 1, 3, entries=[LogEntry(1, LogType.CONFIG, config((1, 2)).encode())]))
    rd = flush(n)
    assert not _removed(n)
    assert not any(isinstance(e, RemovedFromCluster) for e in rd.events)
    n.step(append_req(1, 1, 3, prev_index=1, prev_term=1, commit=1))
    rd = flush(n)
    assert _removed(n) and RemovedFromCluster(1) in rd.events
    assert rd.election_timer is not None and rd.election_timer.stop


def test_removed_leader_leads_until_the_entry_commits_then_hands_over() -> None:
    """Thesis §4.2.2: a leader removing itself manages the cluster until the new
    configuration commits (it replicates but does not count itself), then steps down; NuRaft
    hands over at once to the most caught-up voter (leadership_takeover), which wins without
    waiting for an election timeout."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.remove_server(1))
    leader = c.core(1)
    cfg_idx = leader.config.log_idx
    assert leader.is_leader and leader.config.ids == {2, 3}
    while c.bag:
        c.deliver(0)
        assert c.core(1).is_leader or c.core(1).commit >= cfg_idx
    assert not c.core(1).is_leader and c.core(1).removed
    assert RemovedFromCluster(1) in c.nodes[1].events
    new = c.leader()
    assert new in (2, 3) and c.core(new).term == 2
    assert c.core(new).config.ids == {2, 3}
    c.propose(new, b"x")
    c.stabilize()
    assert c.applied_data(2) == [b"x"] and c.applied_data(3) == [b"x"]


# ---------------------------------------------------------------------------------------------
# Learners
# ---------------------------------------------------------------------------------------------


def test_learners_are_outside_the_quorum() -> None:
    """NuRaft learners receive the log but are in no quorum: one voter plus two learners
    elects and commits with both learners down, and the learners catch up when back."""
    c = boot_with_config(cluster(), config((1,), learners=(2, 3)))
    c.crash(2)
    c.crash(3)
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    assert c.applied_data(1) == [b"x"]
    c.restart(2)
    c.restart(3)
    c.stabilize()
    assert c.applied_data(2) == [b"x"] and c.applied_data(3) == [b"x"]


def test_learners_never_campaign_even_without_a_leader() -> None:
    """NuRaft learners never start an election (Raft §5.2 applies to voters only): with the
    only voter down, no learner campaigns and the terms stay put."""
    c = boot_with_config(cluster(), config((1,), learners=(2, 3)))
    c.crash(1)
    for _ in range(5):
        for i in (2, 3):
            c.election_timeout(i)
        c.deliver_all()
    assert c.leaders() == []
    assert c.core(2).term == 0 and c.core(3).term == 0


def test_promoted_learner_joins_the_quorum() -> None:
    """NuRaft: update_server(learner=False) promotes a learner through a configuration entry;
    from then on it is a voter: commits need it, and it may campaign."""
    c = boot_with_config(cluster(), config((1,), learners=(2, 3)))
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.update_server(ServerConfig(2, "node-2")))
    c.stabilize()
    assert c.core(1).committed_config.voters == {1, 2}
    c.crash(2)
    c.propose(1, b"x")
    c.stabilize()
    assert c.applied_data(1) == []  # quorum of {1, 2} needs node 2
    c.restart(2)
    c.stabilize()
    assert c.applied_data(1) == [b"x"]
    c.election_timeout(2)
    assert any(m.src == 2 and m.type == MsgType.PRE_VOTE_REQUEST for m in c.bag)


# ---------------------------------------------------------------------------------------------
# add_server / remove_server requests from outside (NuRaft's messages)
# ---------------------------------------------------------------------------------------------


def _add_request(dest: int, srv: ServerConfig) -> Message:
    return Message(MsgType.ADD_SERVER_REQUEST, 0, 0, dest,
                   entries=(LogEntry(0, LogType.CLUSTER, srv.encode()),))


def _remove_request(dest: int, server_id: int) -> Message:
    return Message(MsgType.REMOVE_SERVER_REQUEST, 0, 0, dest,
                   entries=(LogEntry(0, LogType.CLUSTER,
                                     server_id.to_bytes(4, "little", signed=True)),))


def test_external_add_server_request_starts_a_join() -> None:
    """NuRaft: an add_server_request from an external client (src 0) carries the server's
    srv_config in one CLUSTER entry; the leader accepts and invites the server."""
    n = _leader()
    n.step(_add_request(1, S4))
    out = drain(n)
    (resp,) = out.of_type(MsgType.ADD_SERVER_RESPONSE)
    assert resp.accepted and resp.dest == 0
    assert n.joining_server == S4
    assert out.of_type(JOIN_REQ, dest=4)


def test_external_remove_server_request_appends_the_config() -> None:
    """NuRaft: a remove_server_request carries the server id as 4 little-endian bytes."""
    n = _leader()
    n.step(_remove_request(1, 3))
    (resp,) = drain(n).of_type(MsgType.REMOVE_SERVER_RESPONSE)
    assert resp.accepted and resp.dest == 0
    assert n.config.ids == {1, 2}


def test_external_membership_request_refusals_carry_the_result_code() -> None:
    """The refusal codes are NuRaft's: CONFIG_CHANGING, SERVER_NOT_FOUND, BAD_REQUEST, and
    NOT_LEADER naming the leader in ``dest`` on a follower."""
    n = _leader()
    n.step(_remove_request(1, 9))
    n.step(_remove_request(1, 3))
    n.step(_add_request(1, S4))
    n.step(Message(MsgType.ADD_SERVER_REQUEST, 0, 0, 1,
                   entries=(LogEntry(0, LogType.CLUSTER, b"not json"),)))
    codes = [m.result_code for m in drain(n).messages if not m.is_request]
    assert codes == [ResultCode.SERVER_NOT_FOUND, ResultCode.OK, ResultCode.CONFIG_CHANGING,
                     ResultCode.BAD_REQUEST]
    f = node(2, term=1)
    f.step(append_req(1, 1, 2))
    drain(f)
    f.step(_add_request(2, S4))
    (resp,) = drain(f).of_type(MsgType.ADD_SERVER_RESPONSE)
    assert (resp.accepted, resp.result_code, resp.dest) == (False, ResultCode.NOT_LEADER, 1)
