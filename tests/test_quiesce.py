"""Quiet idle groups, node-level liveness, coalesced heartbeats and the fast step path
(issue F), on real Managers over the simulated network under trio's MockClock.

SIM_PARAMS: heartbeat 100 ms, election timeout 400..800 ms, so groups go quiet after
3 x 800 ms of idleness and a failover must take at most 800 + 200 ms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import pytest
import trio
import trio.testing

from nuraft_mesg.errors import ResultCode
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.manager import Manager
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.testing import SimCluster, check_invariants
from nuraft_mesg.testing.cluster import GROUP_TYPE, SIM_PARAMS, SimNode
from nuraft_mesg.testing.sim import SimNetwork, SimTransport
from nuraft_mesg.transport.base import ReplyCallback, Status, StepError, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope

UPPER = SIM_PARAMS.election_timeout_ms[1] / 1000
LOWER = SIM_PARAMS.election_timeout_ms[0] / 1000
QUIESCE_AFTER = 3 * UPPER


def _group(node: SimNode, gid: str) -> RaftGroup:
    return node.mgr._groups[gid]


def _all_quiet(c: SimCluster, gids: Sequence[str]) -> bool:
    return all(n.mgr.quiet_groups == len(gids) for n in c.nodes if n.up)


async def _quiet_cluster(c: SimCluster, groups: int) -> list[str]:
    gids = [await c.create_group() for _ in range(groups)]
    assert await c.wait_until(lambda: _all_quiet(c, gids), timeout=QUIESCE_AFTER + 2)
    return gids


# ==============================================================================================
# Parameters
# ==============================================================================================
def test_quiesce_after_param() -> None:
    assert RaftParams().quiesce_after_s == pytest.approx(2 * 0.2)
    assert RaftParams(quiesce_after_ms=5000).quiesce_after_s == 5.0
    assert RaftParams(quiesce_after_ms=-1).quiesce_after_s is None
    with pytest.raises(ValueError, match="quiesce_after_ms"):
        RaftParams(quiesce_after_ms=50)  # below the heartbeat interval


# ==============================================================================================
# Quiet groups
# ==============================================================================================
async def test_idle_groups_go_quiet_and_send_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=21) as c:
        gids = await _quiet_cluster(c, 4)
        terms = {(n.name, g): _group(n, g).core.term for n in c.nodes for g in gids}
        sent = c.network.stats.sent
        per_group = {(n.name, g): _group(n, g).statistics() for n in c.nodes for g in gids}
        assert all(st.quiet for st in per_group.values())
        await c.run_for(20 * UPPER)
        # Not one Raft message in 20 election timeouts; only node-level pings.
        assert c.network.stats.sent == sent
        assert c.network.stats.pings > 0 and c.network.stats.pings_failed == 0
        for key, st in per_group.items():
            now = _group(c.node(key[0]), key[1]).statistics()
            assert now.quiet and now.messages_sent == st.messages_sent, key
            assert now.messages_received == st.messages_received, key
            assert _group(c.node(key[0]), key[1]).core.term == terms[key], key
        check_invariants(c)


async def test_proposal_to_quiet_group_commits_and_wakes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=22) as c:
        gids = await _quiet_cluster(c, 3)
        target, others = gids[0], gids[1:]
        start = trio.current_time()
        w = await c.write_and_wait(target, b"set x 1")
        assert w.acked and trio.current_time() - start < 0.1
        # The write woke the group everywhere (its appends are no quiesce heartbeats) ...
        assert await c.wait_until(
            lambda: all(c.applied_index(n, target) >= (w.index or 0) for n in c.nodes),
            timeout=1)
        assert not any(_group(n, target).quiet for n in c.nodes)
        # ... and only that group: the others stayed quiet.
        assert all(_group(n, g).quiet for n in c.nodes for g in others)
        # Idle again, it goes quiet again.
        assert await c.wait_until(lambda: _all_quiet(c, gids), timeout=QUIESCE_AFTER + 1)
        check_invariants(c)


async def test_quiet_follower_woken_by_a_pre_vote(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=23) as c:
        (gid,) = await _quiet_cluster(c, 1)
        leader = c.leader(gid)
        assert leader is not None and leader.name == "n1"
        term = _group(leader, gid).core.term
        n2 = _group(c.node("n2"), gid)
        seen: list[bool] = []
        hook = n2._on_quiet
        assert hook is not None

        def spy(group: RaftGroup, lead: str, quiet: bool) -> None:
            seen.append(quiet)
            hook(group, lead, quiet)

        n2._on_quiet = spy
        c.campaign("n3", gid)  # n3 pre-votes: n2 must wake (and refuse: n1 is alive)
        await c.run_for(0.05)
        assert seen[:1] == [False]
        # The pre-vote round changed nothing: n1 still leads the same term.
        assert c.leader(gid) is leader and _group(leader, gid).core.term == term
        # Idle as before, the group goes quiet again.
        assert await c.wait_until(lambda: _all_quiet(c, [gid]), timeout=QUIESCE_AFTER + 1)
        check_invariants(c)


async def test_quiesce_disabled_keeps_heartbeats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    params = dataclasses.replace(SIM_PARAMS, quiesce_after_ms=-1)
    async with SimCluster.open(3, seed=24, params=params) as c:
        gids = [await c.create_group() for _ in range(2)]
        await c.run_for(QUIESCE_AFTER + 1)
        sent = c.network.stats.sent
        await c.run_for(5)
        assert not any(_group(n, g).quiet for n in c.nodes for g in gids)
        # 2 groups x 2 followers x 10 heartbeats/s x 5 s, request and reply legs.
        assert c.network.stats.sent - sent >= 2 * 2 * 10 * 5 * 2 * 0.9
        assert c.network.stats.pings == 0


class _NoPingTransport(SimTransport):
    supports_ping = False


async def test_no_quiet_groups_without_ping(autojump_clock: trio.testing.MockClock) -> None:
    """A quiet follower needs pings to notice a dead leader: no pings, no quiescing."""
    async with SimCluster.open(3, seed=25, transport_factory=_NoPingTransport) as c:
        gid = await c.create_group()
        await c.run_for(QUIESCE_AFTER + 3)
        assert not any(_group(n, gid).quiet for n in c.nodes)
        assert all(n.mgr.quiet_groups == 0 for n in c.nodes)
        assert c.network.stats.pings == 0


# ==============================================================================================
# Failover of quiet groups (node-level liveness)
# ==============================================================================================
async def test_quiet_leader_crash_fails_over_via_peer_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=26) as c:
        gids = await _quiet_cluster(c, 4)
        old = c.leader(gids[0])
        assert old is not None and all(c.leader(g) is old for g in gids)
        start = trio.current_time()
        await c.crash(old)
        assert await c.wait_until(
            lambda: all(c.leader(g) not in (None, old) for g in gids),
            timeout=10, poll=0.001)
        took = trio.current_time() - start
        # The connection resets told the followers at once: well within the lower election
        # timeout (pings alone would need more than that), and the target bound.
        assert c.network.stats.resets >= 2
        assert took < LOWER <= UPPER + 0.2
        await c.check_liveness()
        check_invariants(c)


async def test_quiet_leader_partitioned_fails_over_via_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=27) as c:
        gids = await _quiet_cluster(c, 4)
        old = c.leader(gids[0])
        assert old is not None
        start = trio.current_time()
        c.partition([old], [n for n in c.nodes if n is not old])  # no connection is reset
        assert await c.wait_until(
            lambda: all(c.leader(g) not in (None, old) for g in gids),
            timeout=10, poll=0.001)
        took = trio.current_time() - start
        assert c.network.stats.resets == 0 and c.network.stats.pings_failed > 0
        # A silent partition is noticed when one ping misses its (generous) deadline.
        timeout = old.mgr.config.liveness_timeout
        assert timeout <= took <= timeout + old.mgr.config.liveness_interval + UPPER + 0.2
        # The new leaders cannot quiesce while the old one is cut off (it lags behind).
        await c.run_for(QUIESCE_AFTER + 1)
        new = [c.leader(g) for g in gids]
        assert not any(n is not None and _group(n, g).quiet for n, g in zip(new, gids, strict=True))
        c.heal()
        await c.check_liveness()
        assert await c.wait_until(lambda: _all_quiet(c, gids), timeout=QUIESCE_AFTER + 2)
        check_invariants(c)


async def test_quiet_group_whose_leader_group_stops_on_a_live_node_fails_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The liveness hole found by the chaos rig (issue J): the leader's *group* stops
    (leave_group; a storage error takes the same path) while its node stays up, so the
    followers' pings to that node keep succeeding.  Before the fix the quiet group stayed
    leaderless until traffic woke it; the stopping leader now hands over (a takeover)."""
    async with SimCluster.open(3, seed=29) as c:
        gids = await _quiet_cluster(c, 3)
        gid, others = gids[0], gids[1:]
        old = c.leader(gid)
        assert old is not None
        term = _group(old, gid).core.term
        start = trio.current_time()
        await old.mgr.leave_group(gid)
        assert await c.wait_until(
            lambda: (n := c.leader(gid)) is not None and n is not old, timeout=10, poll=0.001)
        took = trio.current_time() - start
        new = c.leader(gid)
        assert new is not None and _group(new, gid).core.term > term
        assert took < LOWER  # handed over at once, not found by an election timeout
        # The node stayed up: its other groups still rest, quiet, on it.
        assert all(c.leader(g) is old and _group(old, g).quiet for g in others)
        check_invariants(c)


