"""What the core hands to its runtime: one :class:`Ready` batch per turn.

The runtime's loop is always the same (and the core enforces the order)::

    node.step(msg)  /  node.election_timeout()  /  node.heartbeat_timeout()  /  node.propose(...)
    ready = node.ready()
    send(ready.messages)                       # may leave at once
    chunks = read(ready.snapshot_reads)        # leader: snapshot objects, from the state machine
    stage(ready.snapshot_chunks)               # follower: received snapshot objects
    install(ready.snapshot_to_install)         # follower: state machine, then log store reset
    compact(ready.compact_to, ready.compact_term)
    persist(ready.truncate_from, ready.entries, ready.hard_state)   # durably
    send(ready.messages_after_persist)         # only now: they promise what was persisted
    apply(ready.committed)                     # entries already durable here and committed
    serve(ready.read_states)                   # each once applied >= its index
    fail(ready.read_failures)
    node.advance(ready)                        # "persisted up to ready.last_index"
    node.send_snapshot_chunk(...) for each chunk read above

Splitting the messages is how persistence ordering is made structural rather than advice
(Raft thesis §3.8; etcd-io/raft's ``msgsAfterAppend``): a vote, or an append acknowledgement,
promises that the state it depends on survives a crash, so it must not leave before the fsync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from nuraft_mesg.errors import RaftError
from nuraft_mesg.raft.snapshot import SnapshotChunk, SnapshotRead
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, Message, SnapshotMeta

__all__ = [
    "BecomeFollower",
    "BecomeLeader",
    "Event",
    "JoinedCluster",
    "NewConfig",
    "ReadFailure",
    "ReadState",
    "Ready",
    "RemovedFromCluster",
    "SnapshotChunk",
    "SnapshotRead",
    "TimerCommand",
    "CommittedEntry",
]


@dataclass(slots=True, frozen=True)
class BecomeLeader:
    """This node won the election for ``term`` (NuRaft's ``BecomeLeader`` callback)."""

    term: int


@dataclass(slots=True, frozen=True)
class BecomeFollower:
    """This node follows ``leader_id`` in ``term`` (-1 if the leader is not known yet)."""

    term: int
    leader_id: int


@dataclass(slots=True, frozen=True)
class NewConfig:
    """The configuration in effect changed (effective on append, before it commits)."""

    config: ClusterConfig
    committed: bool


@dataclass(slots=True, frozen=True)
class JoinedCluster:
    """A leader invited this node into its group and this node accepted."""

    leader_id: int
    term: int


@dataclass(slots=True, frozen=True)
class RemovedFromCluster:
    """A committed configuration no longer lists this node."""

    term: int


Event = BecomeLeader | BecomeFollower | NewConfig | JoinedCluster | RemovedFromCluster


@dataclass(slots=True, frozen=True)
class TimerCommand:
    """Arm (``timeout_ms`` > 0) or stop (``timeout_ms`` == 0) a timer.

    For the election timer ``timeout_ms`` is already randomized within the configured bounds;
    for the heartbeat timer it is the interval at which to fire repeatedly.
    """

    timeout_ms: int

    @property
    def stop(self) -> bool:
        return self.timeout_ms == 0


class CommittedEntry(NamedTuple):
    """An entry that is committed and durable on this node, ready to apply.  A named tuple,
    not a frozen dataclass: one is built per applied entry on every node, and a tuple is
    built in a fraction of the time (the same fields, and as immutable)."""

    index: int  # type: ignore[assignment]  # (shadows tuple.index, unused here)
    entry: LogEntry


@dataclass(slots=True, frozen=True)
class ReadState:
    """The read ``ctx`` (given to ``RaftNode.read_index``) may be served once this node's
    state machine has applied ``index``: every write that completed before the read began is
    at or below it.  The core does not know what is applied; the runtime waits for it."""

    ctx: int
    index: int


@dataclass(slots=True, frozen=True)
class ReadFailure:
    """The read ``ctx`` cannot complete here (leadership lost, no leader known, removed,
    no quorum answered in time): fail it with ``error`` rather than let it time out."""

    ctx: int
    error: RaftError


@dataclass(slots=True)
class Ready:
    """One batch of work for the runtime.  See the module docstring for the order."""

    messages: list[Message] = field(default_factory=list)
    """Messages that do not depend on anything unpersisted (leader appends, heartbeats,
    pre-vote requests)."""

    truncate_from: int = 0
    """If > 0: delete every stored entry at index >= ``truncate_from`` before appending."""

    entries: list[LogEntry] = field(default_factory=list)
    """Entries to append durably; the first has index ``first_index``."""

    first_index: int = 0

    hard_state: HardState | None = None
    """Term / vote / commit to save durably, if they changed."""

    config_to_save: ClusterConfig | None = None
    """A newly committed configuration for the state manager's ``save_config``."""

    messages_after_persist: list[Message] = field(default_factory=list)
    """Votes, acknowledgements and everything else that promises persisted state."""

    committed: list[CommittedEntry] = field(default_factory=list)
    """Committed entries, durable here, in index order, to apply to the state machine."""

    election_timer: TimerCommand | None = None
    heartbeat_timer: TimerCommand | None = None
    events: list[Event] = field(default_factory=list)

    snapshot_reads: list[SnapshotRead] = field(default_factory=list)
    """Leader: snapshot objects to read from the state machine (``read_snapshot_chunk``) and
    hand back with ``RaftNode.send_snapshot_chunk`` (after :meth:`~RaftNode.advance`)."""

    snapshot_chunks: list[SnapshotChunk] = field(default_factory=list)
    """Follower: received snapshot objects to stage (``save_snapshot_chunk``), in order,
    before ``snapshot_to_install`` and before ``messages_after_persist``."""

    snapshot_to_install: SnapshotMeta | None = None
    """Follower: the staged snapshot is complete.  Before anything else is persisted: apply
    it to the state machine, then make the log store start after it (drop a stored entry at
    ``last_index`` whose term is not ``last_term``, then ``compact(last_index, last_term)``);
    its config comes in ``config_to_save``, the commit in ``hard_state``.  Entries in
    ``committed`` follow it."""

    compact_to: int = 0
    """If > 0: a snapshot covers the log up to here; ``LogStore.compact(compact_to,
    compact_term)`` (entries up to it are durable already)."""

    compact_term: int = 0

    read_states: list[ReadState] = field(default_factory=list)
    """Reads whose index is known (``RaftNode.read_index``): serve each once applied >= its
    index (after ``committed`` is applied, or later)."""

    read_failures: list[ReadFailure] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        """Index of the last entry to persist (``first_index - 1`` when there is none)."""
        return self.first_index + len(self.entries) - 1

    @property
    def must_persist(self) -> bool:
        return (
            bool(self.entries)
            or self.hard_state is not None
            or self.truncate_from > 0
            or bool(self.snapshot_chunks)
            or self.snapshot_to_install is not None
            or self.compact_to > 0
        )

    def is_empty(self) -> bool:
        return not (
            self.messages
            or self.must_persist
            or self.config_to_save is not None
            or self.messages_after_persist
            or self.committed
            or self.election_timer is not None
            or self.heartbeat_timer is not None
            or self.events
            or self.snapshot_reads
            or self.snapshot_chunks
            or self.snapshot_to_install is not None
            or self.compact_to > 0
            or self.read_states
            or self.read_failures
        )
