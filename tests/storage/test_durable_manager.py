"""Managers with ``ManagerConfig(data_dir=...)``: the durable default store end to end."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio

from nuraft_mesg import InMemoryApplication, Manager, ManagerConfig, RaftParams
from nuraft_mesg.errors import Failed, ServerNotFound, StorageError
from nuraft_mesg.raft.types import LogType
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.storage.sqlite import DB_NAME, SqliteStateMachine, SqliteStateManager
from nuraft_mesg.testing.local import LocalCluster

PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))
TYPE = "kv"


async def _write_all(mgr: Manager, gid: str, items: list[bytes]) -> None:
    for item in items:
        assert await mgr.append_entries(gid, [item]) == [b"OK"]


def _machine(mgr: Manager, gid: str) -> KVStateMachine:
    smgr = mgr.lookup_state_manager(gid)
    assert smgr is not None
    sm = smgr.get_state_machine()
    if isinstance(sm, SqliteStateMachine):  # snapshots are persisted through a wrapper
        sm = sm.delegate
    assert isinstance(sm, KVStateMachine)
    return sm


async def test_single_node_restart_rejoins_with_state_intact(tmp_path: Path) -> None:
    me = str(uuid.uuid4())
    gid, other = str(uuid.uuid4()), str(uuid.uuid4())
    cfg = ManagerConfig(server_uuid=me, data_dir=str(tmp_path))
    writes = [f"set k{i} v{i}".encode() for i in range(20)]
    with trio.fail_after(20):
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, PARAMS)
            mgr.register_group_type("other", PARAMS)
            await mgr.create_group(gid, TYPE)
            await mgr.create_group(other, "other")
            await _write_all(mgr, gid, writes)
            smgr = mgr.lookup_state_manager(gid)
            assert isinstance(smgr, SqliteStateManager)
            before = smgr.read_state()
            log_before = smgr.load_log_store()
            entries_before = log_before.entries(1, log_before.next_slot())
            config_before = smgr.load_config()
            assert before is not None and before.commit >= 21
        # A new application object: nothing survives in memory, as after a process restart.
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            assert mgr.store is not None
            assert {r.group_id: r.group_type for r in mgr.store.groups()} == {
                gid: TYPE, other: "other"
            }
            mgr.register_group_type(TYPE, PARAMS)
            # Rejoined as soon as the group type is known; "other" waits for its type.
            with trio.fail_after(5):
                while gid not in mgr.group_ids:
                    await mgr.wait_changed()
            assert other not in mgr.group_ids
            smgr = mgr.lookup_state_manager(gid)
            assert isinstance(smgr, SqliteStateManager)
            after = smgr.read_state()
            assert after is not None
            assert (after.term, after.vote) == (before.term, before.vote)
            store = smgr.load_log_store()
            assert store.entries(1, log_before.next_slot()) == entries_before
            assert smgr.load_config() == config_before
            # The fresh in-memory state machine is rebuilt from the durable log.
            with trio.fail_after(5):
                while _machine(mgr, gid).last_commit_index() < before.commit:
                    await mgr.wait_changed()
            sm = _machine(mgr, gid)
            assert sm.data == {f"k{i}": f"v{i}" for i in range(20)}
            assert [d for _, d in sm.applied][:20] == writes
            # ... and it keeps serving (re-elected: a single-member group).
            await mgr.group(gid).wait_leader()
            assert await mgr.append_entries(gid, [b"set after restart"]) == [b"OK"]
            assert sm.data["after"] == "restart"
            mgr.register_group_type("other", PARAMS)
            with trio.fail_after(5):
                while other not in mgr.group_ids:
                    await mgr.wait_changed()


async def test_three_nodes_all_restarted_from_disk(tmp_path: Path) -> None:
    """Every node stopped, then a whole new cluster (new processes' worth of memory) on the
    same data dirs: every group comes back with its members, log and leader."""
    groups = [str(uuid.uuid4()) for _ in range(3)]
    with trio.fail_after(45):
        async with LocalCluster.open(3, group_types={TYPE: PARAMS}, default_group_type=TYPE,
                                     data_dir=tmp_path) as cluster:
            uuids = [n.uuid for n in cluster.nodes]
            for k, gid in enumerate(groups):
                owner = cluster.nodes[k]
                await owner.mgr.create_group(gid, TYPE)
                for other in cluster.nodes:
                    if other is not owner:
                        await owner.mgr.add_member(gid, other.uuid, priority=100)
                await _write_all(owner.mgr, gid, [f"set g{k}k{i} {i}".encode() for i in range(10)])
            commits = {}
            for gid in groups:
                leader = await cluster.wait_leader(gid)
                commits[gid] = leader.mgr.group(gid).statistics().commit_index
        async with LocalCluster.open(0, group_types={TYPE: PARAMS}, default_group_type=TYPE,
                                     data_dir=tmp_path) as cluster:
            for u in uuids:
                await cluster.add_node(node_uuid=u)
            for k, gid in enumerate(groups):
                leader = await cluster.wait_leader(gid)
                await cluster.wait_applied(gid, commits[gid])
                await leader.mgr.append_entries(gid, [b"set again yes"])
                await cluster.wait_applied(gid, commits[gid] + 2)
                logs = [cluster.applied_log(n, gid) for n in cluster.nodes]
                assert logs[0] == logs[1] == logs[2]
                datas = [_machine(n.mgr, gid).data for n in cluster.nodes]
                assert datas[0] == datas[1] == datas[2]
                assert datas[0]["again"] == "yes"
                assert all(datas[0][f"g{k}k{i}"] == str(i) for i in range(10))


async def test_leave_group_deletes_the_data(tmp_path: Path) -> None:
    me = str(uuid.uuid4())
    keep, drop = str(uuid.uuid4()), str(uuid.uuid4())
    cfg = ManagerConfig(server_uuid=me, data_dir=str(tmp_path))
    with trio.fail_after(20):
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, PARAMS)
            for gid in (keep, drop):
                await mgr.create_group(gid, TYPE)
                await _write_all(mgr, gid, [b"set a 1", b"set b 2"])
            smgr = mgr.lookup_state_manager(drop)
            assert smgr is not None
            await mgr.leave_group(drop)
            assert drop not in mgr.group_ids
            assert mgr.store is not None and drop not in mgr.store
            assert smgr.read_state() is None
            with pytest.raises(StorageError):
                await smgr.save_state(smgr.read_state() or _hs())
        # On disk: not a single row of the group is left.
        with closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
            (key,) = db.execute("SELECT gkey FROM groups WHERE group_id=?", (keep,)).fetchone()
            assert db.execute("SELECT count(*) FROM groups").fetchone() == (1,)
            for table in ("log", "hard_state", "config", "log_boundary"):
                rows = db.execute(f"SELECT DISTINCT gkey FROM {table}").fetchall()
                assert set(rows) <= {(key,)}, table
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, PARAMS)
            with trio.fail_after(5):
                while keep not in mgr.group_ids:
                    await mgr.wait_changed()
            assert drop not in mgr.group_ids
            # A group left behind can be created again from nothing.
            await mgr.create_group(drop, TYPE)
            assert await mgr.append_entries(drop, [b"set new 1"]) == [b"OK"]
            smgr = mgr.lookup_state_manager(drop)
            assert smgr is not None
            store = smgr.load_log_store()
            assert [e.buffer for e in store.entries(1, store.next_slot())
                    if e.type == LogType.APP] == [b"set new 1"]


def _hs() -> Any:
    from nuraft_mesg.raft.types import HardState

    return HardState(term=9, vote=-1, commit=0)


class _FailingConnection:
    """Wraps a sqlite3.Connection; every statement fails like a dying disk."""

    def __init__(self, inner: sqlite3.Connection) -> None:
        self._inner = inner

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith(("BEGIN", "ROLLBACK")):
            return self._inner.execute(sql, *args)
        raise sqlite3.OperationalError("disk I/O error")

    def executemany(self, sql: str, *args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_disk_failure_stops_the_groups_and_acknowledges_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader's disk fails: the write in flight raises (never acknowledged), the leader's
    groups stop with a clear ERROR, and the other nodes (other stores) carry on."""
    gid = str(uuid.uuid4())
    caplog.set_level(logging.ERROR)
    with trio.fail_after(40):
        async with LocalCluster.open(3, group_types={TYPE: PARAMS}, default_group_type=TYPE,
                                     data_dir=tmp_path) as cluster:
            owner = cluster.nodes[0]
            await owner.mgr.create_group(gid, TYPE)
            for other in cluster.nodes[1:]:
                await owner.mgr.add_member(gid, other.uuid, priority=100)
            await _write_all(owner.mgr, gid, [b"set before 1"])
            store = owner.mgr.store
            assert store is not None
            applied_before = _machine(owner.mgr, gid).last_commit_index()
            store._conn = _FailingConnection(store._conn)  # type: ignore[assignment]
            with pytest.raises(Failed):
                await owner.mgr.append_entries(gid, [b"set lost 1"])
            assert store.failed is not None
            assert "disk I/O error" in str(store.failed)
            assert gid not in owner.mgr.group_ids
            with pytest.raises(ServerNotFound):
                await owner.mgr.append_entries(gid, [b"set refused 1"])
            # Nothing was applied (so nothing acknowledged) on the failed node.
            assert _machine(owner.mgr, gid).last_commit_index() == applied_before
            assert "lost" not in _machine(owner.mgr, gid).data
            messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any(str(store.path) in m and "disk I/O error" in m for m in messages)
            # The other replicas elect a new leader among themselves and keep serving.
            survivors = cluster.nodes[1:]
            leader = await cluster.wait_leader(gid, among=survivors)
            assert await leader.mgr.append_entries(gid, [b"set after 2"]) == [b"OK"]
            # The failed store refuses everything, including leave_group's deletion.
            with pytest.raises(StorageError):
                await owner.mgr.leave_group(gid)
            store._conn = store._conn._inner  # type: ignore[attr-defined]


async def test_disk_full_is_a_storage_error(tmp_path: Path) -> None:
    """A real SQLITE_FULL (the database may not grow): the write raises, nothing is applied."""
    me = str(uuid.uuid4())
    gid = str(uuid.uuid4())
    cfg = ManagerConfig(server_uuid=me, data_dir=str(tmp_path))
    with trio.fail_after(20):
        async with Manager(cfg, InMemoryApplication(me)) as mgr:
            mgr.register_group_type(TYPE, PARAMS)
            await mgr.create_group(gid, TYPE)
            await _write_all(mgr, gid, [b"set a 1"])
            store = mgr.store
            assert store is not None
            pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
            store._conn.execute(f"PRAGMA max_page_count={pages}")
            big = b"set big " + b"x" * 200_000
            with pytest.raises(Failed, match="full"):
                await mgr.append_entries(gid, [big])
            assert isinstance(store.failed, StorageError)
            assert gid not in mgr.group_ids
            assert "big" not in _machine(mgr, gid).data


async def test_two_managers_cannot_share_a_data_dir(tmp_path: Path) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with trio.fail_after(10):
        async with Manager(ManagerConfig(server_uuid=a, data_dir=str(tmp_path)),
                           InMemoryApplication(a)):
            with pytest.raises(StorageError, match="in use"):
                async with Manager(ManagerConfig(server_uuid=a, data_dir=str(tmp_path)),
                                   InMemoryApplication(a)):
                    pass  # pragma: no cover
        with pytest.raises(StorageError, match="belongs to server"):
            async with Manager(ManagerConfig(server_uuid=b, data_dir=str(tmp_path)),
                               InMemoryApplication(b)):
                pass  # pragma: no cover
