"""nuraft_mesg.testing.faults: link cuts between wrapped transports, and partitions of real
loopback nodes (the REPL's partition()/heal())."""

from __future__ import annotations

import uuid

import pytest
import trio

from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.testing.faults import NetworkFaults
from nuraft_mesg.testing.local import LocalCluster
from nuraft_mesg.transport.base import Status, StepHandler, Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope


class EchoTransport(Transport):
    """Answers every call at once and remembers which calls reached "the peer"."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def serve(self, handler: StepHandler, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(0)

    async def call(self, peer: str, request: GroupEnvelope, *,
                   timeout: float) -> GroupEnvelope:  # noqa: ASYNC109
        await trio.lowlevel.checkpoint()
        self.delivered.append(peer)
        return request


def _envelope() -> GroupEnvelope:
    msg = Message(MsgType.APPEND_ENTRIES_REQUEST, 1, 1, 2)
    return GroupEnvelope(str(uuid.uuid4()), "t", "b", msg)


def test_partition_sides_and_the_rest() -> None:
    faults = NetworkFaults()
    for u in "abcd":
        faults.wrap(u, EchoTransport())
    faults.partition(["a"])
    assert faults.cut_links == {(x, y) for x in "a" for y in "bcd"} | {
        (y, x) for x in "a" for y in "bcd"
    }
    faults.heal()
    assert faults.cut_links == frozenset()
    faults.partition(["a", "b"], ["c"])  # three sides: {a, b}, {c}, the rest {d}
    pairs = {frozenset(p) for p in faults.cut_links}
    assert pairs == {frozenset(p) for p in ["ac", "ad", "bc", "bd", "cd"]}
    assert not faults.is_cut("a", "b")
    with pytest.raises(ValueError):
        faults.partition(["a"], ["a", "b"])


async def test_a_cut_link_fails_fast_and_a_one_way_cut_loses_the_reply() -> None:
    faults = NetworkFaults()
    inner_a, inner_b = EchoTransport(), EchoTransport()
    a, b = faults.wrap("a", inner_a), faults.wrap("b", inner_b)
    env = _envelope()

    assert await a.call("b", env, timeout=1) == env

    faults.block("a", "b")  # what a sends does not reach b
    with pytest.raises(TransportError) as err:
        await a.call("b", env, timeout=1)
    assert err.value.status == Status.UNAVAILABLE
    assert inner_a.delivered == ["b"]  # never sent

    # b -> a still arrives (and is processed), but a's answer is lost on the way back.
    with pytest.raises(TransportError) as err:
        await b.call("a", env, timeout=1)
    assert "reply lost" in err.value.message
    assert inner_b.delivered == ["a"]
    assert faults.refused == 2

    faults.unblock("a", "b")
    assert await b.call("a", env, timeout=1) == env


async def test_partition_of_real_nodes_fails_over_and_heals() -> None:
    faults = NetworkFaults()
    gid = str(uuid.uuid4())
    with trio.fail_after(30):
        async with LocalCluster.open(3, transport_wrapper=faults.wrap) as cluster:
            n1, n2, n3 = cluster.nodes
            assert faults.nodes == [n1.uuid, n2.uuid, n3.uuid]
            await n1.mgr.create_group(gid, "test")
            for n in (n2, n3):
                await n1.mgr.add_member(gid, n.uuid, priority=100)
            await n1.mgr.append_entries(gid, [b"set a 1"])

            faults.partition([n1.uuid])
            new = await cluster.wait_leader(gid, among=[n2, n3])
            await new.mgr.append_entries(gid, [b"set b 2"])
            commit = new.mgr.group(gid).statistics().commit_index
            assert n1.mgr.group(gid).statistics().applied_index < commit
            assert faults.refused > 0

            faults.heal()
            await cluster.wait_applied(gid, commit)
            assert cluster.applied_log(n1, gid) == cluster.applied_log(new, gid)

            # The wrapper survives restarts: a restarted node is wrapped again.
            await cluster.kill(n3)
            await cluster.restart(n3)
            assert faults.nodes == [n1.uuid, n2.uuid, n3.uuid]
            faults.partition([n3.uuid])
            leader = await cluster.wait_leader(gid, among=[n1, n2])
            await leader.mgr.append_entries(gid, [b"set c 3"])
            commit = leader.mgr.group(gid).statistics().commit_index
            assert n3.mgr.group(gid).statistics().applied_index < commit
            faults.heal()
            await cluster.wait_applied(gid, commit)
