"""RaftNode: one replica of one group, as a deterministic sans-IO state machine.

Theory of operation
-------------------
A :class:`RaftNode` never reads a clock, opens a socket, touches a disk or draws a random
number it was not handed.  Its inputs are method calls:

* :meth:`step` -- a message received from a peer (or an external client);
* :meth:`election_timeout` / :meth:`heartbeat_timeout` -- the runtime's timers fired;
* :meth:`propose`, :meth:`add_server`, :meth:`remove_server`, :meth:`update_server`,
  :meth:`yield_leadership`, :meth:`request_leadership`, :meth:`read_index` -- local requests;
* :meth:`advance` -- "the Ready you gave me is durable";
* :meth:`snapshot_taken`, :meth:`send_snapshot_chunk` -- the runtime created a snapshot, or
  read a snapshot object a Ready asked for.

Its output is a :class:`~nuraft_mesg.raft.ready.Ready` (see that module for the runtime's
loop).  Every decision that could be unsafe if a crash followed is ordered by the Ready:
votes and acknowledgements sit in ``messages_after_persist``; a candidate counts its own vote,
and a leader counts its own copy of an entry, only once :meth:`advance` says they are durable;
entries are applied only once committed *and* durable here.

Roles are data, not classes: one module keeps every transition rule together (as h11's
``_state.py`` does), split into per-role handlers below.

Features: pre-vote; check-quorum with leadership expiry and follower leases; priority
elections with NuRaft's target-priority decay; batched, pipelined replication with
fast backtracking; commit only by counting replicas of current-term entries (Raft §5.4.2);
single-server membership changes effective on append, with a catch-up phase for new
servers (NuRaft's join), learners and promotion; removal of the leader; leadership transfer
(yield and request); client-request handling for forwarded and external requests; snapshots
(log compaction behind them, and install_snapshot of NuRaft's logical snapshot objects to
followers behind the log start); linearizable reads (read index with batched heartbeat
rounds, follower reads forwarded to the leader, and optional leader leases: see
:mod:`nuraft_mesg.raft.reads` and docs/reads.md).

Time: the core never reads a clock.  The runtime may pass its monotonic time (seconds) to
:meth:`heartbeat_timeout` and :meth:`read_index`; only lease reads use it, and they assume
the clocks of the members advance at rates within ``RaftParams.lease_clock_drift_ms`` per
lower election timeout of each other and never jump.
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nuraft_mesg.errors import (
    BadRequest,
    Cancelled,
    ConfigChanging,
    NotLeader,
    RaftError,
    RaftTimeout,
    ResultCode,
    ServerAlreadyExists,
    ServerIsJoining,
    ServerNotFound,
)
from nuraft_mesg.raft.log import RaftLog
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.reads import FollowerReads, LeaderReads
from nuraft_mesg.raft.ready import (
    BecomeFollower,
    BecomeLeader,
    CommittedEntry,
    Event,
    JoinedCluster,
    NewConfig,
    ReadFailure,
    ReadState,
    Ready,
    RemovedFromCluster,
    TimerCommand,
)
from nuraft_mesg.raft.snapshot import (
    SnapshotChunk,
    SnapshotRead,
    decode_snapshot_reply,
    encode_snapshot_reply,
)
from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    LogType,
    Message,
    MsgType,
    NotificationType,
    ServerConfig,
    SnapshotMeta,
)

__all__ = ["Progress", "Proposal", "RaftNode", "ReplState", "Role"]

log = logging.getLogger(__name__)

#: Marker carried by a vote request sent on a leadership transfer: voters skip their lease.
FORCE_VOTE = b"force_vote"

NO_LEADER = -1
NO_VOTE = -1

#: How far ahead of ours a received message's term may be.  A node that adopted a term near
#: the end of the wire's range (2**63 - 1) could never hold another election (its vote
#: requests would not encode), so one forged message could silence a group for good.  No
#: replica falls 2**32 elections behind its group, so a bigger jump is hostile or corrupt and
#: the message is refused; reaching the end of the range takes 2**31 forged messages.
MAX_TERM_JUMP = 1 << 32


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ReplState(enum.Enum):
    PROBE = "probe"
    """Unknown match: one append at a time, backtracking on rejection."""
    REPLICATE = "replicate"
    """Known match: up to ``max_inflight_appends`` appends pipelined."""
    SNAPSHOT = "snapshot"
    """Behind the log start: receiving the leader's latest snapshot, one object at a time."""


@dataclass(slots=True)
class Progress:
    """What a leader knows about one follower (etcd's ``tracker.Progress``).

    Invariant: ``match < next``.  ``inflight`` holds the last index of each append sent in
    REPLICATE state and not yet acknowledged.
    """

    match: int = 0
    next: int = 1
    state: ReplState = ReplState.PROBE
    inflight: deque[int] = field(default_factory=deque)
    probe_sent: bool = False
    acked_since_tick: bool = False
    recent_active: bool = False
    silent_ticks: int = 0  # heartbeat ticks since the follower last answered
    joining: bool = False
    join_accepted: bool = False  # a joiner accepted our invitation: replicate to it
    # SNAPSHOT state: the snapshot in transfer, the object last requested from the runtime
    # (being read, or in flight), whether that read is outstanding, the highest object sent
    # and the last object's id once known (-1: not yet).
    snapshot: SnapshotMeta | None = None
    snapshot_obj: int = 0
    snapshot_reading: bool = False
    snapshot_sent_max: int = -1
    snapshot_last_obj: int = -1

    def become_probe(self) -> None:
        self.state = ReplState.PROBE
        self.next = self.match + 1
        self.inflight.clear()
        self.probe_sent = False
        self.snapshot = None
        self.snapshot_reading = False


@dataclass(slots=True, frozen=True)
class Proposal:
    """Where a proposal landed: it succeeds iff the entry applied at each index in
    ``[first_index, last_index]`` carries ``term``."""

    term: int
    first_index: int
    last_index: int


