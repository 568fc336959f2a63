"""Snapshots survive restarts with ``data_dir``: a node whose log was compacted behind
snapshots restarts from the snapshot its store persisted (taken by itself or received from
the leader) into a fresh in-memory state machine, then replays the log after it.  Where no
usable snapshot is stored (a state machine without snapshot support, a snapshot gone or
damaged), the group still refuses to start rather than silently skip the compacted prefix."""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path

import pytest
import trio

from nuraft_mesg import InMemoryApplication, Manager, ManagerConfig, RaftParams
from nuraft_mesg.raft.types import SnapshotMeta
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.storage.sqlite import DB_NAME, SqliteStateMachine, SqliteStore
from nuraft_mesg.testing.local import LocalCluster, LocalNode

TYPE = "kv"
SNAPSHOTTING = RaftParams(
    heartbeat_interval_ms=50, election_timeout_ms=(150, 300), snapshot_distance=5,
    reserved_log_items=2,
)


def _small_objects() -> KVStateMachine:
    return KVStateMachine(snapshot_chunk_size=64)  # several objects per snapshot


def patient(config: ManagerConfig) -> ManagerConfig:
    return dataclasses.replace(config, client_request_timeout=30.0)


@asynccontextmanager
async def _cluster(data_dir: Path, n: int = 3) -> AsyncIterator[LocalCluster]:
    async with LocalCluster.open(0, group_types={TYPE: SNAPSHOTTING}, default_group_type=TYPE,
                                 data_dir=data_dir, configure=patient) as cluster:
        for _ in range(n):
            node = await cluster.add_node()
            node.app.state_machine_factory = _small_objects
        yield cluster


def _forget_memory(cluster: LocalCluster, node: LocalNode) -> None:
    """A new application object for a stopped node: nothing survives in memory, as after a
    process restart; only its data_dir remains."""
    assert not node.up
    node.app = InMemoryApplication(node.uuid, cluster.directory,
                                   state_machine_factory=_small_objects)


def kv(node: LocalNode, gid: str) -> KVStateMachine:
    sm = node.app.state_managers[gid].get_state_machine()
    assert isinstance(sm, KVStateMachine)
    return sm


def store(node: LocalNode) -> SqliteStore:
    s = node.mgr.store
    assert s is not None
    return s


def applied(node: LocalNode, gid: str) -> int:
    return node.mgr.group(gid).statistics().applied_index


