"""What the store keeps in memory: each group's cached records (:class:`GroupData`), the
mutations waiting for the committer (:class:`QueuedOp`), and the read-only rows it reports.

Separate because every other part of the store shares these values: opening fills them,
the commit queue moves them after each commit, and the per-group objects read them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from nuraft_mesg.errors import StorageError
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, SnapshotMeta
from nuraft_mesg.storage.interfaces import LogStore
from nuraft_mesg.storage.sqlite.schema import crc_seed

__all__ = ["GroupData", "GroupRecord", "QueuedOp", "StoreStatistics"]


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
class QueuedOp:
    """One queued mutation of one group."""

    group: GroupData | None
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


class GroupData:
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
        self.seed = crc_seed(group_id)
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
        self.last_op: QueuedOp | None = None
        self.log_store: LogStore | None = None
        """Its SqliteLogStore, made on first use."""

    @property
    def next_slot(self) -> int:
        return self.start + len(self.entries)

    def record(self) -> GroupRecord:
        return GroupRecord(
            self.group_id, self.group_type, self.server_id, self.created, self.corrupt
        )
