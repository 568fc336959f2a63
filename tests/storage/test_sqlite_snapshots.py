"""Snapshots in the SQLite store on their own: persisted when created or received, restored
into a fresh state machine on open, ordered before the compaction behind them, replaced, deleted
with the group, and checked (a damaged snapshot is a StorageError when the log was compacted
behind it)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nuraft_mesg.errors import StorageError
from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    LogType,
    ServerConfig,
    SnapshotMeta,
)
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.storage.sqlite import (
    DB_NAME,
    SCHEMA_VERSION,
    SqliteStateMachine,
    SqliteStateManager,
    SqliteStore,
)

CONFIG = ClusterConfig((ServerConfig(1, "me"),), log_idx=1)


def _gid() -> str:
    return str(uuid.uuid4())


def _sql(data_dir: Path, sql: str, *args: Any) -> list[Any]:
    with closing(sqlite3.connect(data_dir / DB_NAME, isolation_level=None)) as db:
        return db.execute(sql, args).fetchall()


def _gkey(data_dir: Path, gid: str) -> int:
    ((key,),) = _sql(data_dir, "SELECT gkey FROM groups WHERE group_id=?", gid)
    return int(key)


def _kv() -> KVStateMachine:
    return KVStateMachine(snapshot_chunk_size=16)  # several objects per snapshot


def _open(store: SqliteStore, gid: str, machine: StateMachine) -> SqliteStateManager:
    return store.state_manager(gid, server_id=1, group_type="kv", state_machine=machine)


def _durable(smgr: SqliteStateManager) -> SqliteStateMachine:
    sm = smgr.get_state_machine()
    assert isinstance(sm, SqliteStateMachine)
    return sm


def _payload(i: int) -> bytes:
    return f"set k{i % 4} value-{i}".encode()


async def _run(smgr: SqliteStateManager, first: int, last: int) -> None:
    """What the runtime does for entries first..last: write them, save the commit, apply."""
    log = smgr.load_log_store()
    await log.write(first, [LogEntry(1, LogType.APP, _payload(i)) for i in range(first, last + 1)])
    await smgr.save_state(HardState(1, 1, last))
    sm = smgr.get_state_machine()
    for i in range(first, last + 1):
        sm.commit(i, _payload(i))


def _meta(index: int) -> SnapshotMeta:
    return SnapshotMeta(index, 1, CONFIG)


def _objects(sm: StateMachine, meta: SnapshotMeta) -> list[bytes]:
    objects: list[bytes] = []
    while True:
        data, last = sm.read_snapshot_chunk(meta, len(objects))
        objects.append(data)
        if last:
            return objects


async def _snapshotted(data_dir: Path, *, compact: bool = True) -> tuple[str, KVStateMachine]:
    """A group with entries 1..14, snapshots taken at 10 then 12 (the log compacted behind
    them, keeping 2 entries, unless ``compact`` is false); returns its state machine."""
    gid = _gid()
    original = _kv()
    async with SqliteStore.open(data_dir) as store:
        smgr = _open(store, gid, original)
        sm = _durable(smgr)
        await _run(smgr, 1, 10)
        sm.create_snapshot(_meta(10))
        if compact:
            await smgr.load_log_store().compact(8, 1)
        await _run(smgr, 11, 12)
        sm.create_snapshot(_meta(12))
        if compact:
            await smgr.load_log_store().compact(10, 1)
        await _run(smgr, 13, 14)
        await store.barrier()
    return gid, original


# -- persisted and restored ---------------------------------------------------------------------
async def test_created_snapshot_is_restored_into_a_fresh_state_machine(tmp_path: Path) -> None:
    gid, original = await _snapshotted(tmp_path)
    key = _gkey(tmp_path, gid)
    # Only the latest snapshot is stored: the one at 10 was replaced by the one at 12.
    assert _sql(tmp_path, "SELECT last_index, objects FROM snapshot WHERE gkey=?", key) == [
        (12, len(_objects(original, _meta(12))))]
    rows = _sql(tmp_path, "SELECT obj_id, last_index FROM snapshot_object WHERE gkey=? "
                "ORDER BY obj_id", key)
    assert len(rows) > 3 and rows == [(i, 12) for i in range(len(rows))]

    fresh = _kv()
    async with SqliteStore.open(tmp_path) as store:
        assert store.stored_snapshot(gid) == _meta(12)
        smgr = _open(store, gid, fresh)
        # Restored from the snapshot; the log after it (13, 14) is the runtime's to replay.
        assert fresh.last_commit_index() == 12 and fresh.last_snapshot() == _meta(12)
        log = smgr.load_log_store()
        assert (log.start_index(), log.next_slot()) == (11, 15)
        sm = smgr.get_state_machine()
        assert isinstance(sm, SqliteStateMachine) and sm.delegate is fresh
        for i in range(13, 15):
            sm.commit(i, log.entries(i, i + 1)[0].buffer)
    assert fresh.data == original.data and fresh.applied == original.applied
    assert fresh.configs == original.configs


async def test_received_snapshot_is_persisted_and_restored(tmp_path: Path) -> None:
    """A follower receives the leader's snapshot (save_snapshot_chunk ... apply_snapshot) and
    resets its log behind it, as RaftGroup._persist does; after a restart the snapshot is
    back in a fresh state machine."""
    leader = KVStateMachine(snapshot_chunk_size=8)  # other object sizes than the follower's
    for i in range(1, 31):
        leader.commit(i, _payload(i))
    meta = SnapshotMeta(30, 2, CONFIG)
    leader.create_snapshot(meta)
    received = _objects(leader, meta)
    gid = _gid()
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, _kv())
        await _run(smgr, 1, 3)  # behind the leader's log start
        sm = _durable(smgr)
        for obj_id, data in enumerate(received):
            sm.save_snapshot_chunk(meta, obj_id, data, obj_id == 0, obj_id == len(received) - 1)
        sm.apply_snapshot(meta)
        await smgr.load_log_store().compact(30, 2)
        assert store.stored_snapshot(gid) == meta
    fresh = _kv()
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, fresh)
        assert fresh.last_commit_index() == 30 and fresh.last_snapshot() == meta
        assert fresh.data == leader.data and fresh.applied == leader.applied
        log = smgr.load_log_store()
        assert (log.start_index(), log.next_slot(), log.term_at(30)) == (31, 31, 2)


def _record_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    batches: list[list[str]] = []
    real = SqliteStore._commit_blocking

    def recording(self: SqliteStore, batch: Sequence[Any]) -> None:
        real(self, batch)
        batches.append([op.what for op in batch])

    monkeypatch.setattr(SqliteStore, "_commit_blocking", recording)
    return batches


@pytest.mark.parametrize("how", ["created", "received"])
async def test_snapshot_commits_no_later_than_the_writes_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The hooks are synchronous, so the snapshot write is queued; it must be committed in a
    transaction before (or the same as) the compaction and every later write of the group."""
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, _gid(), _kv())
        await _run(smgr, 1, 10)
        batches = _record_batches(monkeypatch)
        sm = _durable(smgr)
        if how == "created":
            sm.create_snapshot(_meta(10))
        else:
            source = _kv()
            for i in range(1, 21):
                source.commit(i, _payload(i))
            source.create_snapshot(_meta(20))
            objects = _objects(source, _meta(20))
            for obj_id, data in enumerate(objects):
                sm.save_snapshot_chunk(_meta(20), obj_id, data, obj_id == 0,
                                       obj_id == len(objects) - 1)
            sm.apply_snapshot(_meta(20))
        await smgr.load_log_store().compact(8, 1)
        await smgr.save_state(HardState(1, 1, 10))
    ops = [(n, what) for n, batch in enumerate(batches) for what in batch]
    order = [what.split(" of group")[0] for _, what in ops]
    assert [w.split()[0] for w in order] == ["storing", "compacting", "saving"], order
    assert ops[0][0] <= ops[1][0] <= ops[2][0]


