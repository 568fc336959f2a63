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

from nuraft_mesg.storage.sqlite.log_store import SqliteLogStore
from nuraft_mesg.storage.sqlite.records import GroupRecord, StoreStatistics
from nuraft_mesg.storage.sqlite.schema import DB_NAME
from nuraft_mesg.storage.sqlite.schema import SCHEMA_VERSION as SCHEMA_VERSION
from nuraft_mesg.storage.sqlite.state_machine import SqliteStateMachine
from nuraft_mesg.storage.sqlite.store import SqliteStateManager, SqliteStore

__all__ = [
    "DB_NAME",
    "GroupRecord",
    "SqliteLogStore",
    "SqliteStateMachine",
    "SqliteStateManager",
    "SqliteStore",
    "StoreStatistics",
]
