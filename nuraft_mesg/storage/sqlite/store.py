"""The store itself (:class:`SqliteStore`: the registry of groups and the factory of their
durable objects) and :class:`SqliteStateManager`, the per-group face the runtime uses.

Opening the file lives in :mod:`.opening`, the commit queue in :mod:`.commit_queue`; what
remains here is the API an application or the Manager calls.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import trio

from nuraft_mesg.errors import StorageError
from nuraft_mesg.raft.ready import Event
from nuraft_mesg.raft.types import ClusterConfig, HardState, ServerConfig, SnapshotMeta
from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.storage.sqlite.commit_queue import CommitQueue
from nuraft_mesg.storage.sqlite.log_store import SqliteLogStore
from nuraft_mesg.storage.sqlite.opening import StoreOpening
from nuraft_mesg.storage.sqlite.records import GroupData, GroupRecord, QueuedOp
from nuraft_mesg.storage.sqlite.schema import DB_NAME, config_crc, state_crc
from nuraft_mesg.storage.sqlite.state_machine import SqliteStateMachine

__all__ = ["SqliteStateManager", "SqliteStore"]


class SqliteStore(StoreOpening, CommitQueue):
    """One SQLite database holding every group of a manager (see :mod:`nuraft_mesg.storage.sqlite`).

    The constructor opens (creating if needed) ``<data_dir>/nuraft.db`` and loads every group
    into memory; it blocks, so from trio use :meth:`open`, which runs it in a worker thread,
    runs the committer and closes the store at the end::

        async with SqliteStore.open(data_dir, owner=server_uuid) as store:
            smgr = store.state_manager(group_id, server_id=sid, endpoint=server_uuid)

    Mutations need the committer (:meth:`run`) running in some task.

    Args:
        data_dir: directory of the database (created if missing).
        owner: the uuid of the server this data belongs to.  Recorded on first open; a store
            opened with another owner is refused (its votes and log are another node's).
        max_pending_ops, max_pending_bytes: bound of the commit queue (the batch being
            committed included); writers wait for room beyond it.
        logger: where corruption and failures are reported.

    Raises:
        StorageError: the file cannot be opened or read (in use by another process, not a
            store, a newer format, another owner, malformed).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        owner: str | None = None,
        max_pending_ops: int = 4096,
        max_pending_bytes: int = 64 << 20,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_pending_ops < 1 or max_pending_bytes < 1:
            raise ValueError("the commit queue bounds must be positive")
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        self.log = logger if logger is not None else logging.getLogger("nuraft_mesg.storage")
        self._max_ops = max_pending_ops
        self._max_bytes = max_pending_bytes
        self._groups: dict[str, GroupData] = {}
        self._next_gkey = 1
        self._conn = self._open_connection(owner)
        try:
            self._load()
        except BaseException:
            self._conn.close()
            raise
        self._limiter = trio.CapacityLimiter(1)
        self._pending: deque[QueuedOp] = deque()
        self._wakeup = trio.Event()
        self._room = trio.Event()
        self._queued_ops = 0  # queued + being committed
        self._queued_bytes = 0
        self._failed: StorageError | None = None
        self._closed = False
        self._running = False
        self._commits = 0
        self._operations = 0
        self._bytes = 0
        self._max_batch = 0

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self.path)!r} groups={len(self._groups)}>"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        owner: str | None = None,
        max_pending_ops: int = 4096,
        max_pending_bytes: int = 64 << 20,
        logger: logging.Logger | None = None,
    ) -> AsyncIterator[SqliteStore]:
        """Open the store in a worker thread, run its committer, close it on exit."""

        def make() -> SqliteStore:
            return cls(
                data_dir,
                owner=owner,
                max_pending_ops=max_pending_ops,
                max_pending_bytes=max_pending_bytes,
                logger=logger,
            )

        store = await trio.to_thread.run_sync(make)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                try:
                    yield store
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    def _commit_blocking(self, batch: Sequence[QueuedOp]) -> None:
        """Run one batch as one transaction (in the worker thread; the committer of
        :class:`CommitQueue` calls it).  Defined here, on the class, so that a test or tool
        can slow it down or fail it for every store."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                op.apply(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def groups(self) -> list[GroupRecord]:
        """Every group stored here (with its recorded type), in creation order."""
        return sorted(
            (d.record() for d in self._groups.values() if d.registered),
            key=lambda r: (r.created, r.group_id),
        )

    def __contains__(self, group_id: object) -> bool:
        data = self._groups.get(group_id) if isinstance(group_id, str) else None
        return data is not None and data.registered

    def stored_snapshot(self, group_id: str) -> SnapshotMeta | None:
        """The latest snapshot of ``group_id`` that is durable here, or None."""
        data = self._groups.get(group_id)
        return data.snapshot if data is not None else None

    # -- per-group objects -----------------------------------------------------------------
    def _group(self, group_id: str, group_type: str, server_id: int) -> GroupData:
        data = self._groups.get(group_id)
        if data is None:
            data = GroupData(
                self._next_gkey, group_id, group_type, server_id, time.time(), registered=False
            )
            self._next_gkey += 1
            self._groups[group_id] = data
        elif not data.registered and (server_id or group_type):
            # Nothing written yet: the latest caller names the group (registered on 1st write).
            data.server_id = server_id or data.server_id
            data.group_type = group_type or data.group_type
        if data.corrupt is not None:
            raise StorageError(f"{self.path}: group {group_id}: {data.corrupt}")
        return data

    def log_store(self, group_id: str) -> SqliteLogStore:
        """The log of ``group_id`` (registered with an empty type on its first write if the
        group is new; :meth:`state_manager` records the real type)."""
        return self._log_store_of(self._group(group_id, "", 0))

    def _log_store_of(self, data: GroupData) -> SqliteLogStore:
        store = data.log_store
        if not isinstance(store, SqliteLogStore):  # None until first used
            store = data.log_store = SqliteLogStore(self, data)
        return store

    def state_manager(
        self,
        group_id: str,
        *,
        server_id: int = 0,
        endpoint: str = "",
        group_type: str = "",
        initial_config: ClusterConfig | None = None,
        state_machine: StateMachine | None = None,
        delegate: StateManager | None = None,
    ) -> SqliteStateManager:
        """A durable state manager for ``group_id`` over this store.

        With ``delegate`` (a state manager the application made), the server id, the state
        machine, the initial config and every hook (``leave``, ``raft_event``, ...) come from
        it, and only persistence is done here.  Otherwise they come from the arguments: the
        initial config defaults to this server alone (``endpoint`` is its uuid) and the state
        machine to a new :class:`~nuraft_mesg.storage.memory.KVStateMachine`.

        Raises:
            StorageError: the group's stored state is corrupt.
        """
        sid = delegate.server_id if delegate is not None else server_id
        data = self._group(group_id, group_type, sid)
        if data.server_id != sid:
            raise StorageError(
                f"{self.path}: group {group_id} is stored for server id {data.server_id}, "
                f"not {sid}"
            )
        return SqliteStateManager(
            self,
            data,
            endpoint=endpoint,
            initial_config=initial_config,
            state_machine=state_machine,
            delegate=delegate,
        )

    def wrap(self, smgr: StateManager, group_id: str, group_type: str) -> SqliteStateManager:
        """``smgr`` made durable in this store (itself if it already is)."""
        if isinstance(smgr, SqliteStateManager) and smgr.store is self:
            return smgr
        return self.state_manager(group_id, group_type=group_type, delegate=smgr)

    def destroy(self, group_id: str) -> None:
        """Delete everything stored for ``group_id`` (queued; :meth:`barrier` waits for it).
        Its state managers and log store refuse every later mutation."""
        data = self._groups.get(group_id)
        if data is not None:
            self._destroy(data)


class SqliteStateManager(StateManager):
    """Durable state manager of one group in a :class:`SqliteStore` (see
    :meth:`SqliteStore.state_manager`).

    If the state machine supports snapshots, :meth:`get_state_machine` returns it wrapped in a
    :class:`SqliteStateMachine` (``.delegate`` is the original), and the group's stored
    snapshot is restored into it here, when the state manager is created.
    """

    __slots__ = (
        "_store",
        "_data",
        "_endpoint",
        "_initial_config",
        "_state_machine",
        "_delegate",
    )

    def __init__(
        self,
        store: SqliteStore,
        data: GroupData,
        *,
        endpoint: str = "",
        initial_config: ClusterConfig | None = None,
        state_machine: StateMachine | None = None,
        delegate: StateManager | None = None,
    ) -> None:
        self._store = store
        self._data = data
        self._endpoint = endpoint
        self._initial_config = initial_config
        self._delegate = delegate
        if delegate is not None:
            state_machine = delegate.get_state_machine()
        machine = state_machine if state_machine is not None else KVStateMachine()
        if machine.supports_snapshots and not isinstance(machine, SqliteStateMachine):
            durable = SqliteStateMachine(store, data, machine)
            durable.restore()
            machine = durable
        self._state_machine: StateMachine = machine

    def __repr__(self) -> str:
        return f"<SqliteStateManager {self._data.group_id} in {str(self._store.path)!r}>"

    @property
    def store(self) -> SqliteStore:
        return self._store

    @property
    def group_id(self) -> str:
        return self._data.group_id

    @property
    def delegate(self) -> StateManager | None:
        """The application's state manager this one persists for, if any."""
        return self._delegate

    @property
    def server_id(self) -> int:
        return self._data.server_id

    # -- config and hard state -------------------------------------------------------------
    def load_config(self) -> ClusterConfig:
        if self._data.config is not None:
            return self._data.config
        if self._delegate is not None:
            return self._delegate.load_config()
        if self._initial_config is not None:
            return self._initial_config
        return ClusterConfig(servers=(ServerConfig(id=self.server_id, endpoint=self._endpoint),))

    async def save_config(self, config: ClusterConfig) -> None:
        d = self._data
        await self._store._settle(d, "save_config")
        blob = config.encode()
        row = (d.gkey, blob, config_crc(d.seed, blob))

        def statements(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO config(gkey, data, crc) VALUES (?, ?, ?)", row)

        def on_commit() -> None:
            d.config = config

        await self._store._mutate(d, "saving the config", statements, on_commit, len(blob))

    async def save_state(self, state: HardState) -> None:
        d = self._data
        await self._store._settle(d, "save_state")
        row = (
            d.gkey,
            state.term,
            state.vote,
            state.commit,
            state_crc(d.seed, state.term, state.vote, state.commit),
        )

        def statements(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO hard_state(gkey, term, vote, commit_idx, crc) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )

        def on_commit() -> None:
            d.state = state

        await self._store._mutate(d, "saving the hard state", statements, on_commit, 32)

    def read_state(self) -> HardState | None:
        return None if self._data.destroyed else self._data.state

    # -- stores ----------------------------------------------------------------------------
    def load_log_store(self) -> LogStore:
        if self._data.destroyed:
            raise StorageError(f"group {self._data.group_id} was permanently destroyed")
        return self._store._log_store_of(self._data)

    def get_state_machine(self) -> StateMachine:
        return self._state_machine

    def get_logstore_id(self) -> int:
        if self._delegate is not None:
            return self._delegate.get_logstore_id()
        return self._data.gkey

    # -- lifecycle -------------------------------------------------------------------------
    def permanent_destroy(self) -> None:
        """Forget the group at once and queue the deletion of its rows (``await
        store.barrier()`` to wait until it is on disk; ``Manager.leave_group`` does)."""
        self._store._destroy(self._data)
        if self._delegate is not None:
            self._delegate.permanent_destroy()

    def leave(self) -> None:
        if self._delegate is not None:
            self._delegate.leave()

    def become_ready(self) -> None:
        if self._delegate is not None:
            self._delegate.become_ready()

    def raft_event(self, event: Event) -> None:
        if self._delegate is not None:
            self._delegate.raft_event(event)

    def system_exit(self, error: BaseException) -> None:
        if self._delegate is not None:
            self._delegate.system_exit(error)