class RaftNode:
    """One replica of one Raft group.  Not thread-safe; not async; deterministic."""

    def __init__(
        self,
        node_id: int,
        params: RaftParams,
        *,
        config: ClusterConfig,
        hard_state: HardState | None = None,
        entries: Sequence[LogEntry] = (),
        log_start_index: int = 1,
        log_boundary_term: int = 0,
        applied_index: int = 0,
        snapshot: SnapshotMeta | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Build a replica from what its runtime loaded from durable storage.

        Args:
            config: the last *committed* configuration the state manager saved (or the
                initial one); newer CONFIG entries found in ``entries`` override it.
            entries: the durable log, starting at ``log_start_index``.
            applied_index: the state machine's ``last_commit_index()``; entries up to it are
                not handed out for applying again.
            snapshot: the state machine's latest snapshot (``last_snapshot()``), if any: what
                followers behind the log start are sent.  If the log does not hold its last
                entry (a crash while installing it), the log restarts after it.
            rng: the only source of randomness (election timeouts).  Pass a seeded one for
                reproducible runs.
        """
        self.id = node_id
        self.params = params
        self._rng = rng if rng is not None else random.Random()
        hs = hard_state or HardState()
        self.log = RaftLog(entries, start_index=log_start_index, boundary_term=log_boundary_term)
        self._snapshot = snapshot
        self._compact_to: tuple[int, int] | None = None
        if (snapshot is not None and snapshot.last_index > self.log.boundary_index
                and self.log.term_at(snapshot.last_index) != snapshot.last_term):
            # A crash while installing a snapshot: the state machine holds it, the log store
            # does not reflect it yet.  The log restarts after it; the store follows (Ready).
            self.log.restore(snapshot.last_index, snapshot.last_term)
            self._compact_to = (snapshot.last_index, snapshot.last_term)
        if snapshot is not None and snapshot.config.log_idx > config.log_idx:
            config = snapshot.config
        self.term = hs.term
        self.vote = hs.vote
        # What the state machine applied was committed, even if the saved commit lags.
        self.applied = min(max(applied_index, self.log.boundary_index), self.log.last_index)
        self.commit = max(min(hs.commit, self.log.last_index), self.applied)
        self.role = Role.FOLLOWER
        self.leader_id = NO_LEADER
        # Configurations: the committed base plus every CONFIG entry in the log after it.
        self._configs: list[ClusterConfig] = [config]
        loaded = self.log.slice(self.log.start_index, self.log.last_index + 1)
        for offset, entry in enumerate(loaded):
            index = self.log.start_index + offset
            if entry.type == LogType.CONFIG and index > config.log_idx:
                self._configs.append(ClusterConfig.decode(entry.buffer).at_index(index))
        self._committed_config = config
        self._advance_committed_config(emit=False)
        self.removed = False
        # The inviting leader's last index when we last accepted a join: configurations up
        # to there predate our (re-)addition, so replaying one that leaves us out is history.
        self._invited_after = 0
        # Election state.
        self._votes: dict[int, bool] = {}
        self._self_vote_durable = False
        self._leader_contact = False  # heard from a live leader since our timer last fired
        # Lease reads: until our first election timeout, refuse to help elect anyone -- we
        # may have acknowledged a leader's round just before a restart, and its lease counts
        # on our refusal (docs/reads.md).
        self._boot_lease = params.lease_reads
        self._target_priority = self.config.max_priority
        # Leader state.
        self.progress: dict[int, Progress] = {}
        self._transfer_target: int | None = None
        self._transfer_ticks = 0
        self._joiner: ServerConfig | None = None
        self._join_ticks = 0
        self._pending_broadcast = False
        # Output buffers, drained by ready().
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._events: list[Event] = []
        self._election_timer: TimerCommand | None = None
        self._heartbeat_timer: TimerCommand | None = None
        self._config_to_save: ClusterConfig | None = None
        self._snapshot_reads: list[SnapshotRead] = []
        self._snapshot_chunks: list[SnapshotChunk] = []
        self._snapshot_to_install: SnapshotMeta | None = None
        # Follower: the snapshot being received and the next object it needs.
        self._recv_snapshot: SnapshotMeta | None = None
        self._recv_next = 0
        self._emitted_hs = hs
        self._durable_hs = hs
        self._outstanding: Ready | None = None
        # Reads (see nuraft_mesg.raft.reads): the leader's rounds, a follower's forwards.
        self._lreads = LeaderReads()
        self._freads = FollowerReads()
        self._read_states: list[ReadState] = []
        self._read_failures: list[ReadFailure] = []
        self._now = 0.0  # the latest runtime time passed in (lease reads only)
        self._ticks = 0  # heartbeat ticks while leading (read timeouts)
        self._reset_election_timer()

    # ==========================================================================================
    # Queries
    # ==========================================================================================
    @property
    def config(self) -> ClusterConfig:
        """The configuration in effect: the latest one in the log, committed or not."""
        return self._configs[-1]

    @property
    def committed_config(self) -> ClusterConfig:
        return self._committed_config

    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    @property
    def config_changing(self) -> bool:
        """An uncommitted configuration entry exists (only one change at a time)."""
        return self.config.log_idx > self.commit

    @property
    def transferring_leadership(self) -> bool:
        return self._transfer_target is not None

    @property
    def joining_server(self) -> ServerConfig | None:
        return self._joiner

    @property
    def snapshot(self) -> SnapshotMeta | None:
        """The latest snapshot this node's state machine holds (taken or installed)."""
        return self._snapshot

    def config_at(self, index: int) -> ClusterConfig:
        """The configuration in effect at ``index`` (at or after the log boundary)."""
        for cfg in reversed(self._configs):
            if cfg.log_idx <= index:
                return cfg
        # The committed base is newer than ``index``: look for the CONFIG entry before it.
        lo = self.log.start_index
        for idx in range(min(index, self.log.last_index), lo - 1, -1):
            entry = self.log.entry(idx)
            if entry.type == LogType.CONFIG:
                return ClusterConfig.decode(entry.buffer).at_index(idx)
        snap = self._snapshot
        if snap is not None and lo - 1 <= snap.last_index <= index:
            return snap.config
        return self._configs[0]

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state as of the applied entry ``index`` is described by
        (the runtime passes it to ``create_snapshot``, then to :meth:`snapshot_taken`)."""
        term = self.log.term_at(index)
        if term is None or not 0 < index <= self.applied:
            raise ValueError(f"cannot snapshot at {index} (applied {self.applied}, log "
                             f"[{self.log.start_index}, {self.log.last_index}])")
        return SnapshotMeta(index, term, self.config_at(index))

    def _is_voter(self, node_id: int | None = None) -> bool:
        srv = self.config.get(self.id if node_id is None else node_id)
        return srv is not None and not srv.learner

    def _campaign_entry(self) -> ServerConfig | None:
        """This node's entry in the newest configuration that names it a voter, among the
        latest one and those its uncommitted changes replaced (``_configs`` holds only the
        committed base and what follows it).  Dissertation §4.2.2 (Figure 4.6): a server left
        out of its latest configuration "should still start new elections, as it might still
        be needed until the Cnew entry is committed"; its own vote still counts only where it
        is a voter (``_tally_votes`` counts the latest configuration's voters)."""
        for cfg in reversed(self._configs):
            srv = cfg.get(self.id)
            if srv is not None and not srv.learner:
                return srv
        return None

    # ==========================================================================================
    # The Ready cycle
    # ==========================================================================================
    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        return bool(
            self._msgs
            or self._msgs_after
            or self._events
            or self._election_timer is not None
            or self._heartbeat_timer is not None
            or self._config_to_save is not None
            or self._pending_broadcast
            or self._snapshot_reads
            or self._snapshot_chunks
            or self._snapshot_to_install is not None
            or self._compact_to is not None
            or self._read_states
            or self._read_failures
            or self._reads_to_send()
            or self.log.unstable_from <= self.log.last_index
            or self.log.truncated_from
            or self.hard_state != self._emitted_hs
            or self._next_apply_limit() > self.applied
        )

    def ready(self) -> Ready:
        """Collect everything the runtime must do now.  Call :meth:`advance` before the next
        ``ready()``; the Ready's contents are handed over exactly once."""
        if self._outstanding is not None:
            raise RuntimeError("ready() called again before advance() of the previous Ready")
        self._send_pending()
        rd = Ready()
        rd.truncate_from, rd.first_index, rd.entries = self.log.take_unstable()
        hs = self.hard_state
        if hs != self._emitted_hs:
            rd.hard_state = hs
            self._emitted_hs = hs
        limit = self._next_apply_limit()
        if limit > self.applied:
            rd.committed = [
                CommittedEntry(self.applied + 1 + i, e)
                for i, e in enumerate(self.log.slice(self.applied + 1, limit + 1))
            ]
            self.applied = limit
        rd.messages, self._msgs = self._msgs, []
        rd.messages_after_persist, self._msgs_after = self._msgs_after, []
        rd.events, self._events = self._events, []
        rd.election_timer, self._election_timer = self._election_timer, None
        rd.heartbeat_timer, self._heartbeat_timer = self._heartbeat_timer, None
        rd.config_to_save, self._config_to_save = self._config_to_save, None
        rd.snapshot_reads, self._snapshot_reads = self._snapshot_reads, []
        rd.snapshot_chunks, self._snapshot_chunks = self._snapshot_chunks, []
        rd.snapshot_to_install, self._snapshot_to_install = self._snapshot_to_install, None
        if self._compact_to is not None:
            (rd.compact_to, rd.compact_term), self._compact_to = self._compact_to, None
        rd.read_states, self._read_states = self._read_states, []
        rd.read_failures, self._read_failures = self._read_failures, []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime persisted ``rd`` (entries, hard state) and sent its messages."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() must acknowledge the Ready last returned by ready()")
        self._outstanding = None
        if rd.hard_state is not None:
            self._durable_hs = rd.hard_state
        if rd.entries:
            self.log.mark_persisted(rd.last_index, rd.entries[-1].term)
        self._on_durable()

    def _on_durable(self) -> None:
        if self.role == Role.CANDIDATE and not self._self_vote_durable:
            d = self._durable_hs
            if d.term == self.term and d.vote == self.id:
                self._self_vote_durable = True
                self._votes[self.id] = True
                self._tally_votes()
        elif self.role == Role.LEADER:
            self._maybe_commit()

    def _next_apply_limit(self) -> int:
        """Entries are applied only once committed and durable on this node."""
        return min(self.commit, self.log.persisted)

    # ==========================================================================================
    # Timers
    # ==========================================================================================
    def _random_election_ms(self) -> int:
        low, high = self.params.election_timeout_ms
        return self._rng.randint(low, high)

    def _reset_election_timer(self) -> None:
        self._election_timer = TimerCommand(self._random_election_ms())

    def _stop_election_timer(self) -> None:
        self._election_timer = TimerCommand(0)

    def election_timeout(self) -> None:
        """The election timer fired: this node has not heard from a leader for a while."""
        self._leader_contact = False
        self._boot_lease = False
        if self.role == Role.LEADER:
            return
        me = self._campaign_entry()
        if self.removed or me is None:
            # Learners, new joiners and removed nodes never campaign.
            self._reset_election_timer()
            return
        if me.priority <= 0:
            self._reset_election_timer()
            return
        if me.priority < self._target_priority:
            # NuRaft's priority decay (decay_target_priority): give higher-priority members
            # the first chance, lowering the bar by max(10, 20%) per timeout without leader.
            gap = max(10, self._target_priority * self.params.priority_decay_percent // 100)
            self._target_priority = max(1, self._target_priority - gap)
            self._reset_election_timer()
            return
        if self.params.pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate(force=False)

    def heartbeat_timeout(self, now: float | None = None) -> None:
        """The heartbeat timer fired (only meaningful on a leader).  ``now``: the runtime's
        monotonic time in seconds, if it uses lease reads (each tick's heartbeats are a read
        round, whose start renews the lease once a quorum answers)."""
        if now is not None:
            self._now = max(self._now, now)
        if self.role != Role.LEADER:
            return
        # Check-quorum / leadership expiry.
        expiry = self.params.leadership_expiry_ticks
        if expiry:
            # Counted per follower from its last answer (NuRaft), not in fixed windows, which
            # could keep a deposed leader around for almost twice the expiry.
            for pr in self.progress.values():
                pr.silent_ticks = 0 if pr.recent_active else pr.silent_ticks + 1
                pr.recent_active = False
            active = {p for p, pr in self.progress.items() if pr.silent_ticks < expiry}
            if self._is_voter():
                active.add(self.id)
            if len(active & self.config.voters) < self.config.quorum:
                log.info("node %d: no quorum heard within expiry, stepping down", self.id)
                self._become_follower(self.term, NO_LEADER)
                return
        if self._transfer_target is not None:
            self._transfer_ticks += 1
            if self._transfer_ticks > self.params.transfer_timeout_ticks:
                log.info("node %d: leadership transfer to %d timed out", self.id,
                         self._transfer_target)
                self._transfer_target = None
        if self._joiner is not None:
            self._join_ticks += 1
            if self._join_ticks > self.params.join_timeout_ticks:
                log.info("node %d: server %d did not catch up in time", self.id, self._joiner.id)
                self._abort_join()
        self._ticks += 1
        for rnd in self._lreads.pop_expired(self._ticks, self.params.read_timeout_ticks):
            self._fail_leader_reads(rnd.local, rnd.forwarded,
                                    RaftTimeout("no quorum confirmed the read's heartbeat round"))
        self._start_read_round(take_reads=self._own_term_committed())
        self._broadcast_append(heartbeat=True)

    # ==========================================================================================
    # Local requests
    # ==========================================================================================
    def propose(self, data: Iterable[bytes], *, timestamp: int = 0) -> Proposal:
        """Append APP entries on the leader.

        Raises:
            NotLeader: this node is not the leader, or is handing leadership over (then the
                leader id is -1: retry once the new leader is known).
        """
        return self._append_local(
            [LogEntry(self.term, LogType.APP, bytes(d), timestamp) for d in data]
        )

    def propose_entries(self, entries: Sequence[LogEntry]) -> Proposal:
        """Append pre-built entries (their terms are replaced by the leader's term)."""
        return self._append_local(
            [LogEntry(self.term, e.type, e.buffer, e.timestamp) for e in entries]
        )

    def _append_local(self, entries: list[LogEntry]) -> Proposal:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer_target is not None:
            raise NotLeader(NO_LEADER, "leadership transfer in progress")
        if not entries:
            raise BadRequest("empty proposal")
        for e in entries:
            if e.type == LogType.CONFIG:
                raise BadRequest("configuration entries are proposed with add/remove_server")
        first = self.log.last_index + 1
        self.log.append(entries)
        self._pending_broadcast = True
        return Proposal(self.term, first, self.log.last_index)

    def _check_can_change_config(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer_target is not None:
            raise NotLeader(NO_LEADER, "leadership transfer in progress")
        if self._joiner is not None:
            raise ServerIsJoining(f"server {self._joiner.id} is still joining")
        if self.config_changing:
            raise ConfigChanging("a configuration change is not committed yet")

    def add_server(self, srv: ServerConfig) -> None:
        """Start adding ``srv``: invite it (join_cluster), let it catch up, then append the
        new configuration.  One change at a time.

        Raises:
            NotLeader, ServerAlreadyExists, ServerIsJoining, ConfigChanging, BadRequest.
        """
        self._check_can_change_config()
        if srv.id in self.config:
            raise ServerAlreadyExists(f"server {srv.id} is already a member")
        if srv.id == self.id:
            raise BadRequest("a leader cannot add itself")
        self._joiner = srv
        self._join_ticks = 0
        self.progress[srv.id] = Progress(next=self.log.last_index + 1, joining=True)
        self._send(
            Message(
                MsgType.JOIN_CLUSTER_REQUEST,
                self.term,
                self.id,
                srv.id,
                last_log_term=self.log.last_term,
                last_log_index=self.log.last_index,
                commit_index=self.commit,
                entries=(LogEntry(self.term, LogType.CONFIG, self.config.encode()),),
            )
        )

    def remove_server(self, server_id: int) -> None:
        """Append a configuration without ``server_id`` (the leader may remove itself: it
        keeps leading until that entry commits, then steps down).

        Raises:
            NotLeader, ServerNotFound, ServerIsJoining, ConfigChanging, BadRequest.
        """
        self._check_can_change_config()
        if server_id not in self.config:
            raise ServerNotFound(f"server {server_id} is not a member")
        remaining = [s for s in self.config.servers if s.id != server_id]
        if not any(not s.learner for s in remaining):
            raise BadRequest("cannot remove the last voting member")
        self._append_config(self.config.with_servers(remaining))

    def update_server(self, srv: ServerConfig) -> None:
        """Change a member's priority or learner flag (promote a learner with
        ``learner=False``) through a configuration entry."""
        self._check_can_change_config()
        if srv.id not in self.config:
            raise ServerNotFound(f"server {srv.id} is not a member")
        servers = [srv if s.id == srv.id else s for s in self.config.servers]
        if not any(not s.learner for s in servers):
            raise BadRequest("cannot demote the last voting member")
        self._append_config(self.config.with_servers(servers))

    def yield_leadership(self, target: int | None = None) -> int:
        """Hand leadership to ``target`` (or the best voter): it catches up, then campaigns
        at once.  Proposals are refused until the transfer ends.  Returns the target id.

        Raises:
            NotLeader: not the leader.  Cancelled: no eligible target.
        """
        if self.role != Role.LEADER:
            raise NotLeader(self.leader_id)
        if target is None:
            candidates = [
                s for s in self.config.servers
                if s.id != self.id and not s.learner and s.priority > 0 and s.id in self.progress
            ]
            if not candidates:
                raise Cancelled("no member can take over leadership")
            best = max(candidates, key=lambda s: (s.priority, self.progress[s.id].match, -s.id))
            target = best.id
        srv = self.config.get(target)
        if srv is None or srv.learner or srv.priority <= 0 or target == self.id:
            raise Cancelled(f"server {target} cannot take over leadership")
        self._transfer_target = target
        self._transfer_ticks = 0
        self._lreads.lease_spoiled = True  # the target may win at once: no lease this term
        self._maybe_send_takeover()
        if self._transfer_target is not None:
            self._send_append(target)
        return target

    def request_leadership(self) -> None:
        """Ask the current leader to hand leadership to this node.

        Raises:
            Cancelled: no leader is known, or this node may not lead.
        """
        if self.role == Role.LEADER:
            return
        me = self.config.get(self.id)
        if self.leader_id == NO_LEADER or me is None or me.learner or me.priority <= 0:
            raise Cancelled("cannot request leadership now")
        self._send(
            Message(
                MsgType.CUSTOM_NOTIFICATION_REQUEST,
                self.term,
                self.id,
                self.leader_id,
                last_log_term=self.log.last_term,
                last_log_index=self.log.last_index,
                entries=(_notification(self.term, NotificationType.REQUEST_RESIGNATION),),
            )
        )

    # ==========================================================================================
    # Reads (Raft thesis §6.4; nuraft_mesg.raft.reads holds the bookkeeping)
    # ==========================================================================================
    def read_index(self, ctx: int, *, lease: bool = False, now: float | None = None) -> None:
        """Queue a linearizable read named ``ctx`` (any int the runtime chooses, unique among
        its reads in flight).  A later Ready releases ``ReadState(ctx, index)`` -- serve the
        read once this node applied ``index`` -- or ``ReadFailure(ctx, error)``.

        On the leader, the read waits for an entry of the leader's own term to be committed
        (its election no-op), then for a heartbeat round that starts after it and that a
        quorum acknowledges; its index is the commit index at the round's start.  On any
        other member it is forwarded to the leader, which answers with that index.

        ``lease=True`` (needs ``RaftParams.lease_reads``): a leader whose lease holds at
        ``now`` (the runtime's monotonic time, seconds) releases the read at once with its
        commit index; otherwise the read takes the round.  On other members it is forwarded
        like any read.

        Raises:
            NotLeader: no leader is known (leader id -1).
            Cancelled: this node was removed from the group.
            BadRequest: a lease read while lease reads are off, or without ``now``.
        """
        if now is not None:
            self._now = max(self._now, now)
        if lease:
            if not self.params.lease_reads:
                raise BadRequest("lease reads are off (RaftParams.lease_reads)")
            if now is None:
                raise BadRequest("a lease read needs the runtime's time")
        if self.removed:
            raise Cancelled("this node was removed from the group")
        if self.role == Role.LEADER:
            if lease and self.lease_valid(self._now):
                self._read_states.append(ReadState(ctx, self.commit))
                return
            self._lreads.pending_local.append(ctx)
            self._confirm_reads()
            return
        if self.leader_id == NO_LEADER:
            raise NotLeader(NO_LEADER, "no leader known to ask for a read index")
        self._freads.pending.append(ctx)

    def lease_valid(self, now: float) -> bool:
        """This leader may serve a read without a round at ``now``: lease reads are on, an
        entry of its term is committed, it never offered its leadership away in this term,
        and a heartbeat round that started less than ``lease_duration_s`` before ``now`` was
        acknowledged by a quorum.  (Followers that acknowledged it refuse votes until their
        election timers, armed at least the lower election timeout after they heard it,
        fire; the drift bound covers the clocks' rates.)"""
        lr = self._lreads
        return (self.params.lease_reads and self.role == Role.LEADER
                and self._own_term_committed() and not lr.lease_spoiled
                and self._transfer_target is None and lr.lease_start is not None
                and now - lr.lease_start < self.params.lease_duration_s)

    def _own_term_committed(self) -> bool:
        return self.log.term_at(self.commit) == self.term

    def _reads_to_send(self) -> bool:
        """A Ready would start a read round (leader) or forward reads (follower)."""
        if self.role == Role.LEADER:
            lr = self._lreads
            return (self._pending_broadcast or (lr.has_pending and not lr.read_round_in_flight
                    and self._own_term_committed()))
        return bool(self._freads.pending) and self.leader_id not in (NO_LEADER, self.id)

    def _send_pending(self) -> None:
        """At ready(): start a round for the reads queued since the last one (leader), or
        forward them in one request (follower); and the appends a proposal left pending.  A
        round's appends and heartbeats leave together: one message per peer."""
        if self.role == Role.LEADER:
            lr = self._lreads
            mark = len(self._msgs)
            round_started = (lr.has_pending and not lr.read_round_in_flight
                             and self._own_term_committed())
            if round_started:
                self._start_read_round(take_reads=True)
            if self._pending_broadcast:
                self._pending_broadcast = False
                self._broadcast_append(heartbeat=False)
            if round_started:
                sent = {m.dest for m in self._msgs[mark:]
                        if m.type == MsgType.APPEND_ENTRIES_REQUEST}
                for peer in sorted(self.config.voters - sent - {self.id}):
                    pr = self.progress.get(peer)
                    if pr is not None and pr.state != ReplState.SNAPSHOT:
                        self._send_heartbeat(peer)
            return
        self._pending_broadcast = False
        fr = self._freads
        if fr.pending and self.leader_id not in (NO_LEADER, self.id):
            if fr.next_id == 0:
                # Ids unique across restarts: a leader may still hold a request of our last
                # incarnation, whose answer (an older index) must not answer a new one.
                fr.next_id = self._rng.getrandbits(62)
            fr.next_id += 1
            fr.inflight[fr.next_id] = fr.pending
            fr.pending = []
            fr.leader = self.leader_id
            # After persist, like every answer: it carries a term we may not have stored yet.
            self._msgs_after.append(Message(MsgType.READ_INDEX_REQUEST, self.term, self.id,
                                            self.leader_id, read_id=fr.next_id))

    def _start_read_round(self, *, take_reads: bool) -> None:
        """Every append sent from now on carries the new round's id; the reads queued so far
        (if ``take_reads``) are released when a quorum echoed it."""
        self._lreads.start_round(self._now, self._ticks, self.commit, take_reads=take_reads)
        self._confirm_reads()  # a group of one confirms at once

    def _on_read_ack(self, peer: int, read_id: int) -> None:
        lr = self._lreads
        if read_id > lr.round_id:
            log.warning("node %d: peer %d echoed read round %d, we started only %d", self.id,
                        peer, read_id, lr.round_id)
            return
        if read_id > lr.acked.get(peer, 0):
            lr.acked[peer] = read_id
            self._confirm_reads()

    def _confirm_reads(self) -> None:
        lr = self._lreads
        upto = lr.confirmed_round(self.config.voters, self.config.quorum, self.id)
        for rnd in lr.pop_confirmed(upto):
            if lr.lease_start is None or rnd.start > lr.lease_start:
                lr.lease_start = rnd.start
            for ctx in rnd.local:
                self._read_states.append(ReadState(ctx, rnd.index))
            for peer, rid in rnd.forwarded:
                self._msgs_after.append(Message(MsgType.READ_INDEX_RESPONSE, self.term, self.id,
                                                peer, next_index=rnd.index, accepted=True,
                                                read_id=rid))

    def _fail_leader_reads(self, local: list[int], forwarded: list[tuple[int, int]],
                           error: RaftError) -> None:
        self._read_failures.extend(ReadFailure(ctx, error) for ctx in local)
        for peer, rid in forwarded:
            self._msgs_after.append(Message(MsgType.READ_INDEX_RESPONSE, self.term, self.id, peer,
                                            accepted=False, result_code=error.code, read_id=rid))

    def _fail_all_reads(self, error: RaftError) -> None:
        """Leadership changed (or we left the group): no read queued here can complete."""
        local, forwarded = self._lreads.all_reads()
        self._fail_leader_reads(local, forwarded, error)
        self._read_failures.extend(ReadFailure(ctx, error) for ctx in self._freads.take_all())

    def _handle_read_index(self, m: Message) -> None:
        """A member forwards a batch of reads: answered once a round confirms (possibly
        several Readies later), or refused now if we do not lead."""
        if self.role != Role.LEADER:
            self._reply(m, accepted=False, code=ResultCode.NOT_LEADER)
        elif m.src not in self.config:
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
        elif not self._lreads.has_forwarded(m.src, m.read_id):
            # (A duplicate of a queued request gets no second answer: the first one's
            # answers it.  The runtime answers the duplicate RPC itself.)
            self._lreads.pending_forwarded.append((m.src, m.read_id))

    def _handle_read_index_response(self, m: Message) -> None:
        fr = self._freads
        batch = fr.inflight.pop(m.read_id, None)
        if batch is None or m.src != fr.leader:
            return  # failed already (the leader changed), or not an answer of ours
        if m.accepted:
            self._read_states.extend(ReadState(ctx, m.next_index) for ctx in batch)
            return
        leader = self.leader_id if self.leader_id != m.src else NO_LEADER
        error = RaftError.for_code(m.result_code, f"leader {m.src} refused the read index",
                                   leader_id=leader)
        self._read_failures.extend(ReadFailure(ctx, error) for ctx in batch)

    # ==========================================================================================
    # Snapshots: inputs from the runtime
    # ==========================================================================================
    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        """The runtime had the state machine create ``meta`` (from :meth:`snapshot_meta`; at
        or below the applied index).  It becomes the snapshot sent to lagging followers, and
        the log is compacted up to ``reserved_log_items`` entries behind it (the Ready's
        ``compact_to`` then tells the runtime to compact its log store)."""
        index = meta.last_index
        if not 0 < index <= self.applied or self.log.term_at(index) not in (None, meta.last_term):
            raise ValueError(f"snapshot at {index}/{meta.last_term} does not match the applied "
                             f"log (applied {self.applied})")
        if self._snapshot is not None and index <= self._snapshot.last_index:
            return
        self._snapshot = meta
        # Reads not handed out yet are of the replaced snapshot: restart those transfers.
        stale = [r.peer for r in self._snapshot_reads if r.meta != meta]
        self._snapshot_reads = [r for r in self._snapshot_reads if r.meta == meta]
        for peer in stale:
            if peer in self.progress and self.progress[peer].state == ReplState.SNAPSHOT:
                self._request_snapshot_read(peer, 0)
        upto = min(index - self.params.reserved_log_items, self.log.persisted, self.applied)
        if upto > self.log.boundary_index:
            self.log.compact(upto)
            self._compact_to = (upto, self.log.boundary_term)

    def send_snapshot_chunk(self, peer: int, meta: SnapshotMeta, obj_id: int, data: bytes,
                            is_last: bool) -> None:
        """The runtime read object ``obj_id`` of ``meta`` (a ``Ready.snapshot_reads`` item)
        from the state machine: send it to ``peer``.  Ignored if the transfer moved on."""
        pr = self.progress.get(peer)
        if (self.role != Role.LEADER or pr is None or pr.state != ReplState.SNAPSHOT
                or not pr.snapshot_reading or pr.snapshot != meta or pr.snapshot_obj != obj_id):
            return
        pr.snapshot_reading = False
        pr.snapshot_sent_max = max(pr.snapshot_sent_max, obj_id)
        if is_last:
            pr.snapshot_last_obj = obj_id
        # Resent only after a whole heartbeat interval without an answer.
        pr.acked_since_tick = True
        chunk = SnapshotChunk(meta, obj_id, bytes(data), is_last)
        self._send(chunk.to_message(self.term, self.id, peer, self.commit))

    # ==========================================================================================
    # Receiving messages
    # ==========================================================================================
    def step(self, m: Message) -> None:
        """Process one received message.  Every request is answered by exactly one response
        in a later Ready (the transport returns it as the RPC's reply)."""
        if m.term > self.term + MAX_TERM_JUMP:
            log.error("node %d: refusing %s from %d with term %d (ours is %d)", self.id,
                      m.type.name, m.src, m.term, self.term)
            if m.type.is_request:
                self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        if m.type.is_request:
            self._step_request(m)
        else:
            self._step_response(m)

    def _reply(self, req: Message, *, accepted: bool, next_index: int = 0,
               code: ResultCode = ResultCode.OK, dest: int | None = None,
               term: int | None = None, context: bytes = b"") -> None:
        self._msgs_after.append(
            Message(
                req.type.response_type,
                self.term if term is None else term,
                self.id,
                req.src if dest is None else dest,
                next_index=next_index,
                accepted=accepted,
                result_code=code,
                context=context,
                read_id=req.read_id,
            )
        )

    def _step_request(self, m: Message) -> None:
        t = m.type
        if t in _CLIENT_TYPES:
            self._handle_client_side_request(m)
            return
        if m.dest != self.id:
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        if t == MsgType.PRE_VOTE_REQUEST:
            self._handle_pre_vote(m)
            return
        if t == MsgType.REQUEST_VOTE_REQUEST:
            self._handle_vote(m)
            return
        if m.term < self.term:
            # A stale sender: tell it our term so it steps down.
            self._reply(m, accepted=False, code=ResultCode.TERM_MISMATCH)
            return
        if m.term > self.term:
            self._become_follower(m.term, m.src if t in _LEADER_REQUESTS else NO_LEADER)
        elif t in _LEADER_REQUESTS and self.leader_id not in (NO_LEADER, m.src):
            # Election Safety: one leader per term.  A second server acting as leader of a
            # term whose leader we know is broken or hostile; it must not touch our log or
            # membership (an append of its would be committed here and contradict the real
            # leader's entries at the same index and term).
            log.error("node %d: %s from %d, but %d leads term %d", self.id, t.name, m.src,
                      self.leader_id, self.term)
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        if t == MsgType.APPEND_ENTRIES_REQUEST:
            self._handle_append(m)
        elif t == MsgType.JOIN_CLUSTER_REQUEST:
            self._handle_join(m)
        elif t == MsgType.LEAVE_CLUSTER_REQUEST:
            self._handle_leave(m)
        elif t == MsgType.CUSTOM_NOTIFICATION_REQUEST:
            self._handle_notification(m)
        elif t == MsgType.PING_REQUEST:
            self._reply(m, accepted=True, next_index=self.log.last_index + 1)
        elif t == MsgType.INSTALL_SNAPSHOT_REQUEST:
            self._handle_install_snapshot(m)
        elif t == MsgType.READ_INDEX_REQUEST:
            self._handle_read_index(m)
        else:
            # The rest NuRaft uses internally.
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)

    def _step_response(self, m: Message) -> None:
        if m.dest != self.id:
            return
        if m.type == MsgType.READ_INDEX_RESPONSE:
            # Valid whatever our term now: the leader answered after our request reached it.
            self._handle_read_index_response(m)
        if m.type == MsgType.PRE_VOTE_RESPONSE:
            self._handle_pre_vote_response(m)
            return
        if m.term > self.term:
            self._become_follower(m.term, NO_LEADER)
            return
        if m.term < self.term:
            return  # stale
        if m.type == MsgType.REQUEST_VOTE_RESPONSE:
            if self.role == Role.CANDIDATE:
                self._votes[m.src] = m.accepted
                self._tally_votes()
        elif self.role != Role.LEADER:
            return
        elif m.type == MsgType.APPEND_ENTRIES_RESPONSE:
            self._handle_append_response(m)
        elif m.type == MsgType.INSTALL_SNAPSHOT_RESPONSE:
            self._handle_snapshot_response(m)
        elif m.type == MsgType.JOIN_CLUSTER_RESPONSE:
            self._handle_join_response(m)
        elif m.type in (MsgType.CUSTOM_NOTIFICATION_RESPONSE, MsgType.LEAVE_CLUSTER_RESPONSE,
                        MsgType.PING_RESPONSE):
            pr = self.progress.get(m.src)
            if pr is not None:
                pr.recent_active = True

    # -- elections ---------------------------------------------------------------------------
    def _behind_base(self) -> bool:
        """We adopted our committed configuration from a leader's invitation (a join with an
        empty log) and do not hold the log up to it yet.  Such a replica cannot tell whether
        a candidate is up to date -- any log beats its own -- so it grants no (pre-)vote: a
        member removed while cut off, still using a configuration the group has left, would
        otherwise win with our vote (a member added back with a wiped log breaks Raft's
        single-server-change argument, which needs the old majority to keep its logs)."""
        return self.log.last_index < self._committed_config.log_idx

    def _in_lease(self, m: Message) -> bool:
        """Check-quorum's other half: while we hear from a live leader we refuse to help
        anyone depose it, unless the leader itself asked (leadership transfer)."""
        if self.params.leadership_expiry_ticks == 0:
            return False
        if any(e.type == LogType.CUSTOM and e.buffer == FORCE_VOTE for e in m.entries):
            return False
        if self.role == Role.LEADER or self._boot_lease:
            return True
        return self._leader_contact and self.leader_id != NO_LEADER

    def _handle_pre_vote(self, m: Message) -> None:
        up_to_date = self.log.is_up_to_date(m.last_log_term, m.last_log_index)
        if m.term <= self.term or self._in_lease(m) or not up_to_date or self._behind_base():
            self._reply(m, accepted=False)
            return
        # Pre-votes change nothing here; the term in a grant is the candidate's future term.
        self._reply(m, accepted=True, term=m.term)

    def _handle_vote(self, m: Message) -> None:
        if m.term > self.term and self._in_lease(m):
            self._reply(m, accepted=False)
            return
        if m.term < self.term:
            self._reply(m, accepted=False)
            return
        if m.term > self.term:
            self._become_follower(m.term, NO_LEADER)
        can_vote = (self.vote in (NO_VOTE, m.src) and self.leader_id in (NO_LEADER, m.src)
                    and not self._behind_base())
        if can_vote and self.log.is_up_to_date(m.last_log_term, m.last_log_index):
            self.vote = m.src
            self._reset_election_timer()
            self._reply(m, accepted=True)
        else:
            self._reply(m, accepted=False)

    def _handle_pre_vote_response(self, m: Message) -> None:
        if self.role != Role.PRE_CANDIDATE:
            if m.term > self.term and not m.accepted:
                self._become_follower(m.term, NO_LEADER)
            return
        if not m.accepted and m.term > self.term:
            self._become_follower(m.term, NO_LEADER)
            return
        if m.term != self.term + 1:
            return  # an answer to an older round
        self._votes[m.src] = m.accepted
        self._tally_votes()

    def _tally_votes(self) -> None:
        voters = self.config.voters
        granted = sum(1 for v, ok in self._votes.items() if ok and v in voters)
        rejected = sum(1 for v, ok in self._votes.items() if not ok and v in voters)
        if granted >= self.config.quorum:
            if self.role == Role.PRE_CANDIDATE:
                self._become_candidate(force=False)
            elif self.role == Role.CANDIDATE:
                self._become_leader()
        elif rejected > len(voters) - self.config.quorum:
            self._become_follower(self.term, NO_LEADER)

    def _vote_request(self, msg_type: MsgType, term: int, peer: int, force: bool) -> Message:
        extra = (LogEntry(term, LogType.CUSTOM, FORCE_VOTE),) if force else ()
        return Message(
            msg_type,
            term,
            self.id,
            peer,
            last_log_term=self.log.last_term,
            last_log_index=self.log.last_index,
            commit_index=self.commit,
            entries=extra,
        )

    def _become_pre_candidate(self) -> None:
        self._set_role(Role.PRE_CANDIDATE, NO_LEADER)
        self._votes = {self.id: True}  # a pre-vote changes nothing, so it needs no fsync
        self._reset_election_timer()
        for peer in sorted(self.config.voters - {self.id}):
            self._msgs.append(
                self._vote_request(MsgType.PRE_VOTE_REQUEST, self.term + 1, peer, False)
            )
        self._tally_votes()

    def _become_candidate(self, *, force: bool) -> None:
        self.term += 1
        self.vote = self.id
        self._set_role(Role.CANDIDATE, NO_LEADER)
        self._votes = {}
        self._self_vote_durable = False  # our own vote counts once it is on disk
        self._reset_election_timer()
        for peer in sorted(self.config.voters - {self.id}):
            # After persist: the request carries a term we have not stored yet.
            self._msgs_after.append(
                self._vote_request(MsgType.REQUEST_VOTE_REQUEST, self.term, peer, force)
            )

    def _become_leader(self) -> None:
        self._set_role(Role.LEADER, self.id)
        self._stop_election_timer()
        self._heartbeat_timer = TimerCommand(self.params.heartbeat_interval_ms)
        self._transfer_target = None
        self._joiner = None
        self.progress = {
            s.id: Progress(next=self.log.last_index + 1)
            for s in self.config.servers
            if s.id != self.id
        }
        self._events.append(BecomeLeader(self.term))
        # The no-op of Raft §8, as NuRaft does it: re-append the configuration.  Committing
        # it commits every earlier entry and unblocks configuration changes (thesis §4.1).
        self._append_config(self.config)
        log.info("node %d: became leader of term %d", self.id, self.term)

    def _become_follower(self, term: int, leader: int) -> None:
        if term > self.term:
            self.term = term
            self.vote = NO_VOTE
        was = self.role
        self._set_role(Role.FOLLOWER, leader)
        if was == Role.LEADER:
            self._heartbeat_timer = TimerCommand(0)
            self._snapshot_reads = []  # transfers end with our leadership
            self.progress = {}
            self._transfer_target = None
            self._joiner = None
        self._reset_election_timer()

    def _set_role(self, role: Role, leader: int) -> None:
        changed = role != self.role or leader != self.leader_id
        if changed:
            self._fail_all_reads(NotLeader(leader, "leadership changed while reading"))
            self._lreads = LeaderReads()
            self._ticks = 0
        self.role = role
        self.leader_id = leader
        if changed and role == Role.FOLLOWER:
            self._events.append(BecomeFollower(self.term, leader))
        if leader != NO_LEADER and leader != self.id:
            self._target_priority = self.config.max_priority

    # -- followers: append entries -----------------------------------------------------------
    def _accept_leader(self, m: Message) -> None:
        if self.role != Role.FOLLOWER or self.leader_id != m.src:
            self._set_role(Role.FOLLOWER, m.src)
        self._leader_contact = True
        if not self.removed:
            self._reset_election_timer()

    def _handle_append(self, m: Message) -> None:
        if self.role == Role.LEADER:
            # Two leaders in one term is impossible; a peer claiming it is broken or hostile.
            log.error("node %d: append from %d in our own term %d", self.id, m.src, m.term)
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        self._accept_leader(m)
        prev = m.last_log_index
        if any(e.term > m.term for e in m.entries):
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        entries = m.entries
        want_term = m.last_log_term
        if prev < self.log.boundary_index:
            # Entries up to our boundary are committed and in our snapshot, hence equal to
            # the leader's (Log Matching): skip them.
            skip = self.log.boundary_index - prev
            if skip >= len(entries):
                self._reply(m, accepted=True, next_index=prev + len(entries) + 1)
                return
            want_term = entries[skip - 1].term if skip else want_term
            entries = entries[skip:]
            prev = self.log.boundary_index
        if self.log.term_at(prev) != want_term:
            # Fast backtracking (etcd's findConflictByTerm): the largest index <= prev whose
            # term is <= the leader's term at prev; every entry after it must differ from the
            # leader's.  Its term goes back in ``context`` so the leader can skip on its side.
            hint = self.log.last_index_with_term_at_most(want_term, min(prev, self.log.last_index))
            hint_term = self.log.term_at(hint) or 0
            self._reply(m, accepted=False, next_index=hint + 1,
                        context=hint_term.to_bytes(8, "big"))
            return
        # Validate configuration entries before touching the log (hostile input).
        try:
            new_configs = [
                ClusterConfig.decode(e.buffer).at_index(prev + 1 + i)
                for i, e in enumerate(entries)
                if e.type == LogType.CONFIG
            ]
        except RaftError:
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        # Find the first entry we do not already have.
        index = prev + 1
        k = 0
        while k < len(entries) and self.log.term_at(index) == entries[k].term:
            index += 1
            k += 1
        if k < len(entries):
            if index <= self.log.last_index:
                if index <= self.commit:
                    log.error("node %d: refusing to overwrite committed entry %d", self.id, index)
                    self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
                    return
                self.log.truncate_from(index)
                self._drop_configs_from(index)
            self.log.append(entries[k:])
            for cfg in new_configs:
                if cfg.log_idx >= index and cfg.log_idx > self._committed_config.log_idx:
                    self._push_config(cfg)
        last_new = prev + len(entries)
        if m.commit_index > self.commit:
            self._set_commit(min(m.commit_index, last_new))
        self._reply(m, accepted=True, next_index=last_new + 1)

    # -- followers: install snapshot ---------------------------------------------------------
    def _handle_install_snapshot(self, m: Message) -> None:
        """One object of the leader's snapshot (Raft §7, NuRaft's logical snapshot objects):
        staged by the runtime in order; the last one installs the snapshot.  Every answer
        leaves after persist, so an object is acknowledged only once it is staged."""
        if self.role == Role.LEADER:
            log.error("node %d: install_snapshot from %d in our own term %d", self.id, m.src,
                      m.term)
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        try:
            chunk = SnapshotChunk.from_message(m)
        except BadRequest as exc:
            log.warning("node %d: bad install_snapshot from %d: %s", self.id, m.src, exc)
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        self._accept_leader(m)
        meta = chunk.meta
        index = meta.last_index
        if index <= self.commit:
            # Already there (a duplicate, or the leader's view of us is stale).
            self._reply(m, accepted=True, next_index=index + 1,
                        context=encode_snapshot_reply(index, True))
            return
        if self._snapshot_to_install is not None:
            # One install per Ready: ask for this one again from the start, later.
            self._reply(m, accepted=True, next_index=0,
                        context=encode_snapshot_reply(index, False))
            return
        if chunk.obj_id == 0:
            self._recv_snapshot = meta
            self._recv_next = 0
        if self._recv_snapshot != meta or chunk.obj_id != self._recv_next:
            # Out of order: a stale duplicate, or the middle of a transfer we have no staged
            # part of (we restarted, or it is another snapshot): say which object we need.
            need = self._recv_next if self._recv_snapshot == meta else 0
            self._reply(m, accepted=True, next_index=need,
                        context=encode_snapshot_reply(index, False))
            return
        self._snapshot_chunks.append(chunk)
        self._recv_next = chunk.obj_id + 1
        if not chunk.is_last:
            self._reply(m, accepted=True, next_index=self._recv_next,
                        context=encode_snapshot_reply(index, False))
            return
        self._install_snapshot(meta)
        self._reply(m, accepted=True, next_index=index + 1,
                    context=encode_snapshot_reply(index, True))

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """The whole snapshot is staged: it replaces the log up to its last entry (keeping the
        entries after it if the log holds that entry, Raft §7), its configuration becomes the
        committed one, and commit = applied = its last index.  The runtime applies it to the
        state machine and resets its log store before anything of this Ready is persisted."""
        index = meta.last_index
        prev = self.config
        kept = self.log.restore(index, meta.last_term)
        self._configs = [meta.config]
        if kept:
            tail = self.log.slice(index + 1, self.log.last_index + 1)
            for offset, entry in enumerate(tail):
                if entry.type == LogType.CONFIG:
                    idx = index + 1 + offset
                    self._configs.append(ClusterConfig.decode(entry.buffer).at_index(idx))
        self._committed_config = meta.config
        self._config_to_save = meta.config
        self.commit = index
        self.applied = index
        self._snapshot = meta
        self._recv_snapshot = None
        self._recv_next = 0
        self._snapshot_to_install = meta
        if not self.config.same_members(prev):
            self._events.append(NewConfig(self.config, committed=len(self._configs) == 1))
        if self.removed and self.id in meta.config:
            self.removed = False
            self._reset_election_timer()
        log.info("node %d: installed snapshot %d/%d (kept %d entries after it)", self.id,
                 index, meta.last_term, self.log.last_index - index)

    def _handle_join(self, m: Message) -> None:
        """A leader invites us (NuRaft's join_cluster).  We adopt its configuration as our
        base and persist it, so that a crash before catching up does not make us campaign
        in a stale one-member group."""
        if self.role == Role.LEADER or not m.entries or m.entries[0].type != LogType.CONFIG:
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        try:
            leader_config = ClusterConfig.decode(m.entries[0].buffer)
        except RaftError:
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)
            return
        self._accept_leader(m)
        self.removed = False
        self._invited_after = m.last_log_index
        if self.log.last_index == self.log.boundary_index:
            # Keep the index the leader's (committed) configuration was appended at: the
            # entries up to there that we are about to replay are history, and an older
            # configuration among them must not take effect here (the group's first one
            # lists only its creator: the creator added back with an empty log would elect
            # itself).  Replay skips configurations at or below the committed base's index.
            base = ClusterConfig(leader_config.servers,
                                 log_idx=max(leader_config.log_idx, self.log.boundary_index))
            self._configs = [base]
            self._committed_config = base
            self._config_to_save = base
        self._events.append(JoinedCluster(m.src, self.term))
        self._reply(m, accepted=True, next_index=self.log.last_index + 1)

    def _handle_leave(self, m: Message) -> None:
        self._accept_leader(m)
        # The leader stopped replicating to us when it appended the configuration without
        # us, so that entry is usually not in our log: trust the leader, unless our log holds
        # a configuration newer than its commit index at removal (we were added back since).
        if self.id not in self.config or self.config.log_idx <= m.commit_index:
            self._mark_removed()
        self._reply(m, accepted=True)

    def _handle_notification(self, m: Message) -> None:
        kind = _notification_kind(m)
        if kind == NotificationType.LEADERSHIP_TAKEOVER and self.role != Role.LEADER:
            self._accept_leader(m)
            me = self.config.get(self.id)
            if me is not None and not me.learner and me.priority > 0 and not self.removed:
                log.info("node %d: taking over leadership from %d", self.id, m.src)
                self._reply(m, accepted=True)
                self._become_candidate(force=True)
                return
            self._reply(m, accepted=False)
        elif kind == NotificationType.REQUEST_RESIGNATION and self.role == Role.LEADER:
            try:
                self.yield_leadership(m.src)
            except RaftError:
                self._reply(m, accepted=False)
                return
            self._reply(m, accepted=True)
        else:
            self._reply(m, accepted=False, code=ResultCode.BAD_REQUEST)

    def _handle_client_side_request(self, m: Message) -> None:
        """client_request / add_server / remove_server, from a member forwarding or from an
        external client.  Answered NuRaft's way: a refusal names the leader in ``dest``
        (-1 when none is known, never the requester: a forwarding member would take itself
        for the leader)."""
        try:
            if m.type == MsgType.CLIENT_REQUEST:
                if not m.entries or any(e.type != LogType.APP for e in m.entries):
                    raise BadRequest("client_request must carry APP entries")
                prop = self.propose_entries(m.entries)
                self._reply(m, accepted=True, next_index=prop.last_index + 1, term=prop.term)
                return
            if len(m.entries) != 1 or m.entries[0].type != LogType.CLUSTER:
                raise BadRequest("membership requests carry one CLUSTER entry")
            if m.type == MsgType.ADD_SERVER_REQUEST:
                self.add_server(ServerConfig.decode(m.entries[0].buffer))
            else:
                buf = m.entries[0].buffer
                if len(buf) != 4:
                    raise BadRequest("remove_server carries a 4-byte server id")
                self.remove_server(int.from_bytes(buf, "little", signed=True))
            self._reply(m, accepted=True)
        except NotLeader as exc:
            self._reply(m, accepted=False, code=ResultCode.NOT_LEADER, dest=exc.leader_id)
        except RaftError as exc:
            self._reply(m, accepted=False, code=exc.code)

    # -- leaders: replication ----------------------------------------------------------------
    def _send(self, m: Message) -> None:
        """Leader requests do not promise anything unpersisted (our term is durable since
        our election), so they may leave before this turn's fsync."""
        self._msgs.append(m)

    def _broadcast_append(self, *, heartbeat: bool) -> None:
        for peer in sorted(self.progress):
            pr = self.progress[peer]
            if pr.state == ReplState.SNAPSHOT:
                if heartbeat:
                    if not pr.acked_since_tick:
                        # No answer for a whole interval: send the awaited object again.
                        self._request_snapshot_read(peer, pr.snapshot_obj)
                    pr.acked_since_tick = False
                continue
            if pr.joining and not pr.join_accepted:
                # Not before it accepts our invitation: if that was lost, the server may be a
                # stale replica that would catch up as an old member and, seeing its own
                # removal committed, leave -- while we count its acknowledgements as a join.
                continue
            if heartbeat:
                if pr.state == ReplState.REPLICATE and pr.inflight and not pr.acked_since_tick:
                    pr.become_probe()  # nothing came back for a whole interval: assume loss
                if pr.state == ReplState.PROBE:
                    pr.probe_sent = False
                pr.acked_since_tick = False
            sent = self._send_append(peer)
            if heartbeat and not sent:
                self._send_heartbeat(peer)

    def _send_heartbeat(self, peer: int) -> None:
        """An empty append anchored at the follower's known match, so it always succeeds
        and carries the commit index without triggering backtracking."""
        pr = self.progress[peer]
        prev = max(pr.match, self.log.boundary_index)
        prev_term = self.log.term_at(prev)
        assert prev_term is not None
        self._send(
            Message(
                MsgType.APPEND_ENTRIES_REQUEST,
                self.term,
                self.id,
                peer,
                last_log_term=prev_term,
                last_log_index=prev,
                commit_index=self.commit,
                read_id=self._lreads.round_id,
            )
        )

    def _send_append(self, peer: int) -> bool:
        """Send entries to ``peer`` if its progress allows; True if anything was sent."""
        pr = self.progress[peer]
        if pr.state == ReplState.SNAPSHOT:
            return False
        sent = False
        while pr.next <= self.log.last_index or (pr.state == ReplState.PROBE and not pr.probe_sent):
            if pr.state == ReplState.PROBE and pr.probe_sent:
                break
            full = len(pr.inflight) >= self.params.max_inflight_appends
            if pr.state == ReplState.REPLICATE and full:
                break
            prev = pr.next - 1
            prev_term = self.log.term_at(prev)
            if prev_term is None:
                # Behind our log start: it needs our snapshot.
                return self._start_snapshot(peer) or sent
            entries = self._batch(pr.next)
            self._send(
                Message(
                    MsgType.APPEND_ENTRIES_REQUEST,
                    self.term,
                    self.id,
                    peer,
                    last_log_term=prev_term,
                    last_log_index=prev,
                    commit_index=self.commit,
                    entries=tuple(entries),
                    read_id=self._lreads.round_id,
                )
            )
            sent = True
            if pr.state == ReplState.PROBE:
                pr.probe_sent = True
                break
            pr.next += len(entries)
            pr.inflight.append(pr.next - 1)
            if not entries:
                break
        return sent

    def _batch(self, start: int) -> list[LogEntry]:
        entries = self.log.slice(start, start + self.params.max_append_entries)
        budget = self.params.max_append_bytes
        for i, e in enumerate(entries):
            budget -= e.size
            if budget < 0:
                return entries[: max(1, i)]
        return entries

    def _handle_append_response(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.read_id and m.result_code == ResultCode.OK:
            # It answered an append of ours sent in round read_id: it followed us then.
            self._on_read_ack(m.src, m.read_id)
        if pr.state == ReplState.SNAPSHOT:
            return  # an answer to an append sent before the transfer began
        if not m.accepted or m.next_index - 1 > pr.match:
            # Progress (or a rejection, which re-probes anyway).  An ack of a heartbeat,
            # which is anchored at ``match``, is not: else a lost append in REPLICATE state
            # would never be resent to a follower that keeps answering heartbeats.
            pr.acked_since_tick = True
        if m.accepted:
            new_match = m.next_index - 1
            if new_match > self.log.last_index:
                log.warning("node %d: peer %d acknowledged index %d beyond our log", self.id,
                            m.src, new_match)
                return
            while pr.inflight and pr.inflight[0] <= new_match:
                pr.inflight.popleft()
            if new_match > pr.match:
                pr.match = new_match
                if pr.state == ReplState.PROBE:
                    pr.state = ReplState.REPLICATE
                    pr.next = new_match + 1
                    pr.inflight.clear()
                pr.next = max(pr.next, new_match + 1)
                pr.probe_sent = False
                self._maybe_commit()
                self._maybe_send_takeover()
                self._maybe_finish_join()
            elif pr.state == ReplState.PROBE:
                pr.probe_sent = False
                pr.state = ReplState.REPLICATE
                pr.next = pr.match + 1
                pr.inflight.clear()
        else:
            if m.result_code != ResultCode.OK:
                log.warning("node %d: peer %d refused an append: %s", self.id, m.src,
                            m.result_code.name)
            hint = m.next_index - 1
            if hint < pr.match:
                return  # stale rejection: the follower has at least ``match``
            if len(m.context) == 8:
                hint = self.log.last_index_with_term_at_most(
                    int.from_bytes(m.context, "big"), hint
                )
            pr.state = ReplState.PROBE
            pr.inflight.clear()
            pr.probe_sent = False
            # Strictly below the last probe (progress even without a hint term), never
            # below what the follower is known to hold.
            pr.next = max(pr.match + 1, min(hint + 1, pr.next - 1))
        if m.src in self.progress:
            self._send_append(m.src)

    # -- leaders: snapshot transfer -----------------------------------------------------------
    def _start_snapshot(self, peer: int) -> bool:
        snap = self._snapshot
        pr = self.progress[peer]
        if snap is None or snap.last_index < self.log.boundary_index:
            log.warning("node %d: peer %d is behind our log start and we have no snapshot",
                        self.id, peer)
            return False
        log.info("node %d: sending snapshot %d/%d to peer %d", self.id, snap.last_index,
                 snap.last_term, peer)
        pr.state = ReplState.SNAPSHOT
        pr.inflight.clear()
        pr.probe_sent = False
        pr.snapshot = snap
        pr.snapshot_sent_max = -1
        pr.snapshot_last_obj = -1
        self._request_snapshot_read(peer, 0)
        return True

    def _request_snapshot_read(self, peer: int, obj_id: int) -> None:
        """Ask the runtime to read object ``obj_id`` of the snapshot in transfer to ``peer``
        (it answers with :meth:`send_snapshot_chunk`).  A transfer whose snapshot was replaced
        by a newer one restarts with it: the state machine serves only its latest."""
        pr = self.progress[peer]
        if pr.snapshot != self._snapshot:
            pr.snapshot = self._snapshot
            pr.snapshot_sent_max = -1
            pr.snapshot_last_obj = -1
            obj_id = 0
        assert pr.snapshot is not None
        pr.snapshot_obj = obj_id
        pr.snapshot_reading = True
        self._snapshot_reads.append(SnapshotRead(peer, pr.snapshot, obj_id))

    def _handle_snapshot_response(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        reply = decode_snapshot_reply(m.context)
        if not m.accepted or reply is None:
            log.warning("node %d: peer %d refused a snapshot object: %s", self.id, m.src,
                        m.result_code.name)
            return
        index, done = reply
        if done:
            if index > self.log.last_index:
                return  # not a snapshot of ours
            pr.acked_since_tick = True
            pr.match = max(pr.match, index)
            if pr.state == ReplState.SNAPSHOT:
                log.info("node %d: peer %d installed snapshot %d", self.id, m.src, index)
                pr.become_probe()
            else:
                pr.next = max(pr.next, pr.match + 1)
            self._maybe_commit()
            self._maybe_send_takeover()
            self._maybe_finish_join()
            if m.src in self.progress:
                self._send_append(m.src)
            return
        snap = pr.snapshot
        if pr.state != ReplState.SNAPSHOT or snap is None or snap.last_index != index:
            return  # about a transfer that is over
        want = m.next_index
        exists = pr.snapshot_last_obj < 0 or want <= pr.snapshot_last_obj
        if not 0 <= want <= pr.snapshot_sent_max + 1 or not exists or want == pr.snapshot_obj:
            return  # a duplicate answer, or an object never offered
        pr.acked_since_tick = True
        self._request_snapshot_read(m.src, want)

    def _maybe_commit(self) -> None:
        voters = self.config.voters
        matches = [pr.match for p, pr in self.progress.items() if p in voters]
        if self.id in voters:
            matches.append(self.log.persisted)
        if len(matches) < self.config.quorum:
            return
        matches.sort(reverse=True)
        candidate = matches[self.config.quorum - 1]
        # Raft §5.4.2 (Figure 8): only entries of the current term commit by counting.
        if candidate > self.commit and self.log.term_at(candidate) == self.term:
            self._set_commit(candidate)
            self._pending_broadcast = True

    def _set_commit(self, index: int) -> None:
        if index <= self.commit:
            return
        self.commit = index
        self._advance_committed_config(emit=True)

    # -- configuration -----------------------------------------------------------------------
    def _append_config(self, cfg: ClusterConfig) -> None:
        index = self.log.last_index + 1
        new = cfg.at_index(index)
        self.log.append([LogEntry(self.term, LogType.CONFIG, new.encode())])
        self._push_config(new)
        self._pending_broadcast = True

    def _push_config(self, cfg: ClusterConfig) -> None:
        prev = self.config
        self._configs.append(cfg)
        if not cfg.same_members(prev):
            self._events.append(NewConfig(cfg, committed=False))
            self._on_config_in_effect()

    def _drop_configs_from(self, index: int) -> None:
        prev = self.config
        while len(self._configs) > 1 and self._configs[-1].log_idx >= index:
            self._configs.pop()
        if not self.config.same_members(prev):
            self._events.append(NewConfig(self.config, committed=False))
            self._on_config_in_effect()

    def _on_config_in_effect(self) -> None:
        """Membership changes take effect on append (single-server change rule)."""
        if self.role != Role.LEADER:
            return
        cfg = self.config
        for peer in list(self.progress):
            if peer not in cfg and not self.progress[peer].joining:
                del self.progress[peer]
        for srv in cfg.servers:
            if srv.id != self.id and srv.id not in self.progress:
                self.progress[srv.id] = Progress(next=self.log.last_index + 1)
            elif srv.id in self.progress:
                self.progress[srv.id].joining = False
        if self._transfer_target is not None and self._transfer_target not in cfg:
            self._transfer_target = None

    def _advance_committed_config(self, *, emit: bool) -> None:
        newest = self._committed_config
        for cfg in self._configs:
            if cfg.log_idx <= self.commit and cfg.log_idx >= newest.log_idx:
                newest = cfg
        if newest is self._committed_config:
            return
        previous = self._committed_config
        self._committed_config = newest
        # Drop history that can no longer be rolled back.
        self._configs = [c for c in self._configs if c.log_idx >= newest.log_idx]
        if not emit:
            return
        self._config_to_save = newest
        if not newest.same_members(previous):
            self._events.append(NewConfig(newest, committed=True))
        if self.role == Role.LEADER:
            for srv in previous.servers:
                if srv.id not in newest and srv.id != self.id:
                    # Tell a removed member it is out (it cannot learn it from the log).
                    self._send(Message(MsgType.LEAVE_CLUSTER_REQUEST, self.term, self.id, srv.id,
                                       commit_index=self.commit))
            if self.id not in newest:
                self._leader_removed()
        elif self.id not in newest and self.id in previous:
            # A member added back replays its old removal while catching up: not news.
            if newest.log_idx > self._invited_after:
                self._mark_removed()
        elif self.removed and self.id in newest:
            # A committed configuration lists us again (we were added back, e.g. while a
            # restart had made us forget the invitation): campaign again when needed.
            self.removed = False
            self._reset_election_timer()

    def _leader_removed(self) -> None:
        """Our own removal committed: hand over to the most caught-up voter that may lead
        (priority > 0) and step down."""
        takeover = self.resignation()
        if takeover is not None:
            self._send(takeover)
        self._become_follower(self.term, NO_LEADER)
        self._mark_removed()

    def resignation(self) -> Message | None:
        """The LEADERSHIP_TAKEOVER for the most caught-up voter that may lead (priority > 0),
        or None (not leading, no such voter).  Sent by a leader that is removed, and by the
        runtime for a leader whose group stops for good while its node stays up: otherwise
        the followers of a quiet group, whose pings to that node still succeed, would wait
        for traffic to notice.  Only liveness: the target still has to win a vote."""
        if self.role != Role.LEADER:
            return None
        eligible = {s.id for s in self.config.servers if not s.learner and s.priority > 0}
        best = max(
            (p for p in self.progress if p in eligible and p != self.id),
            key=lambda p: (self.progress[p].match, -p),
            default=None,
        )
        if best is None:
            return None
        return Message(
            MsgType.CUSTOM_NOTIFICATION_REQUEST,
            self.term,
            self.id,
            best,
            entries=(_notification(self.term, NotificationType.LEADERSHIP_TAKEOVER),),
        )

    def _mark_removed(self) -> None:
        if self.removed:
            return
        self.removed = True
        self._fail_all_reads(Cancelled("removed from the group while reading"))
        self._events.append(RemovedFromCluster(self.term))
        self._stop_election_timer()

    def _maybe_finish_join(self) -> None:
        srv = self._joiner
        if srv is None:
            return
        pr = self.progress.get(srv.id)
        if pr is None or pr.match < self.commit:
            return
        self._joiner = None
        self._append_config(self.config.with_servers([*self.config.servers, srv]))

    def _handle_join_response(self, m: Message) -> None:
        srv = self._joiner
        if srv is None or srv.id != m.src:
            return
        if not m.accepted:
            log.info("node %d: server %d refused to join", self.id, m.src)
            self._abort_join()
            return
        pr = self.progress[m.src]
        pr.recent_active = True
        pr.join_accepted = True
        pr.next = max(1, min(m.next_index, self.log.last_index + 1))
        pr.probe_sent = False
        self._send_append(m.src)
        self._maybe_finish_join()

    def _abort_join(self) -> None:
        if self._joiner is not None:
            self.progress.pop(self._joiner.id, None)
        self._joiner = None

    def _maybe_send_takeover(self) -> None:
        target = self._transfer_target
        if target is None:
            return
        pr = self.progress.get(target)
        if pr is None or pr.match < self.log.last_index:
            return
        self._send(
            Message(
                MsgType.CUSTOM_NOTIFICATION_REQUEST,
                self.term,
                self.id,
                target,
                commit_index=self.commit,
                entries=(_notification(self.term, NotificationType.LEADERSHIP_TAKEOVER),),
            )
        )


# Messages a leader sends: a higher term in one of these names the sender as leader.
_LEADER_REQUESTS = frozenset(
    {
        MsgType.APPEND_ENTRIES_REQUEST,
        MsgType.JOIN_CLUSTER_REQUEST,
        MsgType.LEAVE_CLUSTER_REQUEST,
        MsgType.INSTALL_SNAPSHOT_REQUEST,
    }
)
_CLIENT_TYPES = frozenset(
    {MsgType.CLIENT_REQUEST, MsgType.ADD_SERVER_REQUEST, MsgType.REMOVE_SERVER_REQUEST}
)


def _notification(term: int, kind: NotificationType) -> LogEntry:
    return LogEntry(term, LogType.CUSTOM, bytes([int(kind)]))


def _notification_kind(m: Message) -> NotificationType | None:
    if len(m.entries) != 1 or m.entries[0].type != LogType.CUSTOM or len(m.entries[0].buffer) != 1:
        return None
    try:
        return NotificationType(m.entries[0].buffer[0])
    except ValueError:
        return None
