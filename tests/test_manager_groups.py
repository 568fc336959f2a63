"""Many groups over a few Managers on real purerpc: multiplexing, isolation, bad peers."""

from __future__ import annotations

import dataclasses
import uuid

import trio

from nuraft_mesg import ManagerConfig, NotLeader, RaftParams
from nuraft_mesg.testing.local import LocalCluster


# Three nodes share this one process, and every Raft message is its own unary RaftStep (as in
# nuraft_mesg), so 50 groups heartbeating every 50 ms would need ~6,000 RPCs/s from one
# interpreter.  Slower heartbeats keep the test about correctness, not throughput.
def _patient(config: ManagerConfig) -> ManagerConfig:
    """Correctness, not timing: waits are generous so a loaded CI machine cannot fail them."""
    return dataclasses.replace(config, leader_change_timeout=15.0, client_request_timeout=15.0)


MANY_GROUPS = {"test": RaftParams(heartbeat_interval_ms=250, election_timeout_ms=(1000, 2000))}


async def test_fifty_groups_over_three_managers() -> None:
    """50 groups, leaders spread over 3 nodes, writes to every group: every member applies
    exactly its own group's writes, in the same order (no cross-group leakage)."""
    groups = [str(uuid.uuid4()) for _ in range(50)]
    with trio.fail_after(120):
        async with LocalCluster.open(3, group_types=MANY_GROUPS, configure=_patient) as cluster:
            nodes = cluster.nodes

            # Creation is bounded to a few groups at a time: each add_member waits at most
            # leader_change_timeout, and 150 joins at once on a loaded 2-core CI machine
            # would test the machine, not the library.
            limiter = trio.CapacityLimiter(8)

            async def create(k: int, gid: str) -> None:
                async with limiter:
                    await create_one(k, gid)

            async def create_one(k: int, gid: str) -> None:
                owner = nodes[k % 3]
                await owner.mgr.create_group(gid, "test")
                for other in nodes:
                    if other is not owner:
                        await owner.mgr.add_member(gid, other.uuid)

            async with trio.open_nursery() as nursery:
                for k, gid in enumerate(groups):
                    nursery.start_soon(create, k, gid)

            leaders = {gid: cluster.leader_of(gid) for gid in groups}
            assert {n.name for n in leaders.values() if n is not None} == {
                "node1", "node2", "node3"
            }

            async def write(gid: str) -> None:
                for w in range(4):
                    while True:
                        # A starved event loop can cost a leadership; NotLeader means the
                        # entry was not appended, so retrying cannot duplicate it.
                        leader = await cluster.wait_leader(gid)
                        try:
                            await leader.mgr.append_entries(gid, [f"set {gid} {w}".encode()])
                            break
                        except NotLeader:
                            continue

            async with trio.open_nursery() as nursery:
                for gid in groups:
                    nursery.start_soon(write, gid)

            for gid in groups:
                leader = await cluster.wait_leader(gid)
                await cluster.wait_applied(gid, leader.mgr.group(gid).statistics().commit_index)
                logs = [cluster.applied_log(n, gid) for n in nodes]
                assert logs[0] == logs[1] == logs[2], (gid, logs)
                data = [d for _, d in logs[0]]
                assert data == [f"set {gid} {w}".encode() for w in range(4)]


async def test_unresolvable_and_dead_peers_do_not_block_others() -> None:
    """A member whose address cannot be resolved and a member that is down: the three
    healthy members of every group keep committing."""
    groups = [str(uuid.uuid4()) for _ in range(4)]
    with trio.fail_after(60):
        async with LocalCluster.open(5, configure=_patient) as cluster:
            n1, n2, n3, n4, n5 = cluster.nodes
            for gid in groups:
                await n1.mgr.create_group(gid, "test")
                for other in (n2, n3, n4, n5):
                    await n1.mgr.add_member(gid, other.uuid)
            # n4's address becomes unknown (and its process is gone); n5 is simply down.
            await cluster.kill(n4)
            del cluster.directory[n4.uuid]
            await cluster.kill(n5)
            for gid in groups:
                for w in range(5):
                    assert await n1.mgr.append_entries(gid, [f"set k{w} {w}".encode()]) == [b"OK"]
            for gid in groups:
                await cluster.wait_applied(gid, n1.mgr.group(gid).statistics().commit_index)
                assert cluster.applied_log(n2, gid) == cluster.applied_log(n1, gid)
                status = {p.id: p for p in n1.mgr.group(gid).raft_status()}
                # The leader knows the dead peers lag behind.
                assert status[n5.uuid].last_log_idx < status[n1.uuid].last_log_idx
                assert status[n4.uuid].last_log_idx < status[n1.uuid].last_log_idx
