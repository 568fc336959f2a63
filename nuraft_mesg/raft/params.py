"""Tuning knobs of one Raft group (NuRaft's ``raft_params``), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RaftParams"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftParams:
    """Per-group-type parameters.

    Times are in milliseconds of the runtime's clock; the core itself never reads a clock, it
    only receives timer expiries and tells the runtime how long to arm each timer for.
    """

    heartbeat_interval_ms: int = 100
    """How often a leader sends heartbeats (NuRaft default 125)."""

    election_timeout_ms: tuple[int, int] = (200, 400)
    """Bounds of the randomized election timeout.  The upper bound should be at least twice
    the lower (HomeStore #351) so that split votes resolve quickly, and the lower bound must
    exceed the heartbeat interval, else followers campaign against a live leader."""

    leadership_expiry_ms: int = 0
    """A leader that hears from no quorum for this long steps down (check-quorum).  0 means
    20 x heartbeat (NuRaft's default); a negative value disables the check."""

    pre_vote: bool = True
    """Run a pre-vote round before bumping the term, so a partitioned node rejoining does not
    depose a healthy leader."""

    max_append_entries: int = 100
    """Most entries in one append_entries request."""

    max_append_bytes: int = 1 << 20
    """Most payload bytes in one append_entries request (at least one entry is always sent)."""

    max_inflight_appends: int = 4
    """Append requests in flight to one follower once it is known to be in sync (pipelining).
    1 gives NuRaft's default one-at-a-time behaviour."""

    auto_forwarding: bool = False
    """On a follower, forward client requests to the leader instead of refusing NOT_LEADER."""

    leadership_transfer_timeout_ms: int = 0
    """How long a yield_leadership may take before the leader resumes; 0 means the upper
    election timeout."""

    join_timeout_ms: int = 0
    """How long a new server may take to answer a join before add_server gives up; 0 means
    10 x the upper election timeout."""

    priority_decay_percent: int = 20
    """Each election timeout that passes without a leader lowers the target priority by this
    share, so that lower-priority members eventually campaign (NuRaft's decay)."""

    snapshot_distance: int = 0
    """Take a snapshot every this many applied entries (0 disables; used by storage)."""

    reserved_log_items: int = 100_000
    """Entries kept in the log behind a snapshot, so slow followers can catch up from it."""

    quiesce_after_ms: int = 0
    """A leader whose group saw no proposal, log growth or configuration change for this
    long (and whose followers all hold and know the whole committed log) sends one last
    heartbeat round marked *quiesce* and then stops heartbeating; followers that accept it
    stop their election timers (Dragonboat's quiesce, TiKV's hibernate).  Any other traffic
    wakes the group.  Only over a transport that can ping (``Transport.supports_ping``): a
    quiet follower learns of a dead leader from node-level liveness (the Manager's pings and
    the transport's ``peer_lost``).  0 means 2 x the lower election timeout (4 heartbeat rounds
    with the defaults: a fresh group's heartbeats until it goes quiet were most of the
    traffic of creating many groups); a negative value disables quiescing.  Timers only:
    Raft's safety does not depend on it."""

    max_pending_proposals: int = 4096
    """Writes (``append_entries`` calls and client requests, each of any number of entries)
    this group's node lets wait for their commit at once; one more is refused with
    :class:`~nuraft_mesg.errors.Busy` instead of queueing behind them (a queue without bound
    only turns a saturated leader's latency into timeouts).  One group on one core saturates at
    a few hundred concurrent writes and commits 4096 queued ones in well under
    ``client_request_timeout`` (docs/benchmarks.md).  Not lower by default: a refused writer
    that retries costs the leader CPU too, so a tight bound with eager clients does worse than
    the queue (benchmark workload 8 measures both).  Enforced by the runtime; the node-wide
    bound is ``ManagerConfig.max_pending_proposals``."""

    lease_reads: bool = False
    """Let a leader answer ``lease`` reads without a heartbeat round while its lease holds
    (see :attr:`lease_duration_s` and docs/reads.md).  Requires check-quorum (a leadership
    expiry >= 0): the lease rests on followers refusing votes while they hear from a live
    leader.  Off by default: it trades the clock assumption for one round trip."""

    lease_clock_drift_ms: int = 0
    """How much the leader's clock may run slow against a follower's over one lower
    election timeout (a bound on clock *rate* drift; clocks must not jump).  The lease is the
    lower election timeout minus this.  0 means a tenth of the lower election timeout."""

    def __post_init__(self) -> None:
        low, high = self.election_timeout_ms
        if self.heartbeat_interval_ms <= 0:
            raise ValueError("heartbeat_interval_ms must be > 0")
        if not 0 < low <= high:
            raise ValueError("election_timeout_ms must be (low, high) with 0 < low <= high")
        if low <= self.heartbeat_interval_ms:
            raise ValueError(
                "election_timeout_ms lower bound must exceed heartbeat_interval_ms, "
                "or followers campaign against a live leader"
            )
        if self.max_append_entries < 1:
            raise ValueError("max_append_entries must be >= 1")
        if self.max_append_bytes < 1:
            raise ValueError("max_append_bytes must be >= 1")
        if self.max_inflight_appends < 1:
            raise ValueError("max_inflight_appends must be >= 1")
        if self.max_pending_proposals < 1:
            raise ValueError("max_pending_proposals must be >= 1")
        if not 0 <= self.priority_decay_percent < 100:
            raise ValueError("priority_decay_percent must be in [0, 100)")
        if self.snapshot_distance < 0 or self.reserved_log_items < 0:
            raise ValueError("snapshot_distance and reserved_log_items must be >= 0")
        if 0 < self.quiesce_after_ms < self.heartbeat_interval_ms:
            raise ValueError(
                "quiesce_after_ms must be 0 (default), negative (never) or at least "
                "heartbeat_interval_ms"
            )
        if self.lease_clock_drift_ms < 0 or self.lease_clock_drift_ms >= low:
            raise ValueError("lease_clock_drift_ms must be in [0, lower election timeout)")
        if self.lease_reads and self.leadership_expiry_ms < 0:
            raise ValueError(
                "lease_reads needs check-quorum (leadership_expiry_ms >= 0): without it, "
                "followers vote for a new leader while the old one still holds its lease"
            )

    # -- derived values, in heartbeat ticks (the core counts heartbeat-timer expiries) ------
    def _ticks(self, ms: int) -> int:
        return max(1, -(-ms // self.heartbeat_interval_ms))

    @property
    def leadership_expiry_ticks(self) -> int:
        """Heartbeat ticks after which a leader without a quorum steps down; 0 = never."""
        if self.leadership_expiry_ms < 0:
            return 0
        if self.leadership_expiry_ms == 0:
            return 20
        return self._ticks(self.leadership_expiry_ms)

    @property
    def quiesce_after_s(self) -> float | None:
        """Seconds of idleness after which a leader quiesces its group; None = never."""
        if self.quiesce_after_ms < 0:
            return None
        ms = self.quiesce_after_ms or 2 * self.election_timeout_ms[0]
        return ms / 1000

    @property
    def lease_duration_s(self) -> float:
        """How long after the *start* of a heartbeat round that a quorum acknowledged a
        leader may still serve lease reads: the lower election timeout minus the drift bound.
        Followers that acknowledged the round refuse to vote for anyone else until their
        election timer (at least the lower timeout after they heard the round) fires."""
        low = self.election_timeout_ms[0]
        drift = self.lease_clock_drift_ms or max(1, low // 10)
        return (low - drift) / 1000

    @property
    def read_timeout_ticks(self) -> int:
        """Heartbeat ticks after which a leader gives up on a read whose round no quorum
        acknowledged (twice the upper election timeout): bounds what a partitioned leader
        without check-quorum holds."""
        return self._ticks(2 * self.election_timeout_ms[1])

    @property
    def transfer_timeout_ticks(self) -> int:
        ms = self.leadership_transfer_timeout_ms or self.election_timeout_ms[1]
        return self._ticks(ms)

    @property
    def join_timeout_ticks(self) -> int:
        ms = self.join_timeout_ms or 10 * self.election_timeout_ms[1]
        return self._ticks(ms)
