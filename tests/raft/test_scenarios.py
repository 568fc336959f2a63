"""Named regression scenarios: situations that broke Raft implementations before, each built
step by step on a CoreCluster whose SafetyChecker raises on any broken invariant (Election
Safety, Leader Append-Only, Log Matching, Leader Completeness, State Machine Safety).

* Figure 8 (Raft §5.4.2) -- never commit an old-term entry by counting replicas;
* backtracking over a long conflicting suffix in few round trips (6.824's TestBackup);
* a partitioned old leader rejoining;
* every node restarting at once (PySyncObj #202);
* a reboot during leadership transfer (NuRaft #351);
* yield_leadership with an uncommitted configuration change (NuRaft #463);
* removing the leader;
* a cluster whose logs start at index 101 (after compaction).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from nuraft_mesg.errors import NotLeader
from nuraft_mesg.raft.node import RaftNode, Role
from nuraft_mesg.raft.ready import RemovedFromCluster
from nuraft_mesg.raft.types import HardState, LogType, Message, MsgType, ServerConfig
from nuraft_mesg.testing.core_cluster import CoreCluster

from .helpers import cluster, deliver_counting, deliver_matching, deliver_only, params

AE_REQ = MsgType.APPEND_ENTRIES_REQUEST
AE_RESP = MsgType.APPEND_ENTRIES_RESPONSE


def _not_appends(m: Message) -> bool:
    return m.type not in (AE_REQ, AE_RESP)


def _campaign(c: CoreCluster, i: int, keep: Callable[[Message], bool] = _not_appends,
              rounds: int = 10) -> None:
    """Time ``i`` out until it leads, delivering only what ``keep`` accepts."""
    for _ in range(rounds):
        c.election_timeout(i)
        deliver_only(c, keep)
        if c.core(i).is_leader:
            return
    raise AssertionError(f"node {i} did not win")


def _expire_leases(c: CoreCluster, *ids: int) -> None:
    """An election timeout passes on ``ids`` without word from their leader (they stop
    defending it, thesis §6.2)."""
    for i in ids:
        c.election_timeout(i)
    # Their own pre-votes are lost: the test decides who campaigns.
    c.bag = [m for m in c.bag if not (m.src in ids and m.type == MsgType.PRE_VOTE_REQUEST)]


# ---------------------------------------------------------------------------------------------
# Figure 8
# ---------------------------------------------------------------------------------------------


def _figure8_until_c() -> CoreCluster:
    """Raft Figure 8, (a) to (c), with five servers S1..S5.

    Index 1 (term 1) is committed everywhere.  (a) S1 leads term 2 and its entry 2 reaches
    S2 only.  (b) S1 crashes; S5 wins term 3 with S3, S4 and appends its own entry 2, which
    reaches no one; S5 crashes.  (c) S1 restarts, wins term 4 (its no-op is entry 3) and
    replicates entry 2 (term 2) to S3 -- but not entry 3.  S2 answers too (and gets entry 3,
    which leaves that entry on two servers only).  S1 now *knows* entry 2 is on a majority:
    S1, S2, S3.  Check-quorum is off (leases are not what Figure 8 is about); one entry per
    append, so replication to S3 can be stopped between index 2 and 3.
    """
    c = cluster((1, 2, 3, 4, 5), params=params(leadership_expiry_ms=-1, max_append_entries=1))
    c.elect(1)
    c.stabilize()
    assert all(c.core(i).commit == 1 for i in c.nodes)
    # (a)
    c.crash(1)
    c.restart(1)
    _campaign(c, 1, lambda m: _not_appends(m) or 2 in (m.src, m.dest))
    assert c.core(1).term == 2
    assert [c.core(i).log.last_term for i in (1, 2, 3, 4, 5)] == [2, 2, 1, 1, 1]
    # (b)
    c.crash(1)
    _campaign(c, 5)
    assert c.core(5).term == 3 and c.core(5).log.term_at(2) == 3
    c.crash(5)
    # (c)
    c.restart(1)
    _campaign(c, 1)
    assert c.core(1).term == 4 and c.core(1).log.term_at(3) == 4
    s3 = c.core(3)

    def s2_and_s3_without_entry_3(m: Message) -> bool:
        if m.type == AE_RESP:
            return m.src in (2, 3)
        if m.type != AE_REQ or m.dest not in (2, 3):
            return False
        if m.dest == 2:
            return True
        rejected = s3.log.term_at(m.last_log_index) != m.last_log_term
        return rejected or m.last_log_index + len(m.entries) < 3

    c.heartbeat(1)
    deliver_only(c, s2_and_s3_without_entry_3)
    leader = c.core(1)
    assert [c.core(i).log.term_at(2) for i in (1, 2, 3)] == [2, 2, 2]
    assert c.core(3).log.last_index == 2
    assert (leader.progress[2].match, leader.progress[3].match) == (3, 2)
    return c


def test_figure8_old_term_entry_on_a_majority_is_not_committed() -> None:
    """Raft §5.4.2, Figure 8 (c)-(d): entry 2 of term 2 is stored on a majority, yet S1
    (leader of term 4) must not commit it -- because S5 can still be elected (its last term,
    3, beats the majority's 2) and overwrite it.  Had S1 committed it, the SafetyChecker
    would raise when S5 overwrites it."""
    c = _figure8_until_c()
    assert c.core(1).commit == 1
    # (d) S1 crashes, S5 restarts and is elected by S3, S4; it replaces entry 2 everywhere.
    c.crash(1)
    c.restart(5)
    c.elect(5)
    c.stabilize()
    assert c.core(5).term == 5
    assert [c.core(i).log.term_at(2) for i in (2, 3, 4, 5)] == [3, 3, 3, 3]
    assert c.checker.committed[2].term == 3


def test_figure8_current_term_entry_commits_the_old_one_and_blocks_s5() -> None:
    """Raft §5.4.2, Figure 8 (e): once S1 replicates an entry of its *current* term to a
    majority, that entry and entry 2 before it are committed; S5 can then never be elected
    (a majority holds a later last term than S5's) and entry 2 survives."""
    c = _figure8_until_c()
    for _ in range(3):
        c.heartbeat(1)
        deliver_only(c, lambda m: 3 in (m.src, m.dest) or 2 in (m.src, m.dest))
    assert c.core(1).commit == 3
    c.crash(1)
    c.restart(5)
    for _ in range(10):
        c.election_timeout(4)
        c.election_timeout(5)
        c.deliver_all()
        assert not c.core(5).is_leader
    c.elect(2)
    c.stabilize()
    assert all(c.core(i).log.term_at(2) == 2 for i in (2, 3, 4, 5))
    assert c.checker.committed[2].term == 2


# ---------------------------------------------------------------------------------------------
# Backtracking over a long conflicting suffix
# ---------------------------------------------------------------------------------------------


def test_leader_repairs_long_conflicting_suffixes_in_few_round_trips() -> None:
    """6.824's TestBackup / Raft §5.3: the old leader S1 and S2 hold 50 uncommitted entries of
    term 1; meanwhile S3..S5 commit 50 entries of term 2 and elect S4 in term 3 (so the new
    leader starts probing at the end of its long log).  After the partition heals, each stale
    follower is repaired with at most two rejections -- one index per round trip would take
    about fifty."""
    c = cluster((1, 2, 3, 4, 5))
    c.elect(1)
    c.stabilize()
    c.partition([1, 2], [3, 4, 5])
    for k in range(50):
        c.propose(1, b"stale-%d" % k)
    c.stabilize()
    assert c.core(2).log.last_index == 51 and c.core(1).commit == 1
    _expire_leases(c, 4, 5)
    c.elect(3)
    for k in range(50):
        c.propose(3, b"new-%d" % k)
    c.stabilize()
    assert c.core(3).commit == 52
    c.crash(3)
    c.restart(3)
    _expire_leases(c, 5)
    c.elect(4)
    c.stabilize()
    assert c.core(4).term == 3
    c.heal()
    rejections = {1: 0, 2: 0}
    for _ in range(4):
        c.heartbeat(4)
        for m in deliver_counting(c):
            if m.type == AE_RESP and not m.accepted and m.src in rejections and m.dest == 4:
                rejections[m.src] += 1
    assert 1 <= rejections[1] <= 2 and 1 <= rejections[2] <= 2, rejections
    want = c.applied_data(4)
    assert want[:1] == [b"new-0"] and len(want) == 50
    assert c.applied_data(1) == want and c.applied_data(2) == want
    assert not c.core(1).is_leader


# ---------------------------------------------------------------------------------------------
# A partitioned old leader rejoins
# ---------------------------------------------------------------------------------------------


def test_partitioned_old_leader_rejoins_and_its_uncommitted_entries_are_replaced() -> None:
    """Raft §5.3/§5.4: a leader cut off from the majority keeps appending entries that can
    never commit; the majority elects a new leader and commits.  When the partition heals
    the old leader learns the newer term, steps down, and its uncommitted entries are
    overwritten; the entries committed before the partition survive everywhere."""
    c = cluster((1, 2, 3, 4, 5))
    c.elect(1)
    c.propose(1, b"committed")
    c.stabilize()
    c.isolate(1)
    lost = [c.propose(1, b"lost-%d" % k) for k in range(3)]
    c.stabilize()
    _expire_leases(c, 3, 4, 5)
    c.elect(2)
    c.propose(2, b"new")
    c.stabilize()
    assert c.core(1).is_leader and c.core(1).term == 1  # still believes it leads
    c.heal()
    c.stabilize()
    old = c.core(1)
    assert old.role == Role.FOLLOWER and old.term == 2 and old.leader_id == 2
    for p in lost:
        assert old.log.term_at(p.last_index) != p.term
    for i in c.nodes:
        assert c.applied_data(i) == [b"committed", b"new"]


def test_isolated_leader_steps_down_by_check_quorum() -> None:
    """Thesis §6.2: even before the partition heals, the isolated leader steps down once it
    has heard from no majority for leadership_expiry (20 heartbeats by default), so clients
    are not kept waiting on it."""
    c = cluster((1, 2, 3, 4, 5))
    c.elect(1)
    c.stabilize()
    c.isolate(1)
    silent = 0
    while c.core(1).is_leader and silent < 100:
        c.heartbeat(1)
        c.deliver_all()
        silent += 1
    assert 20 <= silent <= 21  # the last answers came within the interval before the cut


# ---------------------------------------------------------------------------------------------
# Every node restarts at once (PySyncObj #202)
# ---------------------------------------------------------------------------------------------


def test_all_nodes_restart_at_once_from_persisted_state() -> None:
    """PySyncObj #202: after all servers restart together, term and vote come back from
    disk (Raft Figure 2's persistent state), committed entries survive and are applied
    again, no one starts as leader, and a new leader is elected in a later term."""
    c = cluster()
    c.elect(1)
    for k in range(3):
        c.propose(1, b"v%d" % k)
    c.stabilize()
    before = {i: (c.core(i).term, c.core(i).vote, c.core(i).log.last_index) for i in c.nodes}
    for i in c.nodes:
        c.crash(i)
    for i in c.nodes:
        c.restart(i)
    for i in c.nodes:
        core = c.core(i)
        assert (core.term, core.vote, core.log.last_index) == before[i]
        assert core.role == Role.FOLLOWER
    assert c.leaders() == []
    c.elect(2)
    c.propose(2, b"after")
    c.stabilize()
    assert c.core(2).term == 2
    for i in c.nodes:
        assert c.applied_data(i) == [b"v0", b"v1", b"v2", b"after"]


def test_all_nodes_crash_with_unfinished_writes() -> None:
    """PySyncObj #202 with storage writes in flight (auto_persist=False, Raft Figure 2's
    persistent state only): what was not durable is lost, but nothing acknowledged -- so
    nothing committed -- is, and the cluster elects and commits again."""
    c = cluster(auto_persist=False)
    c.elect(1)
    c.propose(1, b"durable")
    for _ in range(3):
        c.heartbeat(1)
        c.deliver_all()
    committed = c.core(1).commit
    assert c.applied_data(1) == [b"durable"]
    c.propose(1, b"in-flight")  # the leader's write is not done
    for i in c.nodes:
        c.crash(i)
    c.bag.clear()  # a power cut: the appends carrying it are lost with everything else
    for i in c.nodes:
        c.restart(i)
    assert c.core(1).log.last_index == committed
    rounds = c.wait_leader_liveness()
    assert rounds < 50
    leader = c.leader()
    assert leader is not None
    assert c.applied_data(leader)[0] == b"durable"
    assert b"in-flight" not in c.applied_data(leader)


# ---------------------------------------------------------------------------------------------
# Reboot during leadership transfer (NuRaft #351)
# ---------------------------------------------------------------------------------------------


def test_target_reboots_before_the_takeover_arrives() -> None:
    """NuRaft #351: the transfer target crashes while the leader hands over.  The takeover
    is lost; the leader aborts the transfer after transfer_timeout and, still leader of the
    same term, serves requests again -- the cluster is not stuck."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.yield_leadership(2))
    assert any(m.type == MsgType.CUSTOM_NOTIFICATION_REQUEST for m in c.bag)
    c.crash(2)
    c.deliver_all()  # the takeover is lost
    c.restart(2)
    with pytest.raises(NotLeader):
        c.propose(1, b"x")
    for _ in range(c.params.transfer_timeout_ticks + 1):
        c.heartbeat(1)
        c.deliver_all()
    assert c.core(1).is_leader and not c.core(1).transferring_leadership
    assert c.core(1).term == 1
    c.propose(1, b"x")
    c.stabilize()
    assert c.applied_data(2) == [b"x"]


def test_target_reboots_after_starting_its_election() -> None:
    """NuRaft #351, later crash: the target has already bumped its term and voted for
    itself when it crashes; it restarts with that term.  The old leader steps down on seeing
    it, a new leader is elected, and committed entries survive."""
    c = cluster()
    c.elect(1)
    c.propose(1, b"before")
    c.stabilize()
    c.do(1, lambda n: n.yield_leadership(2))
    deliver_only(c, lambda m: m.type == MsgType.CUSTOM_NOTIFICATION_REQUEST)
    assert c.core(2).role == Role.CANDIDATE and c.core(2).term == 2
    c.crash(2)
    c.bag.clear()  # its vote requests die with it
    c.restart(2)
    assert c.core(2).term == 2 and c.core(2).vote == 2
    c.wait_leader_liveness()
    leader = c.leader()
    assert leader is not None and c.core(leader).term >= 3
    assert c.applied_data(leader)[0] == b"before"


# ---------------------------------------------------------------------------------------------
# yield_leadership with an uncommitted configuration change (NuRaft #463)
# ---------------------------------------------------------------------------------------------


def test_yield_with_an_uncommitted_config_change_keeps_the_change() -> None:
    """NuRaft #463: a leader yields while the entry adding server 4 is appended but not
    committed.  The target catches up -- receiving that entry -- before taking over, so the
    new leader's configuration includes 4, its no-op commits it, and 4 stays a member."""
    c = cluster((1, 2, 3, 4), members=(1, 2, 3))
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.add_server(ServerConfig(4, "node-4")))
    # 4 catches up and the entry adding it is appended; what goes to 2 and 3 is delayed.
    deliver_matching(c, lambda m: 4 in (m.src, m.dest))
    leader = c.core(1)
    assert leader.config.ids == {1, 2, 3, 4} and leader.config_changing
    cfg_idx = leader.config.log_idx
    c.do(1, lambda n: n.yield_leadership(2))
    c.deliver_all()
    assert c.leader() == 2
    c.propose(2, b"x")
    c.stabilize()
    for i in (1, 2, 3, 4):
        core = c.core(i)
        assert core.committed_config.ids == {1, 2, 3, 4}
        assert core.log.entry(cfg_idx).type == LogType.CONFIG
        assert c.applied_data(i) == [b"x"]


def test_yield_with_an_uncommitted_removal_keeps_the_removal() -> None:
    """NuRaft #463 for a removal (thesis §4.1: the configuration in the log governs): the new
    leader does not resurrect the removed server."""
    c = cluster()
    c.elect(1)
    c.stabilize()
    c.do(1, lambda n: n.remove_server(3))
    c.do(1, lambda n: n.yield_leadership(2))
    c.deliver_all()
    assert c.leader() == 2
    c.stabilize()
    assert c.core(2).committed_config.ids == {1, 2}
    assert 3 not in c.core(2).progress


# ---------------------------------------------------------------------------------------------
# Removing the leader
# ---------------------------------------------------------------------------------------------


def test_removing_the_leader_under_load() -> None:
    """Thesis §4.2.2: the leader removes itself while proposals are in flight.  It commits the
    new configuration (counting only the remaining servers), steps down and hands over; the
    remaining servers keep committing, every proposal the old leader accepted before
    stepping down either commits or is superseded, and the removed server stays quiet --
    also after a restart, since the committed configuration it saved excludes it."""
    c = cluster((1, 2, 3, 4, 5))
    c.elect(1)
    c.stabilize()
    c.propose(1, b"a")
    c.do(1, lambda n: n.remove_server(1))
    c.propose(1, b"b")  # still leader until the removal commits
    c.deliver_all()
    assert RemovedFromCluster(1) in c.nodes[1].events
    new = c.leader()
    assert new is not None and new != 1
    c.propose(new, b"c")
    c.stabilize()
    for i in (2, 3, 4, 5):
        assert c.applied_data(i) == [b"a", b"b", b"c"]
    c.crash(1)
    c.restart(1)
    assert 1 not in c.core(1).config
    for _ in range(5):
        c.election_timeout(1)
    assert [m for m in c.bag if m.src == 1] == []
    assert c.leader() == new


# ---------------------------------------------------------------------------------------------
# A log that starts at index 101
# ---------------------------------------------------------------------------------------------


def test_cluster_with_logs_starting_at_101() -> None:
    """Raft §7: after compaction every log starts at 101 with the boundary (100, term 5).  The
    cluster elects (the §5.4.1 check uses the boundary as last entry), replicates and commits
    with the right indices, and catches up a follower that was down -- its consistency check
    matches at the boundary."""
    c = cluster(node_factory=functools.partial(RaftNode, log_boundary_term=5))
    for i, n in c.nodes.items():
        c.crash(i)
        n.durable.start_index = 101
        n.durable.hard_state = HardState(5, -1, 100)
        c.restart(i)
        assert c.core(i).log.last_index == 100 and c.core(i).log.last_term == 5
    c.crash(3)
    c.elect(1)
    c.propose(1, b"x")
    c.propose(1, b"y")
    c.stabilize()
    leader = c.core(1)
    assert leader.term == 6
    assert leader.log.entry(101).type == LogType.CONFIG  # the no-op
    assert leader.commit == 103
    assert [(i, e.buffer) for i, e in c.nodes[2].applied if e.type == LogType.APP] == \
        [(102, b"x"), (103, b"y")]
    c.restart(3)
    c.stabilize()
    follower = c.core(3)
    assert (follower.log.start_index, follower.log.last_index, follower.commit) == (101, 103, 103)
    assert [i for i, _ in c.nodes[3].applied] == [101, 102, 103]
    assert c.nodes[3].durable.entries[0].type == LogType.CONFIG
