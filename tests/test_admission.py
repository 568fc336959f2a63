"""Admission control (issue K): a node refuses a write with :class:`Busy` once its group
(``RaftParams.max_pending_proposals``) or the node (``ManagerConfig.max_pending_proposals``)
has as many writes waiting for their commit as it allows; the refused writes are never
appended, the admitted ones all commit, and the group keeps its leader.

Simulated network and MockClock: the clock is frozen, so every message stays in flight and
the admitted writes stay pending exactly as long as the test looks at them; then the clock
runs again and they commit.  Forwarded and external writes are
checked over real gRPC, the bound filled through the Manager's own counter.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from nuraft_mesg import Busy, ManagerConfig, RaftError, RaftParams, ResultCode
from nuraft_mesg.admission import Admission
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.errors import RaftError as BaseRaftError
from nuraft_mesg.testing import SimCluster, check_invariants
from nuraft_mesg.testing.cluster import SIM_PARAMS
from nuraft_mesg.testing.local import LocalCluster

GROUP_LIMIT = 4
NODE_LIMIT = 6
PARAMS = dataclasses.replace(SIM_PARAMS, max_pending_proposals=GROUP_LIMIT)


def _node_limit(cfg: ManagerConfig) -> ManagerConfig:
    return dataclasses.replace(cfg, max_pending_proposals=NODE_LIMIT)


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="max_pending_proposals"):
        RaftParams(max_pending_proposals=0)
    with pytest.raises(ValueError, match="max_pending_proposals"):
        ManagerConfig(server_uuid=str(uuid.uuid4()), max_pending_proposals=0)
    assert Busy().code == ResultCode.SERVER_IS_BUSY
    assert isinstance(BaseRaftError.for_code(ResultCode.SERVER_IS_BUSY), Busy)
    assert ResultCode.from_wire(ResultCode.SERVER_IS_BUSY.wire) == ResultCode.SERVER_IS_BUSY


def test_counter_enforces_both_bounds_and_forgets_idle_groups() -> None:
    adm = Admission(limit=3)
    adm.enter("a", 2)
    adm.enter("a", 2)
    with pytest.raises(Busy, match="group a"):
        adm.enter("a", 2)
    adm.enter("b", 2)
    with pytest.raises(Busy, match="this node"):
        adm.enter("b", 2)
    assert (adm.pending, adm.pending_in("a"), adm.pending_in("b"), adm.refused) == (3, 2, 1, 2)
    adm.leave("a")
    adm.enter("b", 2)  # the node has room again
    for g in ("a", "b", "b"):
        adm.leave(g)
    assert adm.pending == 0 and adm._by_group == {}


async def _run_writes(nursery: trio.Nursery, write: Callable[[bytes], Awaitable[list[bytes]]],
                      payloads: list[bytes], outcome: dict[bytes, object]) -> None:
    async def one(p: bytes) -> None:
        try:
            outcome[p] = await write(p)
        except RaftError as exc:
            outcome[p] = exc

    for p in payloads:
        nursery.start_soon(one, p)


async def test_bounds_refuse_typed_lose_nothing_and_keep_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=71, params=PARAMS, configure=_node_limit) as c:
        g1, g2 = await c.create_group(), await c.create_group()
        leader = c.leader(g1)
        assert leader is not None and leader.manager is not None
        if c.leader(g2) is not leader:
            c.campaign(leader, g2)
            assert await c.wait_until(lambda: c.leader(g2) is leader, timeout=30)
        mgr = leader.manager
        changes_before = [mgr.group(g).statistics().leader_changes for g in (g1, g2)]
        # a frozen clock: every message stays in flight (links take 1-5 ms), nothing
        # commits and no timer fires, until it runs again
        autojump_clock.autojump_threshold = math.inf
        outcome: dict[bytes, object] = {}
        first = [b"g1-%d" % i for i in range(GROUP_LIMIT + 2)]
        second = [b"g2-%d" % i for i in range(3)]
        async with trio.open_nursery() as nursery:
            await _run_writes(nursery, lambda p: mgr.append_entries(g1, [p]), first, outcome)
            await trio.testing.wait_all_tasks_blocked()
            await _run_writes(nursery, lambda p: mgr.append_entries(g2, [p]), second, outcome)
            await trio.testing.wait_all_tasks_blocked()
            # exactly the bounds: 4 in g1 (its own bound), then 2 in g2 (the node's)
            assert mgr.admission.pending_in(g1) == GROUP_LIMIT
            assert mgr.admission.pending_in(g2) == NODE_LIMIT - GROUP_LIMIT
            assert mgr.admission.pending == NODE_LIMIT
            # (trio starts tasks in no fixed order: which ones were refused is not known)
            refused = {p: e for p, e in outcome.items() if isinstance(e, RaftError)}
            assert all(isinstance(e, Busy) for e in refused.values()), refused
            assert len([p for p in refused if p in first]) == 2
            assert len([p for p in refused if p in second]) == 1
            assert all("group" in str(e) for p, e in refused.items() if p in first)
            assert all("node" in str(e) for p, e in refused.items() if p in second)
            assert mgr.admission.refused == 3
            assert len(outcome) == 3, outcome  # the rest wait for their commit
            autojump_clock.autojump_threshold = 0
        admitted = [p for p in first + second if p not in refused]
        assert len(admitted) == NODE_LIMIT
        assert all(isinstance(outcome[p], list) for p in admitted), [
            (p, outcome[p]) for p in admitted if not isinstance(outcome[p], list)]
        assert mgr.admission.pending == 0
        for gid, sent in ((g1, first), (g2, second)):
            applied = [d for _, d in c.applied_log(leader, gid)]
            kept = [p for p in sent if p in admitted]
            assert sorted(p for p in applied if p in sent) == sorted(kept)  # none refused
            assert c.leader(gid) is leader
        assert [mgr.group(g).statistics().leader_changes for g in (g1, g2)] == changes_before
        check_invariants(c)


LOCAL_PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300),
                          auto_forwarding=True, max_pending_proposals=2)


async def test_forwarded_and_external_writes_get_busy_from_a_full_leader() -> None:
    async with LocalCluster.open(3, group_types={"adm": LOCAL_PARAMS},
                                 default_group_type="adm") as cluster:
        gid = str(uuid.uuid4())
        a, b, c = cluster.nodes
        await a.mgr.create_group(gid, "adm")
        await a.mgr.add_member(gid, b.uuid)
        await a.mgr.add_member(gid, c.uuid)
        await cluster.wait_until(lambda: all(
            n.mgr.group(gid).leader_id == a.uuid for n in cluster.nodes))
        for _ in range(2):  # the leader's group is at its bound
            a.mgr.admission.enter(gid, LOCAL_PARAMS.max_pending_proposals)
        with pytest.raises(Busy):
            await b.mgr.append_entries(gid, [b"forwarded"])
        assert b.mgr.admission.pending == 0  # the follower let go of it too
        async with ExternalClient(cluster.directory, request_timeout=2.0,
                                  retry_timeout=0.0) as client:
            with pytest.raises(Busy):
                await client.append_entry(gid, b"external", a.uuid)
            assert a.mgr.admission.refused == 2
            a.mgr.admission.leave(gid)
            assert await client.append_entry(gid, b"external", a.uuid) is not None
        assert await b.mgr.append_entries(gid, [b"forwarded"])
        a.mgr.admission.leave(gid)
        assert a.mgr.admission.pending == 0