@pytest.mark.parametrize("down_for", [0.0, 1.0])
async def test_restarted_leader_node_quiet_groups_recover(
    down_for: float, autojump_clock: trio.testing.MockClock
) -> None:
    async with SimCluster.open(3, seed=28) as c:
        gids = await _quiet_cluster(c, 4)
        old = c.leader(gids[0])
        assert old is not None
        start = trio.current_time()
        await c.crash(old)
        await c.run_for(down_for)
        await c.restart(old)
        assert await c.wait_until(lambda: all(c.leader(g) is not None for g in gids),
                                  timeout=10, poll=0.001)
        assert trio.current_time() - start <= max(down_for, UPPER) + 0.2
        await c.check_liveness()
        assert await c.wait_until(lambda: _all_quiet(c, gids), timeout=QUIESCE_AFTER + 2)
        check_invariants(c)


# ==============================================================================================
# Coalesced heartbeats
# ==============================================================================================
class _BatchRecorder(SimTransport):
    """Records, per batch handed to the transport, the groups whose heartbeats it holds."""

    batches: ClassVar[list[tuple[float, str, str, list[str]]]] = []

    async def send_batch(
        self,
        peer: str,
        batch: Sequence[tuple[GroupEnvelope, ReplyCallback]],
        *,
        timeout: float,  # noqa: ASYNC109 - as in Transport.send_batch
        nursery: trio.Nursery,
    ) -> None:
        beats = [env.group_id for env, _ in batch
                 if env.message.type == MsgType.APPEND_ENTRIES_REQUEST
                 and not env.message.entries]
        if beats:
            self.batches.append((trio.current_time(), self.address, peer, beats))
        await super().send_batch(peer, batch, timeout=timeout, nursery=nursery)


