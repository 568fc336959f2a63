"""Snapshots on live Managers over loopback: a group whose log is compacted behind snapshots
(``snapshot_distance=10``, ``reserved_log_items=5``) still brings a new member, and a member
that was down through two snapshots, up to date -- by sending them the leader's snapshot
(KVStateMachine objects of 64 bytes, so several per snapshot), then the log tail."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import trio

from nuraft_mesg import RaftParams
from nuraft_mesg.manager import ManagerConfig
from nuraft_mesg.raft.types import ClusterConfig, ServerConfig, SnapshotMeta
from nuraft_mesg.storage.memory import KVStateMachine, MemoryStateManager
from nuraft_mesg.testing.local import LocalCluster, LocalNode

GROUP_TYPE = "snap"
PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300),
                    snapshot_distance=10, reserved_log_items=5)


def patient(config: ManagerConfig) -> ManagerConfig:
    """Writes wait longer than the default 3 s: a loaded test machine must not fail them."""
    return dataclasses.replace(config, client_request_timeout=30.0)


def small_objects(node: LocalNode) -> None:
    node.app.state_machine_factory = lambda: KVStateMachine(snapshot_chunk_size=64)


def smgr(node: LocalNode, gid: str) -> MemoryStateManager:
    return node.app.state_managers[gid]


def kv(node: LocalNode, gid: str) -> KVStateMachine:
    sm = smgr(node, gid).get_state_machine()
    assert isinstance(sm, KVStateMachine)
    return sm


def applied(node: LocalNode, gid: str) -> int:
    return node.mgr.group(gid).statistics().applied_index


async def write(node: LocalNode, gid: str, count: int, tag: str) -> None:
    for k in range(count):
        assert await node.mgr.append_entries(gid, [f"set {tag}{k % 7} {tag}-{k}".encode()]) == [
            b"OK"]


async def test_new_member_joins_after_compaction_and_catches_up_by_snapshot() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(120):
        async with LocalCluster.open(
            2, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE,
            configure=patient,
        ) as cluster:
            n1, n2 = cluster.nodes
            for n in cluster.nodes:
                small_objects(n)
            await n1.mgr.create_group(gid, GROUP_TYPE)
            await n1.mgr.add_member(gid, n2.uuid)
            await write(n1, gid, 30, "k")
            leader_sm = kv(n1, gid)
            snap = leader_sm.last_snapshot()
            assert snap is not None and snap.last_index >= 30
            store = smgr(n1, gid).load_log_store()
            assert store.start_index() == snap.last_index - 5 + 1
            assert len(snap.config.servers) == 2

            n3 = await cluster.add_node()
            small_objects(n3)
            await n1.mgr.add_member(gid, n3.uuid)
            await write(n1, gid, 3, "after")
            target = applied(n1, gid)
            await cluster.wait_applied(gid, target)
            new_sm = kv(n3, gid)
            # It installed a snapshot: it never applied the early entries one by one, yet
            # its state (and even its applied history) equals the leader's.
            installed = new_sm.last_snapshot()
            assert installed is not None and installed.last_index >= snap.last_index
            assert smgr(n3, gid).load_log_store().start_index() > 1
            assert new_sm.data == leader_sm.data
            assert new_sm.applied == leader_sm.applied
            assert {s.endpoint for s in n3.mgr.get_srv_config_all(gid)} == {
                n1.uuid, n2.uuid, n3.uuid}
            # And it keeps up with normal replication afterwards.
            await write(n1, gid, 12, "tail")
            await cluster.wait_applied(gid, applied(n1, gid))
            assert kv(n3, gid).data == leader_sm.data == kv(n2, gid).data


async def test_follower_down_through_two_snapshots_catches_up() -> None:
    gid = str(uuid.uuid4())
    with trio.fail_after(120):
        async with LocalCluster.open(
            3, group_types={GROUP_TYPE: PARAMS}, default_group_type=GROUP_TYPE,
            configure=patient,
        ) as cluster:
            n1, n2, n3 = cluster.nodes
            for n in cluster.nodes:
                small_objects(n)
            await n1.mgr.create_group(gid, GROUP_TYPE)
            await n1.mgr.add_member(gid, n2.uuid)
            await n1.mgr.add_member(gid, n3.uuid)
            await write(n1, gid, 3, "a")
            await cluster.wait_applied(gid, applied(n1, gid))
            behind = applied(n3, gid)
            assert kv(n3, gid).last_snapshot() is None

            await cluster.kill(n3)
            leader_sm = kv(n1, gid)
            snapshots = set()
            for round_ in range(3):
                await write(n1, gid, 10, f"r{round_}")
                snap = leader_sm.last_snapshot()
                assert snap is not None
                snapshots.add(snap.last_index)
            assert len(snapshots) >= 2 and min(snapshots) > behind
            assert smgr(n1, gid).load_log_store().start_index() > behind + 1

            await cluster.restart(n3)
            await write(n1, gid, 2, "back")
            await cluster.wait_applied(gid, applied(n1, gid))
            sm3 = kv(n3, gid)
            assert sm3.data == leader_sm.data
            assert sm3.applied == leader_sm.applied
            installed = sm3.last_snapshot()
            assert installed is not None and installed.last_index > behind

            # A member restarted over its compacted log and its snapshot carries on.
            assert smgr(n2, gid).load_log_store().start_index() > 1
            await cluster.kill(n2)
            await cluster.restart(n2)
            await write(n1, gid, 12, "again")
            await cluster.wait_applied(gid, applied(n1, gid))
            assert kv(n2, gid).data == kv(n3, gid).data == leader_sm.data


def test_kv_state_machine_snapshot_round_trip() -> None:
    """The KVStateMachine's hooks on their own: objects of the configured size, staged in
    order, applied as a whole; contract violations raise."""
    cfg = ClusterConfig((ServerConfig(1, "a"),), log_idx=1)
    src = KVStateMachine(snapshot_chunk_size=16)
    src.commit_config(1, cfg)
    for i in range(2, 12):
        src.commit(i, f"set k{i % 3} v{i}".encode())
    assert src.supports_snapshots and src.last_snapshot() is None
    meta = SnapshotMeta(11, 1, cfg)
    with pytest.raises(ValueError):
        src.create_snapshot(SnapshotMeta(10, 1, cfg))  # not the applied index
    src.create_snapshot(meta)
    assert src.last_snapshot() == meta
    objects: list[tuple[bytes, bool]] = []
    while not objects or not objects[-1][1]:
        objects.append(src.read_snapshot_chunk(meta, len(objects)))
    assert len(objects) > 3 and all(len(d) <= 16 for d, _ in objects)
    with pytest.raises(ValueError):
        src.read_snapshot_chunk(meta, len(objects))
    with pytest.raises(ValueError):
        src.read_snapshot_chunk(SnapshotMeta(5, 1, cfg), 0)

    dst = KVStateMachine()
    dst.commit(1, b"set old 1")
    with pytest.raises(ValueError):
        dst.save_snapshot_chunk(meta, 1, objects[1][0], False, False)  # nothing staged
    for k, (data, last) in enumerate(objects):
        dst.save_snapshot_chunk(meta, k, data, k == 0, last)
        if k == 1:
            with pytest.raises(ValueError):
                dst.apply_snapshot(meta)  # incomplete
    dst.apply_snapshot(meta)
    assert dst.data == src.data and dst.applied == src.applied and dst.configs == src.configs
    assert dst.last_commit_index() == 11 and dst.last_snapshot() == meta
    assert dst.commit(12, b"set k9 x") == b"OK"
