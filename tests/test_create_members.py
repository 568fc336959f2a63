"""create_group(members=...): a group that starts with all its members (one election instead
of two joins and two configuration changes)."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.raft.types import MsgType
from nuraft_mesg.testing import SimCluster, check_invariants
from nuraft_mesg.testing.cluster import GROUP_TYPE, SIM_PARAMS


async def _create_everywhere(c: SimCluster, gid: str, order: list[int],
                             delays: list[float] | None = None) -> None:
    members = [c.nodes[i].uuid for i in order]
    delays = delays or [0.0] * len(c.nodes)

    async def create(node_index: int, delay: float) -> None:
        await trio.sleep(delay)
        await c.nodes[node_index].mgr.create_group(gid, GROUP_TYPE, members=members)

    async with trio.open_nursery() as nursery:
        for i, delay in zip(order, delays, strict=True):
            nursery.start_soon(create, i, delay)


async def test_every_member_creating_it_gives_one_group_led_by_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=41) as c:
        gid = await c.create_group([c.nodes[1], c.nodes[0], c.nodes[2]], all_at_once=True)
        assert c.leader(gid) is c.nodes[1]
        assert all({s.endpoint for s in n.mgr.get_srv_config_all(gid)} ==
                   {m.uuid for m in c.nodes} for n in c.nodes)
        assert (await c.write_and_wait(gid, b"set x 1")).acked
        # One election: no joins, no configuration changes.
        sent = [m.envelope.message.type for _, m, _ in c.network.trace if m.envelope]
        assert MsgType.REQUEST_VOTE_REQUEST in sent
        assert MsgType.JOIN_CLUSTER_REQUEST not in sent
        assert all(len(n.cores[gid].config.servers) == 3 for n in c.nodes)
        check_invariants(c)


async def test_members_created_late_still_form_the_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first member campaigns before the others host the group; its pre-votes are
    refused (NOT_FOUND) until they do, and the group still gets a leader."""
    async with SimCluster.open(3, seed=42) as c:
        gid = str(uuid.uuid4())
        await _create_everywhere(c, gid, [0, 1, 2], delays=[0.0, 1.5, 2.0])
        assert await c.wait_until(lambda: all(n.mgr.group(gid).leader_id for n in c.nodes),
                                  timeout=10)
        assert (await c.write_and_wait(gid, b"set y 2")).acked
        check_invariants(c)


async def test_a_restarted_member_keeps_its_first_configuration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=43) as c:
        gid = str(uuid.uuid4())
        await _create_everywhere(c, gid, [0, 1, 2])
        assert (await c.write_and_wait(gid, b"set z 3")).acked
        await c.crash(c.nodes[2])
        await c.restart(c.nodes[2])
        assert await c.wait_until(lambda: c.nodes[2].mgr.group(gid).leader_id != "",
                                  timeout=10)
        assert {s.endpoint for s in c.nodes[2].mgr.get_srv_config_all(gid)} == {
            n.uuid for n in c.nodes}
        check_invariants(c)


async def test_bad_member_lists_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with SimCluster.open(2, seed=44) as c:
        mgr = c.nodes[0].mgr
        other = c.nodes[1].uuid
        for members in ([other], [mgr.server_uuid, mgr.server_uuid], ["not-a-uuid"]):
            with pytest.raises(BadRequest):
                await mgr.create_group(str(uuid.uuid4()), GROUP_TYPE, members=members)


async def test_the_others_give_the_first_member_a_head_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """If the first member never creates the group, the others wait out their hold (five
    upper election timeouts) and then elect one of themselves."""
    async with SimCluster.open(3, seed=45) as c:
        gid = str(uuid.uuid4())
        members = [n.uuid for n in c.nodes]  # n1 first, and n1 never calls create_group
        start = trio.current_time()
        for node in c.nodes[1:]:
            await node.mgr.create_group(gid, GROUP_TYPE, members=members)
        assert await c.wait_until(lambda: c.leader(gid) is not None, timeout=30, poll=0.01)
        hold = 5 * SIM_PARAMS.election_timeout_ms[1] / 1000
        assert trio.current_time() - start >= hold
        assert c.leader(gid) in c.nodes[1:]
