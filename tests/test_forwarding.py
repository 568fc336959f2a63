"""Writes forwarded to the leader (issue M): ``append_entries`` on a follower returns exactly
the leader state machine's per-entry results, in order, one per entry -- or raises a typed
error.  Never an empty placeholder, never a partial list that looks successful.

Real transports (GrpcTransport, three Managers on loopback).  The state machine is a counter
whose result names the entry's position among all applied entries and echoes its payload, so
a wrong, empty or misplaced result is visible.
"""

from __future__ import annotations

import itertools
import uuid
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from nuraft_mesg import NotLeader, RaftError, RaftParams
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.raft.types import ClusterConfig
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.testing.local import LocalCluster, LocalNode

GROUP_TYPE = "fwd"
PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300),
                    auto_forwarding=True)
SIZES = (1, 5, 64)


class Counter(StateMachine):
    """Counts applied entries; entry ``data`` applied as the n-th returns ``b"n:data"``."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self._last_index = 0

    def commit(self, index: int, data: bytes) -> bytes:
        self._last_index = index
        self.applied.append(data)
        return b"%d:%s" % (len(self.applied), data)

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self._last_index = index

    def last_commit_index(self) -> int:
        return self._last_index


def check_results(batch: list[bytes], results: list[bytes]) -> list[int]:
    """The results are one per entry, in order, each naming its own entry, at consecutive
    positions (one proposal is appended contiguously); returns the positions."""
    assert len(results) == len(batch), (len(batch), results)
    positions = []
    for data, result in zip(batch, results, strict=True):
        count, sep, echoed = result.partition(b":")
        assert sep and echoed == data, f"result {result!r} for entry {data!r}"
        positions.append(int(count))
    assert positions == list(range(positions[0], positions[0] + len(batch))), positions
    return positions


async def three_node_group(cluster: LocalCluster) -> tuple[str, LocalNode]:
    gid = str(uuid.uuid4())
    a, b, c = cluster.nodes
    await a.mgr.create_group(gid, GROUP_TYPE)
    await a.mgr.add_member(gid, b.uuid)
    await a.mgr.add_member(gid, c.uuid)
    await cluster.wait_until(lambda: all(
        n.mgr.group(gid).leader_id == a.uuid for n in cluster.nodes))
    return gid, a


def open_cluster() -> AbstractAsyncContextManager[LocalCluster]:
    return LocalCluster.open(3, group_types={GROUP_TYPE: PARAMS},
                             default_group_type=GROUP_TYPE, state_machine_factory=Counter)


def applied_on(node: LocalNode, gid: str) -> list[bytes]:
    sm = node.app.state_managers[gid].get_state_machine()
    assert isinstance(sm, Counter)
    return sm.applied


async def test_batches_through_followers_and_leader_return_the_leaders_results() -> None:
    """Batches of 1, 5 and 64 entries through the leader and through each follower (one
    at a time, then all three nodes writing at once): every call returns one result per
    entry, in order, naming its entry; the positions they name are the entries' positions
    in the applied log, each position exactly once."""
    names = (b"n%d" % i for i in itertools.count())
    with trio.fail_after(60):
        async with open_cluster() as cluster:
            gid, leader = await three_node_group(cluster)
            seen: dict[int, bytes] = {}

            async def write(node: LocalNode, size: int) -> None:
                batch = [next(names) for _ in range(size)]
                results = await node.mgr.append_entries(gid, batch)
                for pos, data in zip(check_results(batch, results), batch, strict=True):
                    assert pos not in seen
                    seen[pos] = data

            for size in SIZES:
                for node in cluster.nodes:
                    for _ in range(3):
                        await write(node, size)
            for size in SIZES:
                async with trio.open_nursery() as nursery:
                    for node in cluster.nodes:
                        for _ in range(8):
                            nursery.start_soon(write, node, size)
            applied = applied_on(leader, gid)
            assert sorted(seen) == list(range(1, len(applied) + 1))
            assert [seen[p] for p in sorted(seen)] == applied


async def test_a_leader_change_during_forwarded_batches_gives_results_or_typed_errors() -> None:
    """Writers keep forwarding batches through the followers while leadership moves (the
    leader yields to another member, three times).  Each call either returns the complete,
    correct result list or raises a RaftError; every returned result names the entry the
    final state machine applied at that position."""
    names = (b"m%d" % i for i in itertools.count())
    with trio.fail_after(90):
        async with open_cluster() as cluster:
            gid, _ = await three_node_group(cluster)
            returned: dict[int, bytes] = {}
            errors: list[RaftError] = []
            done = trio.Event()

            async def writer(wid: int) -> None:
                sizes = itertools.cycle(SIZES)
                while not done.is_set():
                    node = cluster.nodes[wid % 3]
                    leader = cluster.leader_of(gid)
                    if node is leader:  # a follower is what forwards
                        node = cluster.nodes[(wid + 1) % 3]
                    batch = [next(names) for _ in range(next(sizes))]
                    try:
                        results = await node.mgr.append_entries(gid, batch)
                    except RaftError as exc:
                        errors.append(exc)
                        await trio.sleep(0.02)  # back-off before the next batch
                        continue
                    for pos, data in zip(check_results(batch, results), batch, strict=True):
                        returned[pos] = data

            async with trio.open_nursery() as nursery:
                for wid in range(6):
                    nursery.start_soon(writer, wid)
                async def progress(results: int) -> None:
                    target = len(returned) + results
                    await cluster.wait_until(lambda: len(returned) >= target)

                for _ in range(3):
                    old = await cluster.wait_leader(gid)
                    await progress(100)
                    target = next(n for n in cluster.nodes if n is not old)
                    await old.mgr.yield_leadership(gid, target.uuid)
                    await cluster.wait_until(
                        lambda: cluster.leader_of(gid) not in (None, old))  # noqa: B023
                await progress(100)
                done.set()
            leader = await cluster.wait_leader(gid)
            commit = leader.mgr.group(gid).statistics().commit_index
            await cluster.wait_applied(gid, commit)
            applied = applied_on(leader, gid)
            for node in cluster.nodes:
                assert applied_on(node, gid) == applied
            for pos, data in returned.items():
                assert applied[pos - 1] == data, (pos, data)


async def test_external_client_batches_through_every_node_return_per_entry_results() -> None:
    """ExternalClient.append_entries through a follower is redirected to the leader; through
    any node, a batch of 1, 5 or 64 entries returns one result per entry, in order."""
    names = (b"e%d" % i for i in itertools.count())
    with trio.fail_after(60):
        async with open_cluster() as cluster:
            gid, leader = await three_node_group(cluster)
            positions: list[int] = []
            async with ExternalClient(cluster.directory) as client:
                for size in SIZES:
                    for node in cluster.nodes:
                        batch = [next(names) for _ in range(size)]
                        results = await client.append_entries(gid, batch, dest=node.uuid)
                        positions += check_results(batch, results)
                        if size == 1:
                            assert await client.append_entry(gid, b"one", dest=node.uuid) \
                                == b"%d:one" % (positions[-1] + 1)
                            positions.append(positions[-1] + 1)
            assert positions == list(range(1, len(applied_on(leader, gid)) + 1))


async def test_no_leader_is_a_typed_error_with_no_false_leader_hint() -> None:
    """With the leader and one follower down, a write on the survivor fails with a typed
    error; once it knows no leader (restarted alone), NotLeader names no leader (-1) -- not
    the requester -- through the external client as through the node's own
    append_entries."""
    with trio.fail_after(60):
        async with open_cluster() as cluster:
            gid, leader = await three_node_group(cluster)
            survivor = cluster.nodes[2]
            await cluster.kill(cluster.nodes[1])
            await cluster.kill(leader)
            try:  # it may still name the dead leader: forwarding there fails
                await survivor.mgr.append_entries(gid, [b"x"])
            except RaftError:
                pass
            else:
                raise AssertionError("a write without a quorum succeeded")
            # (Pre-votes that fail leave the dead leader named; a restart forgets it.)
            await cluster.kill(survivor)
            await cluster.restart(survivor)
            assert survivor.mgr.group(gid).leader_id == ""
            with pytest.raises(NotLeader) as local:
                await survivor.mgr.append_entries(gid, [b"y"])
            assert local.value.leader_id == -1
            async with ExternalClient(cluster.directory, retry_timeout=0.3) as client:
                with pytest.raises(NotLeader) as external:
                    await client.append_entries(gid, [b"z", b"w"], dest=survivor.uuid)
            assert external.value.leader_id == -1
