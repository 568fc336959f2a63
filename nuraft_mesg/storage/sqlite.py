"""The durable default store: every group of a manager in one SQLite database.

Layout
------
One file per manager, ``<data_dir>/nuraft.db`` (plus ``nuraft.db-wal`` while it is open or
after a crash), shared by every group the manager hosts::

    schema_info   key -> value              format version, owning server uuid
    groups        gkey, group_id, group_type, server_id, created      (the registry)
    hard_state    gkey -> term, vote, commit_idx, crc
    config        gkey -> data (ClusterConfig.encode()), crc
    log_boundary  gkey -> start_index, boundary_term, crc   (absent: never compacted, (1, 0))
    log           (gkey, idx) -> term, type, buffer, ts, crc      WITHOUT ROWID, clustered
    snapshot      gkey -> last_index, last_term, config, objects, crc   (the latest snapshot)
    snapshot_object  (gkey, obj_id) -> last_index, data, crc        its objects 0..objects-1

``gkey`` is a small integer standing for the group id inside the file.  Every record carries a
CRC-32 of its content seeded with the group id (and, for log records, the index; for snapshot
objects, the snapshot's index and the object id), so a record that rotted, was edited, or was
copied to the wrong place fails its check.

Durability contract
-------------------
The database runs in WAL mode with ``synchronous=FULL``: a transaction is on disk (the WAL is
fsynced) when ``COMMIT`` returns.  Every mutation of :class:`SqliteLogStore` and
:class:`SqliteStateManager` returns only after the transaction holding it committed, so the
runtime sends votes and acknowledgements only for stored data (see
:mod:`nuraft_mesg.storage.interfaces`).  Each mutation is one transaction's worth of statements,
so after a crash it is either entirely there or entirely absent: a log write never leaves new
entries after old ones, a compaction never leaves the new start with the old boundary term.

The database is opened in SQLite's EXCLUSIVE locking mode: a second process (or a second
store in this process) opening the same ``data_dir`` is refused ("in use") instead of
corrupting the Raft state, and the file records the uuid of the server owning it.

Threading and group commit
--------------------------
SQLite connections are single-threaded objects and fsync blocks, so all disk work runs in a
worker thread (``trio.to_thread.run_sync`` through a ``CapacityLimiter(1)``: one call at a time
on the one connection); the trio loop never blocks on the disk.

Writers do not run transactions themselves.  They queue an operation and wait; one committer
task (:meth:`SqliteStore.run`) takes *everything* queued, runs it as one transaction with one
fsync, then wakes every writer of the batch.  Writes that arrive while a commit is in progress
form the next batch, so under load many groups share each fsync (group commit) and the number
of fsyncs per second stays bounded by the disk, not by the number of groups.

The queue is bounded (``max_pending_ops`` operations and ``max_pending_bytes`` bytes, counting
the batch being committed): a writer that finds it full waits for room.  Together with the
runtime awaiting every write, a slow disk slows the groups down (their inboxes fill and
``append_entries`` waits) instead of piling up memory.

Reads are synchronous in the storage interfaces, so each group's log, hard state and config
are cached in memory, loaded when the store opens and updated only after the transaction that
changed them committed (in the trio thread, right after the commit).  Readers therefore see
the content before or after a pending mutation, never a mix, and never data that is not on
disk.  (Snapshots and compaction bound the cached log: :meth:`SqliteLogStore.compact` trims
it and records the boundary in ``log_boundary``.)

Snapshots
---------
The log is compacted behind snapshots, so the state a snapshot holds must survive a restart
as durably as the log: otherwise a restarted node has a compacted log and an empty state
machine.  When the state machine of a state manager supports snapshots (the default
:class:`~nuraft_mesg.storage.memory.KVStateMachine` does), :class:`SqliteStateManager` hands
the runtime a :class:`SqliteStateMachine` wrapping it, which

* after every ``create_snapshot`` (taken by the runtime) and every ``apply_snapshot`` (a
  snapshot received from the leader) reads the new snapshot's objects back through
  ``read_snapshot_chunk`` and queues one write that replaces the group's stored snapshot by it
  -- metadata row and objects, with CRCs, in one transaction, so the previous snapshot is
  deleted exactly when the new one is durable;
* when the state manager is created (the group starts), restores the stored snapshot into a
  state machine that has applied less than it (after a restart: a fresh in-memory one),
  through ``save_snapshot_chunk`` + ``apply_snapshot`` as a received snapshot would be, so its
  ``last_commit_index()`` is the snapshot's index and the runtime replays the log after it.

Why a queued write is early enough.  The hooks are synchronous, and an fsync (or a large write)
on the trio thread would stall every group, so the snapshot write goes through the group-commit
queue like every other mutation (it is queued at once, without waiting for room: it may exceed
the queue bounds, and the writers after it wait).  The queue is FIFO and the group's later
mutations first wait for its earlier ones, so the snapshot is committed in the same transaction
as, or one before, any later mutation of the group -- and the runtime (``nuraft_mesg/group.py``)
never relies on a snapshot before such a mutation:

* a snapshot it creates is followed by ``RaftNode.snapshot_taken``, and the compaction behind
  it comes as ``Ready.compact_to`` of a *later* Ready, persisted through
  :meth:`SqliteLogStore.compact`, which is queued behind the snapshot write;
* a received snapshot is applied (``apply_snapshot``) first thing in ``RaftGroup._persist``,
  which then resets and compacts the log store, saves the hard state and config and only then
  sends the acknowledgement of the snapshot's last object -- every one of those writes is
  queued behind the snapshot write.

A crash before the snapshot write committed leaves the log uncompacted and the snapshot
unacknowledged: the node replays its log (or receives the snapshot again).  A failed snapshot
write fails the store like any other, so the compaction behind it fails too.

The stored snapshot's objects are read (and their CRCs checked) when the store opens, with
everything else, and held until the group's state manager is created; then they are handed
to the state machine and released.  A snapshot that fails its checks (a record or an object
fails its CRC, an object is missing, it lies behind the log boundary) makes the group unusable
on this node if the log was compacted behind it (``StorageError``, like a damaged hard state:
replaying the log would skip the compacted prefix); if the log was never compacted (it still
starts at index 1), the snapshot is redundant and is dropped with an ERROR, and the log is
replayed.

Corruption
----------
A torn write -- a crash in the middle of writing the WAL -- is SQLite's business: WAL frames
are checksummed and a transaction whose commit frame is not intact is discarded on the next
open, so the store comes back with the last *committed* transactions.  Those are, by the
contract above, everything that was ever acknowledged.

The record checksums catch what SQLite cannot see: bit rot inside a page, a stray edit, a bad
restore.  When the store opens:

* a log record that fails its checksum (or does not continue the log: a gap, an undecodable
  type) **cuts the group's log at that index**: the record and every record after it are
  deleted (durably, before anything else happens) and an ERROR names the group, the index and
  the number of records dropped.  Nothing after a bad record is ever replayed.  Raft treats the
  cut like a replica that lost the tail of its log: the entries come back from the leader if a
  quorum still holds them, which is why one corrupt replica never loses committed data;
* a hard state, config or log boundary that fails its checksum makes the group unusable on
  this node -- guessing a term or a vote could make it vote twice -- and so does a damaged
  snapshot the log was compacted behind (see Snapshots).  The group is not started
  (opening its state manager raises :class:`~nuraft_mesg.errors.StorageError`, and the
  manager logs it and goes on with its other groups); delete the group here and re-add the node
  to it (``leave_group`` on this node, then ``add_member`` on the leader);
* a file SQLite itself finds malformed (a truncated or overwritten page) cannot be opened at
  all: :class:`~nuraft_mesg.errors.StorageError` says so, and the manager does not start.

Failures
--------
Any error while committing (``sqlite3.Error`` -- disk full, read-only file system, I/O
error -- or ``OSError``) rolls the transaction back and fails the store: every writer of the
batch, every queued writer and every later writer gets :class:`~nuraft_mesg.errors.StorageError`
naming the file and the cause, and the error is logged once at ERROR.  Nothing is
acknowledged that was not stored: the caches only move after a successful commit, and the
runtime stops each group whose write failed (its callers get ``Failed``).  The store is not
retried in this process (after a failed fsync the page cache cannot be trusted); restart the
manager once the disk is fixed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from nuraft_mesg.errors import BadRequest, StorageError
from nuraft_mesg.raft.ready import Event
from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    LogType,
    ServerConfig,
    SnapshotMeta,
)
from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine

__all__ = [
    "DB_NAME",
    "GroupRecord",
    "SqliteLogStore",
    "SqliteStateMachine",
    "SqliteStateManager",
    "SqliteStore",
    "StoreStatistics",
]

DB_NAME = "nuraft.db"
SCHEMA_VERSION = 2
"""1: log, hard state, config; 2: + snapshots (a format-1 file is upgraded when opened)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    gkey       INTEGER PRIMARY KEY,
    group_id   TEXT NOT NULL UNIQUE,
    group_type TEXT NOT NULL,
    server_id  INTEGER NOT NULL,
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hard_state (
    gkey       INTEGER PRIMARY KEY,
    term       INTEGER NOT NULL,
    vote       INTEGER NOT NULL,
    commit_idx INTEGER NOT NULL,
    crc        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config (
    gkey INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    crc  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_boundary (
    gkey          INTEGER PRIMARY KEY,
    start_index   INTEGER NOT NULL,
    boundary_term INTEGER NOT NULL,
    crc           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    gkey   INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    term   INTEGER NOT NULL,
    type   INTEGER NOT NULL,
    buffer BLOB NOT NULL,
    ts     INTEGER NOT NULL,
    crc    INTEGER NOT NULL,
    PRIMARY KEY (gkey, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshot (
    gkey       INTEGER PRIMARY KEY,
    last_index INTEGER NOT NULL,
    last_term  INTEGER NOT NULL,
    config     BLOB NOT NULL,
    objects    INTEGER NOT NULL,
    crc        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_object (
    gkey       INTEGER NOT NULL,
    obj_id     INTEGER NOT NULL,
    last_index INTEGER NOT NULL,
    data       BLOB NOT NULL,
    crc        INTEGER NOT NULL,
    PRIMARY KEY (gkey, obj_id)
);
"""
# (snapshot_object is a rowid table: SQLite advises against WITHOUT ROWID for large rows.)

_PER_GROUP_TABLES = (
    "log", "hard_state", "config", "log_boundary", "snapshot_object", "snapshot", "groups"
)

_ENTRY_HEADER = struct.Struct(">qqqq")  # index, term, type, timestamp
_STATE = struct.Struct(">qqq")  # term, vote, commit
_BOUNDARY = struct.Struct(">qq")  # start index, boundary term
_SNAPSHOT = struct.Struct(">qqq")  # last index, last term, number of objects
_OBJECT = struct.Struct(">qq")  # snapshot's last index, object id


def _seed(group_id: str) -> int:
    return zlib.crc32(group_id.encode())


def _entry_crc(seed: int, index: int, term: int, kind: int, ts: int, buffer: bytes) -> int:
    return zlib.crc32(buffer, zlib.crc32(_ENTRY_HEADER.pack(index, term, kind, ts), seed))


def _state_crc(seed: int, term: int, vote: int, commit: int) -> int:
    return zlib.crc32(_STATE.pack(term, vote, commit), seed)


def _config_crc(seed: int, data: bytes) -> int:
    return zlib.crc32(data, seed)


def _boundary_crc(seed: int, start: int, term: int) -> int:
    return zlib.crc32(_BOUNDARY.pack(start, term), seed)


def _snapshot_crc(seed: int, last_index: int, last_term: int, objects: int, config: bytes) -> int:
    return zlib.crc32(config, zlib.crc32(_SNAPSHOT.pack(last_index, last_term, objects), seed))


def _object_crc(seed: int, last_index: int, obj_id: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(_OBJECT.pack(last_index, obj_id), seed))


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """One row of the registry: a group this store holds."""

    group_id: str
    group_type: str
    server_id: int
    created: float
    """Unix time of the group's first write on this node."""
    corrupt: str | None = None
    """Why the group cannot be opened (a checksum failure), or None."""


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters of one :class:`SqliteStore` since it opened."""

    commits: int
    """Transactions committed by the committer (each one fsync of the WAL)."""
    operations: int
    """Mutations those transactions carried (log writes, saves, compactions, deletions)."""
    bytes_written: int
    """Approximate payload bytes of those mutations."""
    max_batch: int
    """The largest number of mutations one transaction carried."""


@dataclass(slots=True, eq=False)
class _Op:
    """One queued mutation of one group."""

    group: _GroupData | None
    apply: Callable[[sqlite3.Connection], None]
    """Runs in the worker thread, inside the batch's transaction."""
    on_commit: Callable[[], None] | None
    """Runs in the trio thread once the transaction committed (moves the caches)."""
    size: int
    what: str
    done: trio.Event = field(default_factory=trio.Event)
    error: StorageError | None = None

    def finish(self, error: StorageError | None) -> None:
        self.error = error
        self.done.set()


class _GroupData:
    """What the store holds for one group, cached in memory (the disk is written first)."""

    __slots__ = (
        "gkey",
        "group_id",
        "group_type",
        "server_id",
        "created",
        "seed",
        "registered",
        "state",
        "config",
        "start",
        "boundary_term",
        "entries",
        "snapshot",
        "snapshot_objects",
        "corrupt",
        "destroyed",
        "last_op",
        "log_store",
    )

    def __init__(
        self,
        gkey: int,
        group_id: str,
        group_type: str,
        server_id: int,
        created: float,
        *,
        registered: bool,
    ) -> None:
        self.gkey = gkey
        self.group_id = group_id
        self.group_type = group_type
        self.server_id = server_id
        self.created = created
        self.seed = _seed(group_id)
        self.registered = registered
        self.state: HardState | None = None
        self.config: ClusterConfig | None = None
        self.start = 1
        self.boundary_term = 0
        self.entries: list[LogEntry] = []
        self.snapshot: SnapshotMeta | None = None
        """The latest durable snapshot (updated once a snapshot write committed)."""
        self.snapshot_objects: list[bytes] | None = None
        """Its objects, as read when the store opened, until a state manager restored them."""
        self.corrupt: str | None = None
        self.destroyed = False
        self.last_op: _Op | None = None
        self.log_store: SqliteLogStore | None = None

    @property
    def next_slot(self) -> int:
        return self.start + len(self.entries)

    def record(self) -> GroupRecord:
        return GroupRecord(
            self.group_id, self.group_type, self.server_id, self.created, self.corrupt
        )


# ============================================================================================
# The store
# ============================================================================================
class SqliteStore:
    """One SQLite database holding every group of a manager.  See the module docstring.

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
        self._groups: dict[str, _GroupData] = {}
        self._next_gkey = 1
        self._conn = self._open_connection(owner)
        try:
            self._load()
        except BaseException:
            self._conn.close()
            raise
        self._limiter = trio.CapacityLimiter(1)
        self._pending: deque[_Op] = deque()
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

    # -- opening ---------------------------------------------------------------------------
    def _error(self, action: str, exc: BaseException) -> StorageError:
        return StorageError(f"{self.path}: {action} failed: {type(exc).__name__}: {exc}")

    def _open_connection(self, owner: str | None) -> sqlite3.Connection:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=2.0
            )
        except (sqlite3.Error, OSError) as exc:
            raise self._error("opening the database", exc) from exc
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc):
                    raise StorageError(
                        f"{self.path} is in use by another process (or another store in "
                        "this one): a data_dir belongs to exactly one running manager"
                    ) from exc
                raise
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN EXCLUSIVE")  # takes the lock, kept until close
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if not 0 <= version <= SCHEMA_VERSION:
                    raise StorageError(
                        f"{self.path} has storage format {version}; this version of "
                        f"nuraft_mesg reads formats up to {SCHEMA_VERSION}"
                    )
                # Format 1 lacks the snapshot tables: created below, in this transaction.
                for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                if owner is not None:
                    row = conn.execute(
                        "SELECT value FROM schema_info WHERE key='owner'"
                    ).fetchone()
                    if row is None:
                        conn.execute(
                            "INSERT INTO schema_info(key, value) VALUES ('owner', ?)", (owner,)
                        )
                    elif row[0] != owner:
                        raise StorageError(
                            f"{self.path} belongs to server {row[0]}, not {owner}: refusing "
                            "to reuse another node's Raft state"
                        )
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            _fsync_dir(self.data_dir)
        except StorageError:
            conn.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise self._error("opening the database", exc) from exc
        return conn

    def _load(self) -> None:
        """Read every group into memory, verifying checksums; cut corrupt log tails."""
        try:
            self._load_rows()
        except StorageError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise self._error(
                "reading the database (it may be damaged: restore it or empty the data_dir "
                "and re-add this node to its groups)",
                exc,
            ) from exc

    def _load_rows(self) -> None:
        conn = self._conn
        by_key: dict[int, _GroupData] = {}
        max_key = 0
        for gkey, gid, gtype, sid, created in conn.execute(
            "SELECT gkey, group_id, group_type, server_id, created FROM groups"
        ):
            data = _GroupData(gkey, gid, gtype, sid, created, registered=True)
            by_key[gkey] = data
            self._groups[gid] = data
            max_key = max(max_key, gkey)
        orphans: set[int] = set()

        def owner_of(gkey: int) -> _GroupData | None:
            data = by_key.get(gkey)
            if data is None:
                orphans.add(gkey)
            return data

        def corrupt(data: _GroupData, what: str) -> None:
            if data.corrupt is None:
                data.corrupt = what
                self.log.error(
                    "%s: group %s: %s; the group cannot start on this node (remove it with "
                    "leave_group and re-add this node to the group)",
                    self.path, data.group_id, what,
                )

        for gkey, term, vote, commit, crc in conn.execute(
            "SELECT gkey, term, vote, commit_idx, crc FROM hard_state"
        ):
            held = owner_of(gkey)
            if held is None:
                continue
            if not _checks(crc, _state_crc, held.seed, term, vote, commit):
                corrupt(held, "the hard state (term, vote, commit) fails its checksum")
                continue
            held.state = HardState(term, vote, commit)
        for gkey, blob, crc in conn.execute("SELECT gkey, data, crc FROM config"):
            held = owner_of(gkey)
            if held is None:
                continue
            if not _checks(crc, _config_crc, held.seed, blob):
                corrupt(held, "the cluster config fails its checksum")
                continue
            try:
                held.config = ClusterConfig.decode(blob)
            except BadRequest as exc:
                corrupt(held, f"the cluster config cannot be decoded ({exc})")
        for gkey, start, bterm, crc in conn.execute(
            "SELECT gkey, start_index, boundary_term, crc FROM log_boundary"
        ):
            held = owner_of(gkey)
            if held is None:
                continue
            if not _checks(crc, _boundary_crc, held.seed, start, bterm) or start < 1:
                corrupt(held, "the log boundary (start index, term) fails its checksum")
                continue
            held.start, held.boundary_term = start, bterm

        cleanup: list[tuple[str, tuple[int, ...]]] = []
        self._load_snapshots(by_key, owner_of, corrupt, cleanup)
        current: _GroupData | None = None
        cut_at = 0  # index from which the current group's log is dropped (0: not cut)
        dropped = 0
        prev_term = 0

        def finish_group() -> None:
            if current is not None and cut_at:
                cleanup.append(("DELETE FROM log WHERE gkey=? AND idx>=?", (current.gkey, cut_at)))
                self.log.error(
                    "%s: group %s: log record at index %d is corrupt; the log is cut there: "
                    "%d record(s) from index %d on were dropped and will not be replayed",
                    self.path, current.group_id, cut_at, dropped, cut_at,
                )

        stale: set[int] = set()
        for gkey, idx, term, kind, buf, ts, crc in conn.execute(
            "SELECT gkey, idx, term, type, buffer, ts, crc FROM log ORDER BY gkey, idx"
        ):
            if current is None or gkey != current.gkey:
                finish_group()
                current = owner_of(gkey)
                cut_at = dropped = 0
                prev_term = current.boundary_term if current is not None else 0
            if current is None:
                continue
            if idx < current.start:
                stale.add(gkey)  # below the boundary: left behind by nothing we write
                continue
            if cut_at:
                dropped += 1
                continue
            expected = current.start + len(current.entries)
            entry = _decode_entry(current.seed, idx, expected, prev_term, term, kind, buf, ts, crc)
            if entry is None:
                cut_at = expected
                dropped = 1
                continue
            current.entries.append(entry)
            prev_term = entry.term
        finish_group()

        for gkey in sorted(stale):
            data = by_key[gkey]
            self.log.warning(
                "%s: group %s: dropping log records below the compaction boundary %d",
                self.path, data.group_id, data.start - 1,
            )
            cleanup.append(("DELETE FROM log WHERE gkey=? AND idx<?", (gkey, data.start)))
        for gkey in sorted(orphans):
            self.log.warning("%s: dropping records of unregistered group key %d", self.path, gkey)
            for table in _PER_GROUP_TABLES[:-1]:
                cleanup.append((f"DELETE FROM {table} WHERE gkey=?", (gkey,)))
        for data in self._groups.values():
            if data.state is not None and data.state.commit >= data.next_slot:
                self.log.warning(
                    "%s: group %s: saved commit index %d is beyond the log (last index %d)",
                    self.path, data.group_id, data.state.commit, data.next_slot - 1,
                )
        if cleanup:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in cleanup:
                    conn.execute(sql, args)
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        self._next_gkey = max_key + 1

    def _load_snapshots(
        self,
        by_key: dict[int, _GroupData],
        owner_of: Callable[[int], _GroupData | None],
        corrupt: Callable[[_GroupData, str], None],
        cleanup: list[tuple[str, tuple[int, ...]]],
    ) -> None:
        """Read every group's snapshot and its objects, verifying checksums (after the log
        boundaries: whether a bad snapshot is fatal depends on them)."""
        conn = self._conn
        found: dict[int, tuple[SnapshotMeta, int]] = {}
        bad: dict[int, str] = {}
        for gkey, last_index, last_term, blob, count, crc in conn.execute(
            "SELECT gkey, last_index, last_term, config, objects, crc FROM snapshot"
        ):
            held = owner_of(gkey)
            if held is None:
                continue
            if not _checks(crc, _snapshot_crc, held.seed, last_index, last_term, count, blob):
                bad[gkey] = "record fails its checksum"
                continue
            if count < 1 or last_index < 1:
                bad[gkey] = f"record is invalid ({count} objects, index {last_index})"
                continue
            try:
                config = ClusterConfig.decode(blob)
            except BadRequest as exc:
                bad[gkey] = f"config cannot be decoded ({exc})"
                continue
            found[gkey] = (SnapshotMeta(last_index, last_term, config), count)
        objects: dict[int, list[bytes]] = {}
        for gkey, obj_id, last_index, data, crc in conn.execute(
            "SELECT gkey, obj_id, last_index, data, crc FROM snapshot_object "
            "ORDER BY gkey, obj_id"
        ):
            held = owner_of(gkey)
            if held is None or gkey in bad:
                continue
            entry = found.get(gkey)
            if entry is None:
                bad[gkey] = "objects have no snapshot record"
                continue
            meta, count = entry
            got = objects.setdefault(gkey, [])
            n = len(got)
            if obj_id != n or last_index != meta.last_index or n >= count:
                bad[gkey] = f"objects do not match its record (object {obj_id} of {count})"
            elif not _checks(crc, _object_crc, held.seed, last_index, obj_id, data):
                bad[gkey] = f"object {obj_id} of {count} fails its checksum"
            else:
                got.append(data)
        for gkey, (meta, count) in found.items():
            if gkey in bad:
                continue
            held = by_key[gkey]
            got = objects.get(gkey, [])
            if len(got) != count:
                bad[gkey] = f"has {len(got)} of its {count} objects"
            elif meta.last_index < held.start - 1:
                bad[gkey] = (f"(index {meta.last_index}) is behind the log boundary "
                             f"{held.start - 1}")
            else:
                held.snapshot, held.snapshot_objects = meta, got
        for gkey, why in sorted(bad.items()):
            held = by_key[gkey]
            if held.corrupt is not None:
                continue  # unusable anyway: keep its rows as they are for inspection
            if held.start > 1:
                # The log was compacted behind it: without it the compacted prefix is lost.
                corrupt(held, f"the stored snapshot {why}, and the log was compacted behind it")
                continue
            self.log.error(
                "%s: group %s: the stored snapshot %s; it is dropped (the log was never "
                "compacted, so every entry is replayed from it instead)",
                self.path, held.group_id, why,
            )
            cleanup.append(("DELETE FROM snapshot_object WHERE gkey=?", (gkey,)))
            cleanup.append(("DELETE FROM snapshot WHERE gkey=?", (gkey,)))

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
    def _group(self, group_id: str, group_type: str, server_id: int) -> _GroupData:
        data = self._groups.get(group_id)
        if data is None:
            data = _GroupData(
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

    def _log_store_of(self, data: _GroupData) -> SqliteLogStore:
        if data.log_store is None:
            data.log_store = SqliteLogStore(self, data)
        return data.log_store

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

    def _destroy(self, data: _GroupData) -> None:
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
            for table in _PER_GROUP_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE gkey=?", (gkey,))

        # Not bounded (callers are synchronous); queued after every earlier write of the group.
        self._enqueue(_Op(None, apply, None, 64, f"deleting group {data.group_id}"))

    async def barrier(self) -> None:
        """Wait until everything queued before this call is committed.

        Raises:
            StorageError: the store failed or is closed.
        """
        await self._submit(_Op(None, _nothing, None, 0, "barrier"))

    # -- the commit queue ------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(f"{self.path}: the store failed earlier: {self._failed}")
        if self._closed:
            raise StorageError(f"{self.path}: the store is closed")

    async def _settle(self, data: _GroupData, what: str) -> None:
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

    async def _submit(self, op: _Op) -> None:
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

    def _enqueue(self, op: _Op) -> None:
        self._pending.append(op)
        self._queued_ops += 1
        self._queued_bytes += op.size
        self._wakeup.set()

    def _release(self, batch: Sequence[_Op]) -> None:
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
        batch: list[_Op] = []
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

    async def _commit(self, batch: list[_Op]) -> None:
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

    def _commit_blocking(self, batch: Sequence[_Op]) -> None:
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

    # -- mutations used by the per-group objects -------------------------------------------
    async def _mutate(
        self,
        data: _GroupData,
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
        data: _GroupData,
        what: str,
        statements: Callable[[sqlite3.Connection], None],
        on_commit: Callable[[], None],
        size: int,
    ) -> _Op:
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
        return _Op(data, apply, on_commit, size + 64, what)

    def _queue_snapshot(self, data: _GroupData, meta: SnapshotMeta, objects: list[bytes]) -> None:
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
                    (gkey, obj_id, index, obj, _object_crc(seed, index, obj_id, obj))
                    for obj_id, obj in enumerate(objects)
                ],
            )
            conn.execute(
                "INSERT OR REPLACE INTO snapshot(gkey, last_index, last_term, config, objects, "
                "crc) VALUES (?, ?, ?, ?, ?, ?)",
                (gkey, index, meta.last_term, config, count,
                 _snapshot_crc(seed, index, meta.last_term, count, config)),
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


def _checks(crc: object, compute: Callable[..., int], *fields: object) -> bool:
    """Whether a stored checksum matches ``compute(*fields)``; fields of the wrong type (a
    damaged row) fail the check instead of raising."""
    try:
        return compute(*fields) == crc
    except (TypeError, struct.error, OverflowError):
        return False


def _decode_entry(
    seed: int,
    idx: object,
    expected: int,
    prev_term: int,
    term: object,
    kind: object,
    buf: object,
    ts: object,
    crc: object,
) -> LogEntry | None:
    """The entry of a log row, or None if the row is corrupt or does not continue the log."""
    if idx != expected or not isinstance(buf, bytes):
        return None
    if not isinstance(term, int) or not isinstance(kind, int) or not isinstance(ts, int):
        return None
    if not _checks(crc, _entry_crc, seed, expected, term, kind, ts, buf):
        return None
    if term < prev_term:
        return None
    try:
        log_type = LogType(kind)
    except ValueError:
        return None
    return LogEntry(term=term, type=log_type, buffer=buf, timestamp=ts)


def _fsync_dir(path: Path) -> None:
    """Make the directory entry of a new database file durable (POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# ============================================================================================
# Per-group objects
# ============================================================================================
class SqliteLogStore(LogStore):
    """The log of one group in a :class:`SqliteStore` (reads from the in-memory cache)."""

    group_commit = True
    """Writes issued together (the runtime's log write, hard state and config of one Ready)
    share one transaction and one fsync, so the runtime issues them concurrently."""

    __slots__ = ("_store", "_data")

    def __init__(self, store: SqliteStore, data: _GroupData) -> None:
        self._store = store
        self._data = data

    def __repr__(self) -> str:
        return f"<SqliteLogStore {self._data.group_id} [{self.start_index()}, {self.next_slot()})>"

    @property
    def group_id(self) -> str:
        return self._data.group_id

    # -- reads -----------------------------------------------------------------------------
    def start_index(self) -> int:
        return self._data.start

    def next_slot(self) -> int:
        return self._data.next_slot

    def entries(self, start: int, end: int) -> list[LogEntry]:
        d = self._data
        if start > end:
            raise ValueError(f"reversed range [{start}, {end})")
        if start < d.start or end > d.next_slot:
            raise IndexError(f"range [{start}, {end}) not within held [{d.start}, {d.next_slot})")
        return d.entries[start - d.start : end - d.start]

    def term_at(self, index: int) -> int:
        d = self._data
        if index == 0:
            return 0
        if index == d.start - 1:
            return d.boundary_term
        if d.start <= index < d.next_slot:
            return d.entries[index - d.start].term
        raise IndexError(
            f"index {index} not held (boundary {d.start - 1}, next slot {d.next_slot})"
        )

    # -- mutations -------------------------------------------------------------------------
    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        d, store = self._data, self._store
        await store._settle(d, "a log write")
        keep = d.next_slot
        if truncate_from > 0:
            if not d.start <= truncate_from <= keep:
                raise ValueError(f"truncate_from {truncate_from} outside [{d.start}, {keep}]")
            keep = truncate_from
        new = list(entries)
        if new:
            if first_index != keep:
                raise ValueError(f"first_index {first_index} != next slot {keep}")
            prev_term = self.term_at(keep - 1)
            for offset, entry in enumerate(new):
                if entry.term < prev_term:
                    raise ValueError(
                        f"term {entry.term} at index {first_index + offset} follows term "
                        f"{prev_term}"
                    )
                prev_term = entry.term
        if not new and keep == d.next_slot:
            await trio.lowlevel.checkpoint()
            return
        gkey, seed, truncate = d.gkey, d.seed, keep < d.next_slot

        def statements(conn: sqlite3.Connection) -> None:
            if truncate:
                conn.execute("DELETE FROM log WHERE gkey=? AND idx>=?", (gkey, keep))
            if new:
                conn.executemany(
                    "INSERT INTO log(gkey, idx, term, type, buffer, ts, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            gkey,
                            keep + i,
                            e.term,
                            int(e.type),
                            e.buffer,
                            e.timestamp,
                            _entry_crc(seed, keep + i, e.term, int(e.type), e.timestamp, e.buffer),
                        )
                        for i, e in enumerate(new)
                    ],
                )

        def on_commit() -> None:
            del d.entries[keep - d.start :]
            d.entries.extend(new)

        size = sum(len(e.buffer) + 48 for e in new)
        what = f"writing {len(new)} entries at {keep}" if new else f"truncating at {keep}"
        await store._mutate(d, what, statements, on_commit, size)

    async def compact(self, up_to_index: int, term: int) -> None:
        d, store = self._data, self._store
        await store._settle(d, "a compaction")
        if up_to_index < d.start:
            await trio.lowlevel.checkpoint()
            return
        if up_to_index < d.next_slot:
            held = d.entries[up_to_index - d.start].term
            if held != term:
                raise ValueError(f"compact({up_to_index}, {term}): entry has term {held}")
        gkey, start = d.gkey, up_to_index + 1
        crc = _boundary_crc(d.seed, start, term)

        def statements(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM log WHERE gkey=? AND idx<?", (gkey, start))
            conn.execute(
                "INSERT OR REPLACE INTO log_boundary(gkey, start_index, boundary_term, crc) "
                "VALUES (?, ?, ?, ?)",
                (gkey, start, term, crc),
            )

        def on_commit() -> None:
            if start < d.next_slot:
                del d.entries[: start - d.start]
            else:
                d.entries.clear()
            d.start = start
            d.boundary_term = term

        await store._mutate(d, f"compacting up to {up_to_index}", statements, on_commit, 32)


class SqliteStateMachine(StateMachine):
    """A snapshotting state machine whose snapshots are durable in a :class:`SqliteStore`.

    :class:`SqliteStateManager` wraps the group's state machine in one of these when that
    state machine supports snapshots (see "Snapshots" in the module docstring).  Applying
    entries and reading snapshots are delegated unchanged.  ``create_snapshot`` and
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

    def __init__(self, store: SqliteStore, data: _GroupData, delegate: StateMachine) -> None:
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
        data: _GroupData,
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
        row = (d.gkey, blob, _config_crc(d.seed, blob))

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
            _state_crc(d.seed, state.term, state.vote, state.commit),
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