async def test_heartbeats_of_many_groups_leave_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    params = dataclasses.replace(SIM_PARAMS, quiesce_after_ms=-1)
    _BatchRecorder.batches = []
    async with SimCluster.open(3, seed=29, params=params,
                               transport_factory=_BatchRecorder) as c:
        gids: list[str] = []
        for _ in range(8):  # elected at scattered times
            gids.append(await c.create_group())
            await c.run_for(c.rng.uniform(0.0, 0.3))
        _BatchRecorder.batches.clear()
        await c.run_for(2)
        batches = _BatchRecorder.batches
        interval = params.heartbeat_interval_ms / 1000
        ticks = {round(t / interval, 6) for t, *_ in batches}
        assert all(t == int(t) for t in ticks), "heartbeats off the interval grid"
        assert 19 <= len(ticks) <= 21
        # Each tick: one batch per peer, holding the heartbeat of every group.
        leader = c.node("n1").uuid
        for t, src, _peer, beats in batches:
            assert src == leader and sorted(beats) == sorted(gids), t
        assert len(batches) == 2 * len(ticks)


# ==============================================================================================
# The fast path for incoming requests
# ==============================================================================================
def _heartbeat_to(c: SimCluster, node: SimNode, gid: str, *, stale: bool = False) -> Message:
    core = _group(node, gid).core
    return Message(MsgType.APPEND_ENTRIES_REQUEST, core.term - (1 if stale else 0),
                   core.leader_id, node.server_id, last_log_term=core.log.last_term,
                   last_log_index=core.log.last_index, commit_index=core.commit)


