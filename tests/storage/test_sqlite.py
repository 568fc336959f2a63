"""The SQLite store on its own: contract, group commit, back-pressure, corruption, failures."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from nuraft_mesg.errors import Failed, StorageError
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, LogType, ServerConfig
from nuraft_mesg.storage.interfaces import LogStore, StateManager
from nuraft_mesg.storage.sqlite import DB_NAME, SqliteLogStore, SqliteStateManager, SqliteStore
from nuraft_mesg.testing import check_log_store, check_state_manager


def _gid() -> str:
    return str(uuid.uuid4())


def _entries(first: int, terms: list[int]) -> list[LogEntry]:
    return [
        LogEntry(term=t, type=LogType.APP, buffer=b"payload-%d" % (first + i), timestamp=i)
        for i, t in enumerate(terms)
    ]


class Harness:
    """Stores over one directory, with their committers running in a nursery; ``reopen``
    closes the current store and opens a new one synchronously (as the conformance suites'
    ``reopen`` must), like a process restart."""

    def __init__(self, nursery: trio.Nursery, data_dir: Path, **kwargs: Any) -> None:
        self.nursery = nursery
        self.data_dir = data_dir
        self.kwargs = kwargs
        self.scope: trio.CancelScope | None = None
        self.store = self._open()

    def _open(self) -> SqliteStore:
        store = SqliteStore(self.data_dir, **self.kwargs)
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await store.run()

        self.nursery.start_soon(run)
        self.scope = scope
        return store

    def reopen(self) -> SqliteStore:
        assert self.scope is not None
        self.scope.cancel()
        self.store.close()
        self.store = self._open()
        return self.store

    def close(self) -> None:
        assert self.scope is not None
        self.scope.cancel()
        self.store.close()


@asynccontextmanager
async def harness(data_dir: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, data_dir, **kwargs)
        try:
            yield h
        finally:
            h.close()


# -- the storage contract -----------------------------------------------------------------------
async def test_log_store_conformance(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:

        def reopen(store: LogStore) -> LogStore:
            assert isinstance(store, SqliteLogStore)
            return h.reopen().log_store(store.group_id)

        await check_log_store(lambda: h.store.log_store(_gid()), reopen=reopen)


async def test_state_manager_conformance(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:

        def fresh() -> StateManager:
            return h.store.state_manager(_gid(), server_id=42, endpoint="me", group_type="kv")

        def reopen(smgr: StateManager) -> StateManager:
            assert isinstance(smgr, SqliteStateManager)
            return h.reopen().state_manager(smgr.group_id, server_id=42, endpoint="me")

        await check_state_manager(fresh, reopen=reopen)


async def test_registry_records_groups_on_their_first_write(tmp_path: Path) -> None:
    async with harness(tmp_path, owner="owner-1") as h:
        a, b, c = _gid(), _gid(), _gid()
        sa = h.store.state_manager(a, server_id=1, group_type="kv")
        h.store.state_manager(b, server_id=1, group_type="kv")  # never written: not stored
        await sa.save_state(HardState(1, 1, 0))
        await h.store.state_manager(c, server_id=1, group_type="other").save_config(
            ClusterConfig((ServerConfig(1, "me"),))
        )
        assert [(r.group_id, r.group_type, r.server_id) for r in h.store.groups()] == [
            (a, "kv", 1), (c, "other", 1)
        ]
        assert a in h.store and b not in h.store
        store = h.reopen()
        assert [(r.group_id, r.group_type) for r in store.groups()] == [(a, "kv"), (c, "other")]
        with pytest.raises(StorageError, match="server id"):
            store.state_manager(a, server_id=2)


# -- group commit and back-pressure -------------------------------------------------------------
async def test_group_commit_batches_concurrent_writers(tmp_path: Path) -> None:
    """Many groups writing at once share transactions: far fewer commits (fsyncs) than
    writes, and every write is durable."""
    n_groups, n_writes = 40, 10
    async with harness(tmp_path) as h:
        logs = [h.store.log_store(_gid()) for _ in range(n_groups)]

        async def writer(log: LogStore) -> None:
            for i in range(n_writes):
                await log.write(i + 1, _entries(i + 1, [1]))

        async with trio.open_nursery() as nursery:
            for log in logs:
                nursery.start_soon(writer, log)
        stats = h.store.statistics()
        assert stats.operations == n_groups * n_writes
        assert stats.commits < stats.operations / 4, stats
        assert stats.max_batch > 1
        ids = [log.group_id for log in logs]
        store = h.reopen()
        for gid in ids:
            assert store.log_store(gid).next_slot() == n_writes + 1


async def test_commit_queue_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a slow disk, writers wait for room instead of queueing without bound."""
    async with harness(tmp_path, max_pending_ops=3) as h:
        store = h.store
        real = store._commit_blocking
        high_water = 0

        def slow_commit(batch: Any) -> None:
            time.sleep(0.02)
            real(batch)

        monkeypatch.setattr(store, "_commit_blocking", slow_commit)
        logs = [store.log_store(_gid()) for _ in range(12)]

        async def watch() -> None:
            nonlocal high_water
            while True:
                high_water = max(high_water, store._queued_ops)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as writers:
                for log in logs:
                    writers.start_soon(log.write, 1, _entries(1, [1]))
            nursery.cancel_scope.cancel()
        assert 1 <= high_water <= 3
        assert all(log.next_slot() == 2 for log in logs)
        assert store.statistics().max_batch <= 3


