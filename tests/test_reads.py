"""Reads through real Managers (issue I): linearizable, follower, lease and stale reads, a
partitioned old leader's typed failure, the external client, and reads on quiet groups.

Managers run over the simulated network under trio's MockClock (SIM_PARAMS: heartbeat
100 ms, election timeout 400..800 ms); KVStateMachine answers ``get <key>``.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Any

import pytest
import trio
import trio.testing

from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import (
    BadRequest,
    NotLeader,
    RaftError,
    RaftTimeout,
    ServerNotFound,
    TermMismatch,
)
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import MsgType
from nuraft_mesg.reads import decode_client_read, encode_client_read
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing import SimCluster
from nuraft_mesg.testing.cluster import SIM_PARAMS, SimNode
from nuraft_mesg.testing.linearizability import History, check_kv
from nuraft_mesg.testing.local import LocalCluster
from nuraft_mesg.testing.sim import SimMessage

UPPER = SIM_PARAMS.election_timeout_ms[1] / 1000
LOCAL_PARAMS = RaftParams(heartbeat_interval_ms=100, election_timeout_ms=(200, 400))
GET_X = b"get x"


def _group(node: SimNode, gid: str) -> RaftGroup:
    return node.mgr._groups[gid]


async def _leader_and_followers(c: SimCluster, gid: str) -> tuple[SimNode, list[SimNode]]:
    assert await c.wait_until(lambda: c.leader(gid) is not None, timeout=10)
    lead = c.leader(gid)
    assert lead is not None
    return lead, [n for n in c.nodes if n is not lead]


async def test_a_follower_read_sees_a_write_acknowledged_on_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=3) as c:
        gid = await c.create_group()
        lead, (f1, f2) = await _leader_and_followers(c, gid)
        # f2 gets none of the leader's appends: the write is acknowledged by {lead, f1}.
        blocked = c.network.add_filter(
            lambda m: (not m.is_reply and m.src == lead.uuid and m.dst == f2.uuid
                       and m.envelope is not None
                       and m.envelope.message.type == MsgType.APPEND_ENTRIES_REQUEST))
        w = await c.write_and_wait(gid, b"set x 1", via=lead)
        assert w.acked
        assert await f2.mgr.read(gid, GET_X, mode="stale") == b"-"  # f2 is behind
        answers: list[bytes] = []

        async def read() -> None:
            answers.append(await f2.mgr.read(gid, GET_X, timeout=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await c.run_for(2 * UPPER)
            assert answers == []  # it has the index, but has not applied up to it
            c.network.remove_filter(blocked)
        assert answers == [b"=1"]
        assert await f1.mgr.read(gid, GET_X) == b"=1"
        assert await lead.mgr.group(gid).read(GET_X) == b"=1"
        st = _group(f2, gid).statistics()
        assert (st.reads_linearizable, st.reads_stale) == (1, 1)


async def test_many_concurrent_reads_share_heartbeat_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=4) as c:
        gid = await c.create_group()
        lead, _ = await _leader_and_followers(c, gid)
        await c.write_and_wait(gid, b"set x 7", via=lead)
        sent = _group(lead, gid).statistics().messages_sent
        results: list[bytes] = []

        async def read() -> None:
            results.append(await lead.mgr.read(gid, GET_X))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(read)
        assert results == [b"=7"] * 50
        # One round (two heartbeats), or two if a tick round overlapped: not 50 rounds.
        assert _group(lead, gid).statistics().messages_sent - sent <= 4


async def test_a_partitioned_old_leader_fails_reads_typed_and_never_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=5) as c:
        gid = await c.create_group()
        old, others = await _leader_and_followers(c, gid)
        await c.write_and_wait(gid, b"set x 1", via=old)
        c.partition([old], others)
        assert await c.wait_until(
            lambda: any(_group(n, gid).is_leader for n in others), timeout=10)
        new = next(n for n in others if _group(n, gid).is_leader)
        assert (await c.write_and_wait(gid, b"set x 2", via=new)).acked
        started = trio.current_time()
        with pytest.raises((RaftTimeout, NotLeader)):
            await old.mgr.read(gid, GET_X, timeout=1.0)
        assert trio.current_time() - started <= 1.0 + 1e-6
        assert _group(old, gid).statistics().reads_failed >= 1
        # Stale mode still answers from the old state; a node of the majority is current.
        assert await old.mgr.read(gid, GET_X, mode="stale") == b"=1"
        assert await others[0].mgr.read(gid, GET_X) == b"=2"


async def test_lease_reads_answer_without_messages_while_the_lease_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    params = dataclasses.replace(SIM_PARAMS, lease_reads=True)
    async with SimCluster.open(3, seed=6, params=params) as c:
        gid = await c.create_group()
        lead, (f1, _) = await _leader_and_followers(c, gid)
        await c.write_and_wait(gid, b"set x 3", via=lead)
        await c.run_for(0.3)  # a few heartbeat rounds renew the lease
        group = _group(lead, gid)
        assert group.core.lease_valid(trio.current_time())
        sent = group.statistics().messages_sent
        assert await lead.mgr.read(gid, GET_X, mode="lease") == b"=3"
        assert group.statistics().messages_sent == sent
        assert group.statistics().reads_lease == 1
        # On a follower a lease read is a linearizable read through the leader.
        assert await f1.mgr.read(gid, GET_X, mode="lease") == b"=3"


async def test_read_refusals_are_typed(autojump_clock: trio.testing.MockClock) -> None:
    async with SimCluster.open(1, seed=7) as c:
        gid = await c.create_group()
        (node,) = c.nodes
        assert await c.wait_until(lambda: c.leader(gid) is not None, timeout=10)
        with pytest.raises(BadRequest, match="lease reads are off"):
            await node.mgr.read(gid, GET_X, mode="lease")
        with pytest.raises(BadRequest, match="read mode"):
            await node.mgr.read(gid, GET_X, mode="fast")
        with pytest.raises(BadRequest):
            await node.mgr.read(gid, b"put x")  # the state machine refuses the query
        with pytest.raises(ServerNotFound):
            await node.mgr.read("no-such-group", GET_X)
        assert await node.mgr.read(gid, GET_X) == b"-"  # a group of one: no messages


def test_client_read_encoding_round_trips_and_refuses_junk() -> None:
    for mode in ("linearizable", "lease", "stale"):
        assert decode_client_read((encode_client_read(mode, b"get k"),)) == (mode, b"get k")
    with pytest.raises(BadRequest):
        decode_client_read(())
    bad = dataclasses.replace(encode_client_read("stale", b"q"), buffer=b"\x09q")
    with pytest.raises(BadRequest, match="mode"):
        decode_client_read((bad,))


async def test_reads_on_quiet_groups_wake_no_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=8) as c:
        gids = [await c.create_group() for _ in range(4)]
        await c.write_and_wait(gids[0], b"set x 5")

        def all_quiet() -> bool:
            return all(_group(n, g).quiet for n in c.nodes for g in gids)

        assert await c.wait_until(all_quiet, timeout=10 * UPPER)
        before = {(n.name, g): _group(n, g).statistics() for n in c.nodes for g in gids}
        lead, followers = await _leader_and_followers(c, gids[0])
        assert await lead.mgr.read(gids[0], GET_X) == b"=5"  # a round of quiesce heartbeats
        assert await followers[0].mgr.read(gids[0], GET_X) == b"=5"  # read index forwarded
        assert all_quiet()  # nobody woke (not even the group read)
        await c.run_for(5 * UPPER)
        assert all_quiet()
        for (name, g), st in before.items():
            now = _group(c.node(name), g).statistics()
            assert now.quiet and now.term == st.term, (name, g)
            if g != gids[0]:
                assert now.messages_sent == st.messages_sent, (name, g)
        # The read group sent two rounds of one heartbeat per follower, and one forward.
        sent = sum(_group(n, gids[0]).statistics().messages_sent
                   - before[(n.name, gids[0])].messages_sent for n in c.nodes)
        assert 0 < sent <= 2 * len(followers) + 1


def _drop_read_index(m: SimMessage) -> bool:
    return m.envelope is not None and m.envelope.message.type in (
        MsgType.READ_INDEX_REQUEST, MsgType.READ_INDEX_RESPONSE)


async def test_a_follower_read_whose_forward_is_lost_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=9) as c:
        gid = await c.create_group()
        _, (f1, _) = await _leader_and_followers(c, gid)
        c.network.add_filter(_drop_read_index)
        with pytest.raises(RaftTimeout):
            await f1.mgr.read(gid, GET_X, timeout=0.5)


# -- the external client, over gRPC ------------------------------------------------------------
async def test_external_client_reads_through_any_member() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with LocalCluster.open(
            3, group_types={"reads": LOCAL_PARAMS}, default_group_type="reads"
        ) as cluster:
            app1, app2, app3 = cluster.nodes
            await app1.mgr.create_group(gid, "reads")
            await app1.mgr.add_member(gid, app2.uuid)
            await app1.mgr.add_member(gid, app3.uuid)
            async with ExternalClient(cluster.directory) as client:
                assert await client.append_entry(gid, b"set x 9", dest=app1.uuid) == b"OK"
                # A follower answers from its own state, at the leader's read index.
                assert await client.read(gid, GET_X, dest=app3.uuid) == b"=9"
                assert await client.read(gid, b"get nope", dest=app2.uuid) == b"-"
                assert await client.read(gid, GET_X, dest=app1.uuid, mode="stale") == b"=9"
                with pytest.raises(BadRequest):
                    await client.read(gid, b"bogus", dest=app2.uuid)
                with pytest.raises(BadRequest):
                    await client.read(gid, GET_X, dest=app2.uuid, mode="lease")  # off here
                with pytest.raises(ServerNotFound):
                    await client.read(str(uuid.uuid4()), GET_X, dest=app1.uuid)
                # The leader dies: the survivors elect another and keep answering.
                await cluster.kill(app1)
                assert await client.read(gid, GET_X, dest=app2.uuid) == b"=9"


@pytest.mark.parametrize("lease", [False, True], ids=["no-lease", "lease"])
async def test_an_early_election_waits_out_the_lease(
    autojump_clock: trio.testing.MockClock, lease: bool,
) -> None:
    """When node-level liveness says the leader's node is dead, a follower campaigns within
    half the lower election timeout -- but with lease reads, never before the lower election
    timeout since it last heard the leader: the leader may still be serving from its lease."""
    params = dataclasses.replace(SIM_PARAMS, lease_reads=lease)
    low = params.election_timeout_ms[0] / 1000
    async with SimCluster.open(3, seed=10, params=params) as c:
        gid = await c.create_group()
        lead, (f1, _) = await _leader_and_followers(c, gid)
        await c.run_for(0.25)
        group = _group(f1, gid)
        heard = group._leader_heard_at
        assert trio.current_time() - heard < SIM_PARAMS.heartbeat_interval_ms / 1000 * 1.5
        assert group.leader_lost(lead.uuid)
        if lease:
            assert group._election_deadline >= heard + low
        else:
            assert group._election_deadline <= trio.current_time() + low / 2


async def test_reads_are_exported_as_metrics(autojump_clock: trio.testing.MockClock) -> None:
    metrics = pytest.importorskip("nuraft_mesg.metrics")
    async with SimCluster.open(1, seed=11) as c:
        gid = await c.create_group()
        (node,) = c.nodes
        assert await c.wait_until(lambda: c.leader(gid) is not None, timeout=10)
        await node.mgr.read(gid, GET_X)
        await node.mgr.read(gid, GET_X, mode="stale")
        with pytest.raises(BadRequest):
            await node.mgr.read(gid, b"nonsense")
        text = metrics.render(node.mgr).decode()
        for mode, count in (("linearizable", 1), ("lease", 0), ("stale", 1)):
            assert (f'nuraft_mesg_group_reads_total{{group="{gid}",mode="{mode}",'
                    f'server="{node.uuid}"}} {count:.1f}') in text
        assert (f'nuraft_mesg_group_reads_failed_total{{group="{gid}",server="{node.uuid}"}}'
                " 1.0") in text


# -- end to end: a history of writes and reads under a partition is linearizable --------------
async def _client(c: SimCluster, gid: str, history: Any, client: int, until: float,
                  rng: random.Random, mode: str) -> None:
    """Random puts (through the leader) and reads (through any node, in ``mode``)."""
    seq = 0
    while trio.current_time() < until:
        key = f"k{rng.randrange(3)}"
        if rng.random() < 0.4:
            seq += 1
            value = f"{client}.{seq}"
            node = c.leader(gid) or c.nodes[rng.randrange(len(c.nodes))]
            op = history.invoke(client, "put", key, value, time=trio.current_time())
            try:
                await node.mgr.append_entries(gid, [f"set {key} {value}".encode()])
            except (NotLeader, TermMismatch):
                history.fail(op, time=trio.current_time())  # never appended, or replaced
            except RaftError:
                history.info(op, time=trio.current_time())  # may still commit
            else:
                history.ok(op, time=trio.current_time())
        else:
            node = c.nodes[rng.randrange(len(c.nodes))]
            op = history.invoke(client, "get", key, time=trio.current_time())
            try:
                answer = await node.mgr.read(gid, f"get {key}".encode(), mode=mode,
                                             timeout=0.5)
            except RaftError:
                history.fail(op, time=trio.current_time())  # a failed read had no effect
            else:
                history.ok(op, KVStateMachine.decode_get(answer), time=trio.current_time())
        await trio.sleep(rng.uniform(0, 0.02))


@pytest.mark.parametrize("mode", ["linearizable", "lease", "stale"])
async def test_reads_and_writes_under_a_partition_are_linearizable_unless_stale(
    autojump_clock: trio.testing.MockClock, mode: str,
) -> None:
    params = dataclasses.replace(SIM_PARAMS, lease_reads=True)
    async with SimCluster.open(3, seed=12, params=params) as c:
        gid = await c.create_group()
        lead, _ = await _leader_and_followers(c, gid)
        history = History()
        rng = random.Random(12)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for client in range(6):
                nursery.start_soon(_client, c, gid, history, client, start + 6.0,
                                   random.Random(rng.random()), mode)
            await trio.sleep(1.5)
            c.isolate(lead)  # the old leader keeps running, cut off, while the others elect
            await trio.sleep(2.5)
            c.heal()
        result = check_kv(history, timeout=30)
        if mode == "stale":
            # The control: the cut-off old leader answers from its old state, and the
            # checker sees it (so the scenario does exercise a deposed leader).
            assert result.violations, str(result)
            return
        assert result.ok, str(result)
        gets = [op for op in history.operations() if op.kind == "get" and op.status == "ok"]
        assert len(gets) > 50 and len({op.output for op in gets}) > 3