async def _fast(mgr: Manager, env: GroupEnvelope) -> GroupEnvelope | StepError:
    box: list[GroupEnvelope | StepError] = []
    done = trio.Event()

    def respond(answer: GroupEnvelope | StepError) -> None:
        box.append(answer)
        done.set()

    assert mgr.step_nowait(env, respond)
    await done.wait()
    assert len(box) == 1
    return box[0]


async def test_step_nowait_answers_like_raft_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    params = dataclasses.replace(SIM_PARAMS, quiesce_after_ms=-1)
    async with SimCluster.open(3, seed=30, params=params) as c:
        gid = await c.create_group()
        await c.write_and_wait(gid, b"set a 1")
        n2 = c.node("n2")
        mgr = n2.mgr
        core = _group(n2, gid).core
        requests = [
            _heartbeat_to(c, n2, gid),
            _heartbeat_to(c, n2, gid, stale=True),
            Message(MsgType.PRE_VOTE_REQUEST, core.term + 1, c.node("n3").server_id,
                    n2.server_id, last_log_term=core.log.last_term,
                    last_log_index=core.log.last_index),
            Message(MsgType.APPEND_ENTRIES_REQUEST, core.term, core.leader_id, 12345),
        ]
        for msg in requests:
            env = GroupEnvelope(gid, GROUP_TYPE, n2.uuid, msg)
            before = _group(n2, gid).statistics().append_requests
            slow = await mgr.raft_step(env)
            fast = await _fast(mgr, env)
            assert fast == slow, msg
            if msg.type == MsgType.APPEND_ENTRIES_REQUEST:
                assert _group(n2, gid).statistics().append_requests == before + 2
        assert fast.message.result_code == ResultCode.BAD_REQUEST  # type: ignore[union-attr]

        # What needs the general path is left to it.
        def never(_: GroupEnvelope | StepError) -> None:
            raise AssertionError("respond called")

        entry = LogEntry(0, LogType.APP, b"x")
        leader_id = _group(n2, gid).core.leader_id
        for msg, group_id in [
            (Message(MsgType.CLIENT_REQUEST, 0, n2.server_id, leader_id, entries=(entry,)),
             gid),
            (Message(MsgType.ADD_SERVER_REQUEST, 0, 0, leader_id), gid),
            (Message(MsgType.JOIN_CLUSTER_REQUEST, 1, leader_id, n2.server_id),
             "00000000-0000-4000-8000-000000000000"),
            (Message(MsgType.APPEND_ENTRIES_RESPONSE, 1, leader_id, n2.server_id), gid),
        ]:
            assert not mgr.step_nowait(GroupEnvelope(group_id, GROUP_TYPE, n2.uuid, msg), never)


async def test_step_nowait_full_inbox_is_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(2, seed=31) as c:
        gid = await c.create_group()
        n2 = c.node("n2")
        env = GroupEnvelope(gid, GROUP_TYPE, n2.uuid, _heartbeat_to(c, n2, gid))
        answers: list[GroupEnvelope | StepError] = []
        all_in = trio.Event()
        inbox = 4096  # RaftGroup's default inbox size (plus the one its waiting task takes)
        sent = 0

        def respond(answer: GroupEnvelope | StepError) -> None:
            answers.append(answer)
            if len(answers) == sent:
                all_in.set()

        # No checkpoint in between: the group cannot drain its inbox meanwhile.
        while not answers and sent <= 2 * inbox:
            assert n2.mgr.step_nowait(env, respond)
            sent += 1
        assert inbox < sent <= inbox + 2
        refused = answers[0]
        assert isinstance(refused, StepError) and refused.status == Status.UNAVAILABLE
        with trio.fail_after(5):
            await all_in.wait()
        assert all(isinstance(a, GroupEnvelope) and a.message.accepted for a in answers[1:])


