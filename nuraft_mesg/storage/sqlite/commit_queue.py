"""The connection, transaction and fsync layer: one committer task turns everything queued
into one transaction (one fsync of the WAL), then wakes every writer of the batch (group
commit; see "Threading and group commit" in :mod:`nuraft_mesg.storage.sqlite`).

A mixin of :class:`~nuraft_mesg.storage.sqlite.SqliteStore`, separate because it is the
only code that drives the connection after opening and the only code whose ordering makes
writes durable before they are acknowledged; the per-group objects go through it.  (The body
of one transaction, ``SqliteStore._commit_blocking``, stays on the store class, where tests
patch it.)
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from nuraft_mesg.errors import StorageError
from nuraft_mesg.raft.types import SnapshotMeta
from nuraft_mesg.storage.sqlite.records import GroupData, QueuedOp, StoreStatistics
from nuraft_mesg.storage.sqlite.schema import PER_GROUP_TABLES, object_crc, snapshot_crc

__all__ = ["CommitQueue"]


class CommitQueue:
    """The commit queue and its committer (state set by SqliteStore.__init__)."""

    path: Path
    log: logging.Logger
    _conn: sqlite3.Connection
    _groups: dict[str, GroupData]
    _max_ops: int
    _max_bytes: int
    _limiter: trio.CapacityLimiter
    _pending: deque[QueuedOp]
    _wakeup: trio.Event
    _room: trio.Event
    _queued_ops: int
    _queued_bytes: int
    _failed: StorageError | None
    _closed: bool
    _running: bool
    _commits: int
    _operations: int
    _bytes: int
    _max_batch: int

    if TYPE_CHECKING:  # defined by SqliteStore (where tests and tools patch it)
        def _commit_blocking(self, batch: Sequence[QueuedOp]) -> None: ...

    def _error(self, action: str, exc: BaseException) -> StorageError:
        return StorageError(f"{self.path}: {action} failed: {type(exc).__name__}: {exc}")
    async def aclose(self) -> None:
        """Close the database (in the worker thread, after any commit in progress)."""
        if self._closed:
            return
        self._closed = True
        self._fail_queue(StorageError(f"{self.path}: the store is closed"))
        await trio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    def close(self) -> None:
        """Close the database from a synchronous context (tests, tools).  Only call it when no
        commit is running (the committer is idle or stopped)."""
        if self._closed:
            return
        self._closed = True
        self._fail_queue(StorageError(f"{self.path}: the store is closed"))
        self._conn.close()

    # -- queries ---------------------------------------------------------------------------
    @property
    def failed(self) -> StorageError | None:
        """The error that failed the store, or None while it works."""
        return self._failed

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self._commits, self._operations, self._bytes, self._max_batch)

    def _destroy(self, data: GroupData) -> None:
        if data.destroyed:
            return
        data.destroyed = True
        if self._groups.get(data.group_id) is data:
            del self._groups[data.group_id]
        data.state = None
        data.config = None
        data.snapshot = None
        data.snapshot_objects = None
        if not data.registered or self._failed is not None or self._closed:
            return
        gkey = data.gkey

        def apply(conn: sqlite3.Connection) -> None:
            for table in PER_GROUP_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE gkey=?", (gkey,))

        # Not bounded (callers are synchronous); queued after every earlier write of the group.
        self._enqueue(QueuedOp(None, apply, None, 64, f"deleting group {data.group_id}"))

    async def barrier(self) -> None:
        """Wait until everything queued before this call is committed.

        Raises:
            StorageError: the store failed or is closed.
        """
        await self._submit(QueuedOp(None, _nothing, None, 0, "barrier"))

    # -- the commit queue ------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(f"{self.path}: the store failed earlier: {self._failed}")
        if self._closed:
            raise StorageError(f"{self.path}: the store is closed")

    async def _settle(self, data: GroupData, what: str) -> None:
        """Before a mutation of ``data``: wait for its previous one (whose writer may have
        been cancelled), so validation sees the committed state."""
        prev = data.last_op
        if prev is not None and not prev.done.is_set():
            await prev.done.wait()
        if data.destroyed:
            raise StorageError(
                f"{self.path}: {what} for group {data.group_id} after permanent_destroy"
            )
        self._check_usable()

    async def _submit(self, op: QueuedOp) -> None:
        self._check_usable()
        while self._queued_ops and (
            self._queued_ops >= self._max_ops or self._queued_bytes + op.size > self._max_bytes
        ):
            await self._room.wait()
            self._check_usable()
        if op.group is not None:
            if op.group.destroyed:  # destroyed while we waited for room
                raise StorageError(f"{self.path}: {op.what} after permanent_destroy")
            op.group.last_op = op
        self._enqueue(op)
        await op.done.wait()
        if op.error is not None:
            raise op.error

    def _enqueue(self, op: QueuedOp) -> None:
        self._pending.append(op)
        self._queued_ops += 1
        self._queued_bytes += op.size
        self._wakeup.set()

    def _release(self, batch: Sequence[QueuedOp]) -> None:
        self._queued_ops -= len(batch)
        self._queued_bytes -= sum(op.size for op in batch)
        self._room.set()
        self._room = trio.Event()

    def _fail_queue(self, error: StorageError) -> None:
        batch = list(self._pending)
        self._pending.clear()
        for op in batch:
            op.finish(error)
        self._release(batch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer: commit everything queued, one transaction (one fsync) per batch.
        Runs until cancelled; :meth:`open` runs it for you."""
        if self._running:
            raise RuntimeError("the committer is already running")
        self._running = True
        task_status.started()
        batch: list[QueuedOp] = []
        try:
            while True:
                while not self._pending:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                batch = list(self._pending)
                self._pending.clear()
                await self._commit(batch)
                batch = []
        finally:
            self._running = False
            closing = StorageError(f"{self.path}: the store is closing")
            for op in batch:  # cancelled before the thread started: never committed
                op.finish(closing)
            if batch:
                self._release(batch)
            self._fail_queue(closing)

    async def _commit(self, batch: list[QueuedOp]) -> None:
        if self._failed is not None or self._closed:
            error = self._failed or StorageError(f"{self.path}: the store is closed")
            for op in batch:
                op.finish(error)
            self._release(batch)
            return
        try:
            # Not abandoned on cancellation: the commit finishes and its outcome is delivered
            # below before the cancellation takes effect (at the next checkpoint).
            await trio.to_thread.run_sync(self._commit_blocking, batch, limiter=self._limiter)
        except Exception as exc:
            what = ", ".join(op.what for op in batch[:3]) + (", ..." if len(batch) > 3 else "")
            error = self._error(f"committing {len(batch)} write(s) ({what})", exc)
            self._failed = error
            self.log.error(
                "%s; the store is failed: every group on it stops and no further write is "
                "accepted until the manager restarts",
                error,
            )
            for op in batch:
                op.finish(error)
            self._release(batch)
            self._fail_queue(error)
            return
        self._commits += 1
        self._operations += len(batch)
        self._bytes += sum(op.size for op in batch)
        self._max_batch = max(self._max_batch, len(batch))
        for op in batch:
            if op.on_commit is not None:
                op.on_commit()
            op.finish(None)
        self._release(batch)

    # -- mutations used by the per-group objects -------------------------------------------
    async def _mutate(
        self,
        data: GroupData,
        what: str,
        statements: Callable[[sqlite3.Connection], None],
        on_commit: Callable[[], None],
        size: int,
    ) -> None:
        """Queue ``statements`` for ``data`` (registering the group on its first write) and
        wait until they are committed."""
        await self._submit(self._group_op(data, what, statements, on_commit, size))

    def _group_op(
        self,
        data: GroupData,
        what: str,
        statements: Callable[[sqlite3.Connection], None],
        on_commit: Callable[[], None],
        size: int,
    ) -> QueuedOp:
        """The queue operation running ``statements`` for ``data``, registering the group in
        the same transaction if this is its first write."""
        if data.registered:
            apply = statements
        else:
            row = (data.gkey, data.group_id, data.group_type, data.server_id, data.created)
            inner = statements

            def apply(conn: sqlite3.Connection) -> None:
                # OR IGNORE: a snapshot write is queued without waiting for the group's previous
                # write, which may be the registering one.
                conn.execute(
                    "INSERT OR IGNORE INTO groups(gkey, group_id, group_type, server_id, "
                    "created) VALUES (?, ?, ?, ?, ?)",
                    row,
                )
                inner(conn)

            moved = on_commit

            def on_commit() -> None:
                data.registered = True
                moved()

        what = f"{what} of group {data.group_id}"
        return QueuedOp(data, apply, on_commit, size + 64, what)

    def _queue_snapshot(self, data: GroupData, meta: SnapshotMeta, objects: list[bytes]) -> None:
        """Queue the replacement of the group's stored snapshot by ``meta`` and its
        ``objects``, without waiting (the state machine hooks calling this are synchronous).

        Ordering, not waiting, makes this safe: the op is queued now, behind the group's
        earlier writes and ahead of its later ones (which wait for it in :meth:`_settle`), so
        it commits no later than the compaction that follows it.  It does not wait for room in
        the queue; its bytes count against the bounds, so later writers wait for it instead.
        CRCs are computed in the worker thread, with the statements.
        """
        if data.destroyed:
            raise StorageError(
                f"{self.path}: a snapshot of group {data.group_id} after permanent_destroy"
            )
        self._check_usable()
        if not objects:
            raise ValueError("a snapshot has at least one object")
        gkey, seed, index, count = data.gkey, data.seed, meta.last_index, len(objects)
        config = meta.config.encode()

        def statements(conn: sqlite3.Connection) -> None:
            # One transaction: the old snapshot is gone exactly when the new one is durable.
            conn.execute("DELETE FROM snapshot_object WHERE gkey=?", (gkey,))
            conn.executemany(
                "INSERT INTO snapshot_object(gkey, obj_id, last_index, data, crc) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (gkey, obj_id, index, obj, object_crc(seed, index, obj_id, obj))
                    for obj_id, obj in enumerate(objects)
                ],
            )
            conn.execute(
                "INSERT OR REPLACE INTO snapshot(gkey, last_index, last_term, config, objects, "
                "crc) VALUES (?, ?, ?, ?, ?, ?)",
                (gkey, index, meta.last_term, config, count,
                 snapshot_crc(seed, index, meta.last_term, count, config)),
            )

        def on_commit() -> None:
            data.snapshot = meta
            data.snapshot_objects = None  # whatever was loaded at open is superseded

        size = sum(len(obj) + 32 for obj in objects) + len(config)
        op = self._group_op(data, f"storing snapshot {index}/{meta.last_term}", statements,
                            on_commit, size)
        data.last_op = op
        self._enqueue(op)

def _nothing(conn: sqlite3.Connection) -> None:
    return