class _FailSnapshotWrites:
    """Wraps a sqlite3.Connection; writing snapshot objects fails like a dying disk."""

    def __init__(self, inner: sqlite3.Connection) -> None:
        self._inner = inner

    def executemany(self, sql: str, *args: Any) -> Any:
        if "snapshot_object" in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return self._inner.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_failed_snapshot_write_fails_the_compaction_behind_it(tmp_path: Path) -> None:
    gid = _gid()
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, _kv())
        await _run(smgr, 1, 10)
        store._conn = _FailSnapshotWrites(store._conn)  # type: ignore[assignment]
        _durable(smgr).create_snapshot(_meta(10))
        with pytest.raises(StorageError, match="disk I/O error"):
            await smgr.load_log_store().compact(8, 1)
        store._conn = store._conn._inner  # type: ignore[attr-defined]
    # Nothing of it reached the disk: the whole log is still there to replay.
    fresh = _kv()
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, fresh)
        assert store.stored_snapshot(gid) is None and fresh.last_commit_index() == 0
        log = smgr.load_log_store()
        assert (log.start_index(), log.next_slot()) == (1, 11)


# -- when nothing is restored -------------------------------------------------------------------
class _CountingKV(KVStateMachine):
    __slots__ = ("installs",)

    def __init__(self) -> None:
        super().__init__(snapshot_chunk_size=16)
        self.installs = 0

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        super().apply_snapshot(meta)
        self.installs += 1