async def test_step_nowait_on_a_stopping_group_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(2, seed=32) as c:
        gid = await c.create_group()
        n2 = c.node("n2")
        env = GroupEnvelope(gid, GROUP_TYPE, n2.uuid, _heartbeat_to(c, n2, gid))
        answers: list[GroupEnvelope | StepError] = []
        n2.mgr._group_scopes[gid].cancel()  # the group stops at its next checkpoint ...
        assert n2.mgr.step_nowait(env, answers.append)  # ... with this request queued
        await n2.mgr.leave_group(gid)
        assert len(answers) == 1
        assert isinstance(answers[0], StepError) and answers[0].status == Status.CANCELLED
        # A stopped group is no longer hosted: the general path answers NOT_FOUND.
        assert not n2.mgr.step_nowait(env, answers.append)
        with pytest.raises(StepError) as missing:
            await n2.mgr.raft_step(env)
        assert missing.value.status == Status.NOT_FOUND


# ==============================================================================================
# SimTransport: ping, peer_lost, the quiesce flag on the wire
# ==============================================================================================
class _Watcher:
    """A step handler that records peer_lost notices."""

    def __init__(self) -> None:
        self.lost: list[tuple[float, str]] = []

    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        return GroupEnvelope(request.group_id, "", "", Message(
            request.message.type.response_type, request.message.term, request.message.dest,
            request.message.src, accepted=True))

    def peer_lost(self, peer: str) -> None:
        self.lost.append((trio.current_time(), peer))


async def test_sim_ping_follows_links(autojump_clock: trio.testing.MockClock) -> None:
    a, b = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        ta, tb = SimTransport(net, a), SimTransport(net, b)
        assert ta.supports_ping
        with pytest.raises(TransportError) as refused:
            await ta.ping(b, timeout=1)  # b not serving
        assert refused.value.status == Status.UNAVAILABLE
        wa, wb = _Watcher(), _Watcher()
        await nursery.start(ta.serve, wa)
        scope = trio.CancelScope()

        async def serve_b(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await tb.serve(wb, task_status=task_status)

        await nursery.start(serve_b)
        start = trio.current_time()
        await ta.ping(b, timeout=1)
        assert 0.002 <= trio.current_time() - start <= 0.010  # two legs of 1..5 ms
        for cut in ((a, b), (b, a)):  # either direction lost: the ping times out
            net.cut([cut[0]], [cut[1]])
            start = trio.current_time()
            with pytest.raises(TransportError) as lost:
                await ta.ping(b, timeout=0.25)
            assert lost.value.status == Status.DEADLINE_EXCEEDED
            assert trio.current_time() - start == pytest.approx(0.25)
            net.heal()
        await ta.ping(b, timeout=1)
        assert net.stats.sent == 0 and net.stats.pings == 5 and net.stats.pings_failed == 3
        # b stops serving: a hears of it after the link delay, as from a TCP reset.
        scope.cancel()
        await trio.sleep(0.01)
        assert [p for _, p in wa.lost] == [b] and not wb.lost
        nursery.cancel_scope.cancel()


async def test_sim_wire_keeps_the_quiesce_flag(autojump_clock: trio.testing.MockClock) -> None:
    a, b = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    seen: list[GroupEnvelope] = []

    class Handler(_Watcher):
        async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
            seen.append(request)
            return await super().raft_step(request)

    async with SimNetwork(seed=1, wire=True) as net, trio.open_nursery() as nursery:
        ta, tb = SimTransport(net, a), SimTransport(net, b)
        await nursery.start(tb.serve, Handler())
        msg = Message(MsgType.APPEND_ENTRIES_REQUEST, 3, 1, 2, commit_index=4)
        gid = "00000000-0000-4000-8000-000000000001"
        await ta.call(b, GroupEnvelope(gid, "t", b, msg, quiesce=True), timeout=1)
        await ta.call(b, GroupEnvelope(gid, "t", b, msg), timeout=1)
        assert [e.quiesce for e in seen] == [True, False]
        assert seen[0].message == msg
        nursery.cancel_scope.cancel()
