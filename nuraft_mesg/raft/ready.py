"""What the core hands to its runtime: one :class:`Ready` batch per turn.

The runtime's loop is always the same (and the core enforces the order)::

    node.step(msg)  /  node.election_timeout()  /  node.heartbeat_timeout()  /  node.propose(...)
    ready = node.ready()
    send(ready.messages)                       # may leave at once
    persist(ready.truncate_from, ready.entries, ready.hard_state)   # durably
    send(ready.messages_after_persist)         # only now: they promise what was persisted
    apply(ready.committed)                     # entries already durable here and committed
    node.advance(ready)                        # "persisted up to ready.last_index"

Splitting the messages is how persistence ordering is made structural rather than advice
(Raft thesis §3.8; etcd-io/raft's ``msgsAfterAppend``): a vote, or an append acknowledgement,
promises that the state it depends on survives a crash, so it must not leave before the fsync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, Message

__all__ = [
    "BecomeFollower",
    "BecomeLeader",
    "Event",
    "JoinedCluster",
    "NewConfig",
    "Ready",
    "RemovedFromCluster",
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


@dataclass(slots=True, frozen=True)
class CommittedEntry:
    """An entry that is committed and durable on this node, ready to apply."""

    index: int
    entry: LogEntry


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

    @property
    def last_index(self) -> int:
        """Index of the last entry to persist (``first_index - 1`` when there is none)."""
        return self.first_index + len(self.entries) - 1

    @property
    def must_persist(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.truncate_from > 0

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
        )