async def test_bytes_bound_lets_a_large_write_through(tmp_path: Path) -> None:
    async with harness(tmp_path, max_pending_bytes=1000) as h:
        log = h.store.log_store(_gid())
        big = [LogEntry(1, LogType.APP, b"x" * 5000)]
        await log.write(1, big)  # larger than the bound, but alone in the queue
        assert log.entries(1, 2) == big


async def test_reads_see_only_committed_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    async with harness(tmp_path) as h:
        store = h.store
        log = store.log_store(_gid())
        await log.write(1, _entries(1, [1, 1]))
        release = threading.Event()
        real = store._commit_blocking

        def gated(batch: Any) -> None:
            release.wait(5)
            real(batch)

        monkeypatch.setattr(store, "_commit_blocking", gated)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: log.write(2, _entries(20, [2, 2]), truncate_from=2))
            await trio.sleep(0.05)
            # The write is in the worker thread, not committed: reads show the old log.
            assert log.next_slot() == 3 and log.term_at(2) == 1
            release.set()
        assert log.next_slot() == 4 and log.term_at(2) == 2


async def test_cancelled_writer_still_lands_consistently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancellation is a crash: the write either happens or not -- here it was already in
    the transaction, so it lands, the cache follows, and the next write waits for it."""
    async with harness(tmp_path) as h:
        store = h.store
        log = store.log_store(_gid())
        release = threading.Event()
        real = store._commit_blocking

        def gated(batch: Any) -> None:
            release.wait(5)
            real(batch)

        monkeypatch.setattr(store, "_commit_blocking", gated)
        with trio.move_on_after(0.05):
            await log.write(1, _entries(1, [1, 1]))
        assert log.next_slot() == 1
        release.set()
        await log.write(3, _entries(3, [1]))  # waits for the cancelled one, then follows it
        assert log.next_slot() == 4
        assert h.reopen().log_store(log.group_id).next_slot() == 4


# -- corruption ---------------------------------------------------------------------------------
def _sql(data_dir: Path, sql: str, *args: Any) -> list[Any]:
    with closing(sqlite3.connect(data_dir / DB_NAME, isolation_level=None)) as db:
        return db.execute(sql, args).fetchall()


def _gkey(data_dir: Path, gid: str) -> int:
    ((key,),) = _sql(data_dir, "SELECT gkey FROM groups WHERE group_id=?", gid)
    return int(key)


async def _two_groups(data_dir: Path) -> tuple[str, str, list[LogEntry]]:
    bad, good = _gid(), _gid()
    log = _entries(1, [1, 1, 2, 2, 2, 3, 3, 3])
    async with SqliteStore.open(data_dir) as store:
        for gid in (bad, good):
            smgr = store.state_manager(gid, server_id=1, group_type="kv")
            await smgr.save_state(HardState(3, 1, 6))
            await smgr.load_log_store().write(1, log)
    return bad, good, log


@pytest.mark.parametrize("damage", ["buffer", "crc", "term"])
async def test_corrupt_record_cuts_the_log_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    bad, good, log = await _two_groups(tmp_path)
    key = _gkey(tmp_path, bad)
    if damage == "buffer":  # flip one byte of the payload
        ((buf,),) = _sql(tmp_path, "SELECT buffer FROM log WHERE gkey=? AND idx=5", key)
        flipped = bytes([buf[0] ^ 0x40]) + buf[1:]
        _sql(tmp_path, "UPDATE log SET buffer=? WHERE gkey=? AND idx=5", flipped, key)
    elif damage == "crc":
        _sql(tmp_path, "UPDATE log SET crc=crc+1 WHERE gkey=? AND idx=5", key)
    else:
        _sql(tmp_path, "UPDATE log SET term=7 WHERE gkey=? AND idx=5", key)
    caplog.set_level(logging.ERROR)
    async with SqliteStore.open(tmp_path) as store:
        cut = store.log_store(bad)
        assert cut.next_slot() == 5  # entries 1..4 kept, 5..8 dropped
        assert cut.entries(1, 5) == log[:4]
        assert store.log_store(good).entries(1, 9) == log  # the other group is untouched
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(bad in m and "index 5" in m and "4 record(s)" in m for m in errors), errors
        # The log continues from the cut (and the cut itself is durable, checked below).
        await cut.write(5, _entries(50, [4]))
    assert _sql(tmp_path, "SELECT idx FROM log WHERE gkey=? ORDER BY idx", key) == [
        (i,) for i in range(1, 6)
    ]
    async with SqliteStore.open(tmp_path) as store:
        assert store.log_store(bad).entries(5, 6) == _entries(50, [4])


async def test_gap_in_the_log_cuts_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad, _, log = await _two_groups(tmp_path)
    _sql(tmp_path, "DELETE FROM log WHERE gkey=? AND idx=3", _gkey(tmp_path, bad))
    caplog.set_level(logging.ERROR)
    async with SqliteStore.open(tmp_path) as store:
        assert store.log_store(bad).entries(1, 3) == log[:2]
        assert store.log_store(bad).next_slot() == 3
    assert any("index 3" in r.getMessage() for r in caplog.records)


async def test_corrupt_hard_state_refuses_the_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good, _ = await _two_groups(tmp_path)
    _sql(tmp_path, "UPDATE hard_state SET vote=2 WHERE gkey=?", _gkey(tmp_path, bad))
    caplog.set_level(logging.ERROR)
    async with SqliteStore.open(tmp_path) as store:
        records = {r.group_id: r for r in store.groups()}
        assert records[bad].corrupt is not None and records[good].corrupt is None
        with pytest.raises(StorageError, match="hard state"):
            store.state_manager(bad, server_id=1)
        assert store.state_manager(good, server_id=1).read_state() == HardState(3, 1, 6)
    assert any(bad in r.getMessage() and "hard state" in r.getMessage() for r in caplog.records)


async def test_torn_wal_tail_is_discarded_by_sqlite(tmp_path: Path) -> None:
    """A crash in the middle of writing the WAL: copy the files of a live store (a crash
    image) and cut the WAL mid-frame.  The store opens with a prefix of what was committed,
    every record intact, and keeps working."""
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    gid = _gid()
    log = _entries(1, [1] * 30)
    async with SqliteStore.open(live) as store:
        store._conn.execute("PRAGMA wal_autocheckpoint=0")  # keep everything in the WAL
        lstore = store.log_store(gid)
        for i, entry in enumerate(log):
            await lstore.write(i + 1, [entry])
        crashed.mkdir()
        shutil.copy(live / DB_NAME, crashed / DB_NAME)
        shutil.copy(live / f"{DB_NAME}-wal", crashed / f"{DB_NAME}-wal")
    wal = crashed / f"{DB_NAME}-wal"
    size = wal.stat().st_size
    os.truncate(wal, size - size // 5 - 1000)  # the last frames, one of them torn
    async with SqliteStore.open(crashed) as store:
        recovered = store.log_store(gid)
        n = recovered.next_slot() - 1
        assert 0 < n < len(log)
        assert recovered.entries(1, n + 1) == log[:n]
        await recovered.write(n + 1, _entries(99, [2]))
    async with SqliteStore.open(crashed) as store:
        assert store.log_store(gid).next_slot() == n + 2


async def test_truncated_database_file_is_refused(tmp_path: Path) -> None:
    gid = _gid()
    async with SqliteStore.open(tmp_path) as store:
        lstore = store.log_store(gid)
        for i in range(200):
            await lstore.write(i + 1, [LogEntry(1, LogType.APP, os.urandom(300))])
    db = tmp_path / DB_NAME
    assert not (tmp_path / f"{DB_NAME}-wal").exists()  # checkpointed on close
    os.truncate(db, db.stat().st_size // 2 + 100)  # mid-page
    with pytest.raises(StorageError, match=str(db)):
        async with SqliteStore.open(tmp_path):
            pass  # pragma: no cover


# -- failures -----------------------------------------------------------------------------------
class _FailingConnection:
    def __init__(self, inner: sqlite3.Connection, fail: Callable[[str], bool]) -> None:
        self._inner = inner
        self._fail = fail

    def execute(self, sql: str, *args: Any) -> Any:
        if self._fail(sql):
            raise sqlite3.OperationalError("disk I/O error")
        return self._inner.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        if self._fail(sql):
            raise sqlite3.OperationalError("disk I/O error")
        return self._inner.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("failing", ["INSERT", "COMMIT"])
async def test_io_error_fails_the_store_and_stores_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, failing: str
) -> None:
    caplog.set_level(logging.ERROR)
    async with harness(tmp_path) as h:
        store = h.store
        a, b = store.log_store(_gid()), store.log_store(_gid())
        await a.write(1, _entries(1, [1]))
        store._conn = _FailingConnection(store._conn, lambda sql: sql.startswith(failing))  # type: ignore[assignment]
        async with trio.open_nursery() as nursery:
            results: list[BaseException | None] = []

            async def write(log: LogStore, first: int) -> None:
                try:
                    await log.write(first, _entries(first, [1]))
                except StorageError as exc:
                    results.append(exc)
                else:
                    results.append(None)

            nursery.start_soon(write, a, 2)
            nursery.start_soon(write, b, 1)
        assert len(results) == 2 and all(isinstance(r, StorageError) for r in results)
        assert isinstance(store.failed, StorageError) and isinstance(store.failed, Failed)
        assert "disk I/O error" in str(store.failed) and str(store.path) in str(store.failed)
        assert a.next_slot() == 2 and b.next_slot() == 1  # caches did not move
        with pytest.raises(StorageError, match="failed earlier"):
            await a.write(2, _entries(2, [1]))
        with pytest.raises(StorageError):
            await store.barrier()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "disk I/O error" in errors[0].getMessage()
        store._conn = store._conn._inner  # type: ignore[attr-defined]
        a_id, b_id = a.group_id, b.group_id
        store = h.reopen()
        assert store.log_store(a_id).next_slot() == 2  # nothing of the failed batch landed
        assert store.log_store(b_id).next_slot() == 1


async def test_second_store_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path):
        with pytest.raises(StorageError, match="in use"):
            SqliteStore(tmp_path)
    async with SqliteStore.open(tmp_path, owner="a"):
        pass
    with pytest.raises(StorageError, match="belongs to server a"):
        SqliteStore(tmp_path, owner="b")


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    async with SqliteStore.open(tmp_path) as store:
        log = store.log_store(_gid())
    with pytest.raises(StorageError, match="closed"):
        await log.write(1, _entries(1, [1]))


async def test_destroy_deletes_every_row(tmp_path: Path) -> None:
    gid, other = _gid(), _gid()
    async with SqliteStore.open(tmp_path) as store:
        for g in (gid, other):
            smgr = store.state_manager(g, server_id=1)
            await smgr.save_state(HardState(1, 1, 0))
            await smgr.save_config(ClusterConfig((ServerConfig(1, "me"),)))
            await smgr.load_log_store().write(1, _entries(1, [1, 1]))
            await smgr.load_log_store().compact(1, 1)
        doomed = store.state_manager(gid, server_id=1)
        doomed.permanent_destroy()
        assert gid not in store and doomed.read_state() is None
        await store.barrier()
        with pytest.raises(StorageError, match="permanent_destroy"):
            await doomed.save_state(HardState(2, 1, 0))
    for table in ("groups", "hard_state", "config", "log_boundary", "log"):
        assert len(_sql(tmp_path, f"SELECT DISTINCT gkey FROM {table}")) == 1, table
    async with SqliteStore.open(tmp_path) as store:
        assert [r.group_id for r in store.groups()] == [other]
        lstore = store.log_store(other)
        assert (lstore.start_index(), lstore.next_slot(), lstore.term_at(1)) == (2, 3, 1)