async def test_state_machine_that_kept_its_state_is_not_restored(tmp_path: Path) -> None:
    gid, _ = await _snapshotted(tmp_path)
    ahead = _CountingKV()
    for i in range(1, 15):
        ahead.commit(i, _payload(i))
    behind = _CountingKV()
    for i in range(1, 4):
        behind.commit(i, _payload(i))
    async with SqliteStore.open(tmp_path) as store:
        _open(store, gid, ahead)
        assert ahead.installs == 0 and ahead.last_commit_index() == 14
    async with SqliteStore.open(tmp_path) as store:
        _open(store, gid, behind)
        assert behind.installs == 1 and behind.last_commit_index() == 12


class _NoSnapshots(KVStateMachine):
    __slots__ = ()

    @property
    def supports_snapshots(self) -> bool:
        return False


async def test_state_machine_without_snapshots_is_not_wrapped(tmp_path: Path) -> None:
    gid, _ = await _snapshotted(tmp_path)
    plain = _NoSnapshots()
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, plain)
        assert smgr.get_state_machine() is plain and plain.last_commit_index() == 0
        # The runtime refuses to start over this compacted log (see group.py): nothing here
        # pretends the prefix was applied.
        assert smgr.load_log_store().start_index() == 11


class _BrokenKV(KVStateMachine):
    __slots__ = ()

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        raise ValueError("cannot decode this")


async def test_state_machine_rejecting_the_stored_snapshot_is_a_storage_error(
    tmp_path: Path,
) -> None:
    gid, _ = await _snapshotted(tmp_path)
    async with SqliteStore.open(tmp_path) as store:
        with pytest.raises(StorageError, match=r"restoring the stored snapshot 12/1 .*decode"):
            _open(store, gid, _BrokenKV(snapshot_chunk_size=16))
        # The stored objects were kept: a working state machine still gets them.
        fresh = _kv()
        _open(store, gid, fresh)
        assert fresh.last_commit_index() == 12