class _Logged(logging.Handler):
    """Collects records of the ``nuraft_mesg`` loggers matching ``pattern``; :meth:`wait`
    waits for ``count`` of them (records are emitted in the trio thread)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)
        self.records: list[logging.LogRecord] = []
        self._event = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.pattern.search(record.getMessage()):
            self.records.append(record)
            self._event.set()
            self._event = trio.Event()

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    async def wait(self, count: int = 1) -> None:
        while len(self.records) < count:
            await self._event.wait()


@contextmanager
def _logged(pattern: str) -> Iterator[_Logged]:
    handler = _Logged(pattern)
    root = logging.getLogger("nuraft_mesg")
    level = root.level
    root.setLevel(logging.INFO)  # the rejoin is reported at INFO
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def _start_from_disk(cluster: LocalCluster, gid: str, nodes: list[LocalNode]) -> None:
    """Start stopped nodes and wait until each one rejoined the group from its store (a lone
    node's rejoin changes nothing else that could be waited for)."""
    with _logged(f"(rejoined|cannot rejoin) stored group {gid}") as outcome:
        for n in nodes:
            await cluster.start(n)
        await outcome.wait(len(nodes))
    assert not [m for m in outcome.messages if "cannot" in m], outcome.messages
    assert all(gid in n.mgr.group_ids for n in nodes)


async def _write(cluster: LocalCluster, gid: str, acked: dict[str, str], count: int,
                 tag: str) -> None:
    for k in range(count):
        leader = await cluster.wait_leader(gid)
        key, value = f"{tag}{k}", f"{tag}-value-{k}"
        assert await leader.mgr.append_entries(gid, [f"set {key} {value}".encode()]) == [b"OK"]
        acked[key] = value


async def _create(cluster: LocalCluster, gid: str) -> None:
    n1, *others = cluster.nodes
    await n1.mgr.create_group(gid, TYPE)
    for other in others:
        await n1.mgr.add_member(gid, other.uuid, priority=100)


async def test_every_node_restarts_from_its_snapshots(tmp_path: Path) -> None:
    gid = str(uuid.uuid4())
    acked: dict[str, str] = {}
    with trio.fail_after(90):
        async with _cluster(tmp_path) as cluster:
            await _create(cluster, gid)
            await _write(cluster, gid, acked, 40, "a")  # 8 snapshot distances
            target = applied(await cluster.wait_leader(gid), gid)
            await cluster.wait_applied(gid, target)
            before: dict[str, SnapshotMeta] = {}
            for n in cluster.nodes:
                snap = store(n).stored_snapshot(gid)
                assert snap is not None and snap.last_index >= 30
                lstore = n.mgr.lookup_state_manager(gid).load_log_store()  # type: ignore[union-attr]
                assert lstore.start_index() > 20  # compacted far behind
                before[n.name] = snap
            histories = {n.name: kv(n, gid).applied for n in cluster.nodes}

            for n in cluster.nodes:
                await cluster.kill(n)
                _forget_memory(cluster, n)
            await _start_from_disk(cluster, gid, cluster.nodes)
            await cluster.wait_applied(gid, target)
            for n in cluster.nodes:
                sm = kv(n, gid)
                # Restored from its own stored snapshot, then the log after it.
                assert sm.last_snapshot() is not None
                assert sm.last_snapshot().last_index >= before[n.name].last_index  # type: ignore[union-attr]
                assert isinstance(n.mgr.lookup_state_manager(gid).get_state_machine(),  # type: ignore[union-attr]
                                  SqliteStateMachine)
                assert sm.data == acked, n.name
                assert sm.applied[: len(histories[n.name])] == histories[n.name]

            # And the group goes on: more snapshots, all replicas equal.
            await _write(cluster, gid, acked, 12, "b")
            await cluster.wait_applied(gid, applied(await cluster.wait_leader(gid), gid))
            for n in cluster.nodes:
                assert kv(n, gid).data == acked, n.name
            logs = [kv(n, gid).applied for n in cluster.nodes]
            assert logs[0] == logs[1] == logs[2]


async def test_follower_restarts_from_the_snapshot_it_received(tmp_path: Path) -> None:
    gid = str(uuid.uuid4())
    acked: dict[str, str] = {}
    with trio.fail_after(90):
        async with _cluster(tmp_path) as cluster:
            n1, n2, n3 = cluster.nodes
            await _create(cluster, gid)
            await _write(cluster, gid, acked, 2, "a")
            await cluster.wait_applied(gid, applied(n1, gid))
            behind = applied(n3, gid)
            own = store(n3).stored_snapshot(gid)  # maybe one n3 took of the first entries

            await cluster.kill(n3)
            await _write(cluster, gid, acked, 30, "b")
            leader = await cluster.wait_leader(gid)
            lstore = leader.mgr.lookup_state_manager(gid).load_log_store()  # type: ignore[union-attr]
            assert lstore.start_index() > behind + 1  # n3 can only catch up by snapshot

            # n3 comes back (same memory) and installs the leader's snapshot.
            await cluster.restart(n3)
            target = applied(leader, gid)
            await cluster.wait_applied(gid, target)
            installed = kv(n3, gid).last_snapshot()
            assert installed is not None and installed == kv(leader, gid).last_snapshot()
            assert own is None or own.last_index < installed.last_index
            await store(n3).barrier()
            assert store(n3).stored_snapshot(gid) == installed  # not one n3 took itself
            n3_log = n3.mgr.lookup_state_manager(gid).load_log_store()  # type: ignore[union-attr]
            assert n3_log.start_index() == installed.last_index + 1

            # Everything stops; n3 alone comes back with fresh memory: what it has it can only
            # have from its own disk.
            for n in cluster.nodes:
                await cluster.kill(n)
                _forget_memory(cluster, n)
            await _start_from_disk(cluster, gid, [n3])
            await cluster.wait_applied(gid, target, among=[n3])
            sm3 = kv(n3, gid)
            assert sm3.last_snapshot() == installed
            assert sm3.data == acked

            await _start_from_disk(cluster, gid, [n1, n2])
            await _write(cluster, gid, acked, 3, "c")
            await cluster.wait_applied(gid, applied(await cluster.wait_leader(gid), gid))
            for n in cluster.nodes:
                assert kv(n, gid).data == acked, n.name


async def test_leave_group_deletes_the_snapshots(tmp_path: Path) -> None:
    me, keep, drop = (str(uuid.uuid4()) for _ in range(3))
    cfg = ManagerConfig(server_uuid=me, data_dir=str(tmp_path))
    with trio.fail_after(20):
        async with Manager(cfg, InMemoryApplication(me, state_machine_factory=_small_objects)
                           ) as mgr:
            mgr.register_group_type(TYPE, SNAPSHOTTING)
            for gid in (keep, drop):
                await mgr.create_group(gid, TYPE)
                for i in range(12):
                    await mgr.append_entries(gid, [f"set k{i} {i}".encode()])
            assert mgr.store is not None and mgr.store.stored_snapshot(drop) is not None
            await mgr.leave_group(drop)
            assert mgr.store.stored_snapshot(drop) is None
    with closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        (key,) = db.execute("SELECT gkey FROM groups WHERE group_id=?", (keep,)).fetchone()
        for table in ("snapshot", "snapshot_object"):
            rows = db.execute(f"SELECT DISTINCT gkey FROM {table}").fetchall()
            assert rows == [(key,)], table


# -- where no usable snapshot is stored, the group still refuses to start -----------------------
class _NoSnapshots(KVStateMachine):
    __slots__ = ()

    @property
    def supports_snapshots(self) -> bool:
        return False


@pytest.mark.parametrize("case", ["no snapshot support", "snapshot gone", "snapshot damaged"])
async def test_compacted_log_without_a_usable_snapshot_is_refused(
    tmp_path: Path, case: str
) -> None:
    me, gid = str(uuid.uuid4()), str(uuid.uuid4())
    cfg = ManagerConfig(server_uuid=me, data_dir=str(tmp_path))
    with trio.fail_after(20):
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, SNAPSHOTTING)
            await mgr.create_group(gid, TYPE)
            for i in range(20):
                await mgr.append_entries(gid, [f"set k{i} {i}".encode()])
            smgr = mgr.lookup_state_manager(gid)
            assert smgr is not None
            assert smgr.load_log_store().start_index() > 1  # compacted on disk
        factory = KVStateMachine
        if case == "no snapshot support":
            factory = _NoSnapshots
        else:
            with closing(sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)) as db:
                if case == "snapshot gone":  # as in a store written before format 2
                    db.execute("DELETE FROM snapshot_object")
                    db.execute("DELETE FROM snapshot")
                else:
                    db.execute("UPDATE snapshot_object SET crc=crc+1 WHERE obj_id=0")
        expected = {
            "no snapshot support": "state machine has applied only up to 0",
            "snapshot gone": "state machine has applied only up to 0",
            "snapshot damaged": "snapshot object 0 of 1 fails its checksum",
        }[case]
        with _logged(f"cannot rejoin stored group {gid}") as refused:
            async with Manager(cfg, InMemoryApplication(me, state_machine_factory=factory)
                               ) as mgr:
                mgr.register_group_type(TYPE, SNAPSHOTTING)  # rejoins in the background
                await refused.wait()
                assert gid not in mgr.group_ids
        assert any(expected in m for m in refused.messages), refused.messages
