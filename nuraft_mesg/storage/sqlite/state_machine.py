"""Durable snapshots (:class:`SqliteStateMachine`): the application's state machine, with
each snapshot it creates or receives queued for storage, and the stored one restored at open.

Separate because snapshots follow their own ordering argument (queued without waiting, yet
committed before anything that depends on them), spelled out in the class docstring.
"""

from __future__ import annotations

from nuraft_mesg.errors import StorageError
from nuraft_mesg.raft.types import ClusterConfig, SnapshotMeta
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.sqlite.commit_queue import CommitQueue
from nuraft_mesg.storage.sqlite.records import GroupData

__all__ = ["SqliteStateMachine"]


class SqliteStateMachine(StateMachine):
    """A snapshotting state machine whose snapshots are durable in a :class:`SqliteStore`.

    :class:`SqliteStateManager` wraps the group's state machine in one of these when that
    state machine supports snapshots (see "Snapshots" in :mod:`nuraft_mesg.storage.sqlite`).
    Applying entries and reading snapshots are delegated unchanged.  ``create_snapshot`` and
    ``apply_snapshot`` are delegated, then the new snapshot's objects are read back through
    ``read_snapshot_chunk`` and its write is queued in the store.  That write is not committed
    when they return -- the hooks are synchronous, and waiting for an fsync on the trio thread
    would stall every group -- but it is ordered before every later write of the group: the
    compaction behind a created snapshot (a later Ready's ``compact_to``, through
    :meth:`SqliteLogStore.compact`) and, for a received snapshot, the log reset, hard state,
    config and acknowledgement that ``RaftGroup._persist`` issues right after
    ``apply_snapshot``.  Until then nothing depends on the snapshot being durable.

    What remains synchronous on the trio thread is the state machine's own work (creating or
    applying the snapshot, handing out its objects) plus a list of references to the objects;
    the SQL, the CRCs and the fsync run in the store's worker thread.
    """

    __slots__ = ("_store", "_data", "_delegate")

    def __init__(self, store: CommitQueue, data: GroupData, delegate: StateMachine) -> None:
        if not delegate.supports_snapshots:
            raise ValueError(f"{delegate!r} does not support snapshots")
        self._store = store
        self._data = data
        self._delegate = delegate

    def __repr__(self) -> str:
        return f"<SqliteStateMachine {self._data.group_id} over {self._delegate!r}>"

    @property
    def delegate(self) -> StateMachine:
        """The application's state machine."""
        return self._delegate

    # -- applying (delegated) --------------------------------------------------------------
    def commit(self, index: int, data: bytes) -> bytes:
        return self._delegate.commit(index, data)

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self._delegate.commit_config(index, config)

    def query(self, query: bytes) -> bytes:
        """Reads are the application's (delegated): snapshots do not change the state."""
        return self._delegate.query(query)

    def last_commit_index(self) -> int:
        return self._delegate.last_commit_index()

    # -- snapshots -------------------------------------------------------------------------
    @property
    def supports_snapshots(self) -> bool:
        return True

    def create_snapshot(self, meta: SnapshotMeta) -> None:
        self._delegate.create_snapshot(meta)
        self._persist(meta)

    def last_snapshot(self) -> SnapshotMeta | None:
        return self._delegate.last_snapshot()

    def read_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int) -> tuple[bytes, bool]:
        return self._delegate.read_snapshot_chunk(meta, obj_id)

    def save_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int, data: bytes,
                            is_first: bool, is_last: bool) -> None:
        self._delegate.save_snapshot_chunk(meta, obj_id, data, is_first, is_last)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        self._delegate.apply_snapshot(meta)
        self._persist(meta)

    def _persist(self, meta: SnapshotMeta) -> None:
        """Queue the write of ``meta`` (now the delegate's latest snapshot) and its objects."""
        objects: list[bytes] = []
        while True:
            data, is_last = self._delegate.read_snapshot_chunk(meta, len(objects))
            objects.append(bytes(data))
            if is_last:
                break
        self._store._queue_snapshot(self._data, meta, objects)

    def restore(self) -> SnapshotMeta | None:
        """Install the group's stored snapshot into the delegate if it has applied less than
        it (a fresh in-memory state machine after a restart), through ``save_snapshot_chunk``
        and ``apply_snapshot`` as a snapshot received from the leader is.  Returns the
        snapshot installed, or None.  The objects read at open are then released (kept if the
        state machine rejected them, for a retry).

        Raises:
            StorageError: the state machine rejected the stored snapshot.
        """
        d, sm = self._data, self._delegate
        meta, objects = d.snapshot, d.snapshot_objects
        if meta is None or objects is None:
            return None
        if sm.last_commit_index() >= meta.last_index:
            d.snapshot_objects = None
            return None  # it kept its state (a durable state machine, or the same process)
        last = len(objects) - 1
        try:
            for obj_id, obj in enumerate(objects):
                sm.save_snapshot_chunk(meta, obj_id, obj, obj_id == 0, obj_id == last)
            sm.apply_snapshot(meta)
        except Exception as exc:
            raise StorageError(
                f"{self._store.path}: group {d.group_id}: restoring the stored snapshot "
                f"{meta.last_index}/{meta.last_term} into {sm!r} failed: {exc!r}"
            ) from exc
        if sm.last_commit_index() != meta.last_index:
            raise StorageError(
                f"{self._store.path}: group {d.group_id}: after restoring the stored snapshot "
                f"{meta.last_index}, {sm!r} reports last_commit_index() "
                f"{sm.last_commit_index()}"
            )
        d.snapshot_objects = None
        self._store.log.info(
            "%s: group %s: restored snapshot %d/%d (%d object(s)) into the state machine",
            self._store.path, d.group_id, meta.last_index, meta.last_term, len(objects),
        )
        return meta