async def test_snapshot_queued_while_the_registering_write_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot write is queued without waiting for the group's previous write; if that one
    registers the group and is still committing, registering again must not fail the store."""
    release = threading.Event()
    real = SqliteStore._commit_blocking

    def held(self: SqliteStore, batch: Sequence[Any]) -> None:
        release.wait(10)
        real(self, batch)

    gid = _gid()
    async with SqliteStore.open(tmp_path) as store:
        sm = _kv()
        sm.commit(1, _payload(1))
        smgr = _open(store, gid, sm)
        monkeypatch.setattr(SqliteStore, "_commit_blocking", held)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(smgr.save_state, HardState(1, 1, 1))  # registers the group
            await trio.testing.wait_all_tasks_blocked()  # ... and is held in the worker
            assert gid not in store
            _durable(smgr).create_snapshot(_meta(1))
            release.set()
        await store.barrier()
        assert store.failed is None and store.stored_snapshot(gid) == _meta(1)
    async with SqliteStore.open(tmp_path) as store:
        assert [r.group_id for r in store.groups()] == [gid]
        assert store.stored_snapshot(gid) == _meta(1)


# -- corruption ---------------------------------------------------------------------------------
def _damage(data_dir: Path, gid: str, damage: str) -> None:
    key = _gkey(data_dir, gid)
    if damage == "object data":  # flip one byte of an object
        ((data,),) = _sql(data_dir, "SELECT data FROM snapshot_object WHERE gkey=? AND obj_id=2",
                          key)
        flipped = bytes([data[0] ^ 0x01]) + data[1:]
        _sql(data_dir, "UPDATE snapshot_object SET data=? WHERE gkey=? AND obj_id=2", flipped,
             key)
    elif damage == "object crc":
        _sql(data_dir, "UPDATE snapshot_object SET crc=crc+1 WHERE gkey=? AND obj_id=0", key)
    elif damage == "record term":
        _sql(data_dir, "UPDATE snapshot SET last_term=last_term+1 WHERE gkey=?", key)
    elif damage == "missing object":
        _sql(data_dir, "DELETE FROM snapshot_object WHERE gkey=? AND obj_id=1", key)
    elif damage == "last object missing":
        _sql(data_dir, "DELETE FROM snapshot_object WHERE gkey=? AND obj_id=(SELECT max(obj_id) "
             "FROM snapshot_object WHERE gkey=?)", key, key)
    else:
        assert damage == "missing record"
        _sql(data_dir, "DELETE FROM snapshot WHERE gkey=?", key)


DAMAGES = ["object data", "object crc", "record term", "missing object", "last object missing",
           "missing record"]


@pytest.mark.parametrize("damage", DAMAGES)
async def test_damaged_snapshot_behind_a_compacted_log_is_a_storage_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    gid, _ = await _snapshotted(tmp_path)
    good, _ = await _snapshotted(tmp_path)
    _damage(tmp_path, gid, damage)
    caplog.set_level(logging.ERROR)
    async with SqliteStore.open(tmp_path) as store:
        records = {r.group_id: r for r in store.groups()}
        why = records[gid].corrupt
        assert why is not None and "snapshot" in why and "compacted" in why, why
        fresh = _kv()
        with pytest.raises(StorageError, match="snapshot"):
            _open(store, gid, fresh)
        assert fresh.last_commit_index() == 0
        # Another group of the store is unaffected.
        other = _kv()
        _open(store, good, other)
        assert records[good].corrupt is None and other.last_commit_index() == 12
    assert any(gid in r.getMessage() and "snapshot" in r.getMessage() for r in caplog.records)
    # Nothing was deleted: the rows are left for inspection.
    assert _sql(tmp_path, "SELECT count(*) FROM snapshot_object WHERE gkey=?",
                _gkey(tmp_path, gid)) != [(0,)]


async def test_damaged_snapshot_over_an_uncompacted_log_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log still holds every entry from 1: the snapshot is redundant, so it is dropped
    (durably, with an ERROR) and the log is replayed instead."""
    gid, _ = await _snapshotted(tmp_path, compact=False)
    _damage(tmp_path, gid, "object data")
    caplog.set_level(logging.ERROR)
    async with SqliteStore.open(tmp_path) as store:
        fresh = _kv()
        smgr = _open(store, gid, fresh)
        assert store.stored_snapshot(gid) is None and fresh.last_commit_index() == 0
        log = smgr.load_log_store()
        assert (log.start_index(), log.next_slot()) == (1, 15)
    assert any(gid in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    key = _gkey(tmp_path, gid)
    assert _sql(tmp_path, "SELECT count(*) FROM snapshot WHERE gkey=?", key) == [(0,)]
    assert _sql(tmp_path, "SELECT count(*) FROM snapshot_object WHERE gkey=?", key) == [(0,)]


# -- lifecycle ----------------------------------------------------------------------------------
async def test_destroy_deletes_the_snapshot_rows(tmp_path: Path) -> None:
    gid, _ = await _snapshotted(tmp_path)
    other, _ = await _snapshotted(tmp_path)
    doomed_key, kept_key = _gkey(tmp_path, gid), _gkey(tmp_path, other)
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, _kv())
        smgr.permanent_destroy()
        await store.barrier()
        assert store.stored_snapshot(gid) is None
        with pytest.raises(StorageError, match="permanent_destroy"):
            _durable(smgr).create_snapshot(_meta(12))
    for table in ("snapshot", "snapshot_object"):
        keys = {k for (k,) in _sql(tmp_path, f"SELECT DISTINCT gkey FROM {table}")}
        assert keys == {kept_key} and doomed_key not in keys, table


async def test_format_1_file_is_upgraded(tmp_path: Path) -> None:
    """A store written before snapshots were persisted opens (gaining the tables) and then
    stores snapshots; a newer format is refused."""
    gid = _gid()
    async with SqliteStore.open(tmp_path) as store:
        await _run(_open(store, gid, _kv()), 1, 10)
    _sql(tmp_path, "DROP TABLE snapshot_object")
    _sql(tmp_path, "DROP TABLE snapshot")
    _sql(tmp_path, "PRAGMA user_version=1")
    async with SqliteStore.open(tmp_path) as store:
        smgr = _open(store, gid, _kv())
        assert smgr.load_log_store().next_slot() == 11
        sm = _durable(smgr)
        for i in range(1, 11):
            sm.commit(i, _payload(i))
        sm.create_snapshot(_meta(10))
        await store.barrier()
        assert store.stored_snapshot(gid) == _meta(10)
    assert _sql(tmp_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    _sql(tmp_path, f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="storage format"):
        SqliteStore(tmp_path)
