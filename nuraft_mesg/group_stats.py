"""The read-only rows and counters a group reports: :class:`PeerInfo` (``raft_status``),
:class:`ReplicaConfig` (``cluster_config``) and :class:`GroupStatistics`.

Separate from :mod:`nuraft_mesg.group` because they are public values with no runtime:
metrics, status and the application read them without the group's loop.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GroupStatistics", "PeerInfo", "ReplicaConfig"]


@dataclass(slots=True, frozen=True)
class PeerInfo:
    """One row of ``raft_status()`` (nuraft_mesg's ``peer_info``)."""

    id: str
    last_log_idx: int
    last_succ_resp_us: int
    priority: int
    is_learner: bool
    is_new_joiner: bool


@dataclass(slots=True, frozen=True)
class ReplicaConfig:
    """One row of ``cluster_config()`` (nuraft_mesg's ``replica_config``)."""

    peer_id: str
    aux: str


@dataclass(slots=True, frozen=True)
class GroupStatistics:
    """Counters of one group (nuraft_mesg's ``RAFTGroup`` metrics plus Raft state)."""

    group_id: str
    term: int
    commit_index: int
    last_log_index: int
    applied_index: int
    leader_id: str
    is_leader: bool
    leader_changes: int
    """Times this node saw a new leader (itself included); a step-down alone is not one."""
    messages_received: int
    """Raft requests handled (nuraft_mesg's group_steps); replies are not counted."""
    messages_sent: int
    """Raft requests handed to the peer queues (nuraft_mesg's group_sends)."""
    messages_dropped: int
    append_latency_us_total: int
    """Sum of AppendEntries handling times (nuraft_mesg's append_entries_latency_us)."""
    append_requests: int
    quiet: bool = False
    """The group is quiet here: idle, with no heartbeat (leader) or election (follower)
    timer running (see ``RaftParams.quiesce_after_ms``)."""
    reads_linearizable: int = 0
    """Reads answered here in each mode (docs/reads.md), and reads that failed."""
    reads_lease: int = 0
    reads_stale: int = 0
    reads_failed: int = 0
