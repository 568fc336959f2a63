"""Read-index bookkeeping of one replica (Raft thesis §6.4), kept apart from the node's rules.

A leader serves a linearizable read at its commit index once it knows it was still the leader
*after* the read began: it starts a heartbeat **round** (every append it sends from then on
carries the round's id in ``Message.read_id``), and a round is confirmed once a quorum of
voters echoed an id at least as high.  Every read queued before a round starts rides on it;
a read queued while it is in flight waits for the next one, so one quorum round trip serves
any number of reads.  The round's start time also renews the leader's lease (lease reads).

A follower forwards its reads to the leader in batches (``READ_INDEX_REQUEST``, one per
Ready), and the leader answers each batch with the read index once its round confirms.

Plain data and arithmetic only; :class:`~nuraft_mesg.raft.node.RaftNode` decides when rounds
start and what a confirmed or failed read turns into.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["FollowerReads", "LeaderReads", "ReadRound"]

#: Rounds without reads kept unconfirmed at most (they only renew the lease; a newer one
#: confirms everything an older one would).
MAX_IDLE_ROUNDS = 8


@dataclass(slots=True)
class ReadRound:
    """One heartbeat round and the reads waiting for it."""

    id: int
    start: float
    """The runtime's time when the round started (at or before its heartbeats left)."""
    tick: int
    """The leader's heartbeat tick at the start (reads time out in ticks)."""
    index: int
    """The read index: the commit index when the round started."""
    local: list[int] = field(default_factory=list)
    """Read contexts of this node's own reads."""
    forwarded: list[tuple[int, int]] = field(default_factory=list)
    """``(follower, request id)`` of forwarded read batches."""

    @property
    def has_reads(self) -> bool:
        return bool(self.local or self.forwarded)


@dataclass(slots=True)
class LeaderReads:
    """A leader's reads and rounds, for one term (rebuilt when it wins an election)."""

    round_id: int = 0
    """The latest round started; carried in every append sent."""
    acked: dict[int, int] = field(default_factory=dict)
    """Per peer: the highest round id it echoed."""
    rounds: deque[ReadRound] = field(default_factory=deque)
    """Started, unconfirmed rounds, oldest first."""
    pending_local: list[int] = field(default_factory=list)
    pending_forwarded: list[tuple[int, int]] = field(default_factory=list)
    """Reads waiting for the next round (or for the leader's own-term commit)."""
    lease_start: float | None = None
    """Start of the latest confirmed round (None: no lease yet)."""
    lease_spoiled: bool = False
    """This leader offered to hand leadership over in this term: a candidate it sent a
    takeover may win without waiting for anyone's lease, so leases are off for the term."""

    @property
    def has_pending(self) -> bool:
        return bool(self.pending_local or self.pending_forwarded)

    def has_forwarded(self, peer: int, request_id: int) -> bool:
        key = (peer, request_id)
        return key in self.pending_forwarded or any(key in r.forwarded for r in self.rounds)

    @property
    def read_round_in_flight(self) -> bool:
        return any(r.has_reads for r in self.rounds)

    def start_round(self, now: float, tick: int, index: int, *, take_reads: bool) -> ReadRound:
        self.round_id += 1
        rnd = ReadRound(self.round_id, now, tick, index)
        if take_reads:
            rnd.local, self.pending_local = self.pending_local, []
            rnd.forwarded, self.pending_forwarded = self.pending_forwarded, []
        self.rounds.append(rnd)
        idle = [r for r in self.rounds if not r.has_reads]
        for r in idle[:-MAX_IDLE_ROUNDS]:
            self.rounds.remove(r)
        return rnd

    def confirmed_round(self, voters: frozenset[int], quorum: int, self_id: int) -> int:
        """The highest round a quorum of ``voters`` acknowledged (this node counts for every
        round it started, if it is a voter); 0 if none."""
        acks = [self.acked.get(v, 0) for v in voters if v != self_id]
        if self_id in voters:
            acks.append(self.round_id)
        if len(acks) < quorum:
            return 0
        acks.sort(reverse=True)
        return acks[quorum - 1]

    def pop_confirmed(self, upto: int) -> list[ReadRound]:
        done: list[ReadRound] = []
        while self.rounds and self.rounds[0].id <= upto:
            done.append(self.rounds.popleft())
        return done

    def pop_expired(self, tick: int, timeout_ticks: int) -> list[ReadRound]:
        """Rounds with reads that no quorum acknowledged within ``timeout_ticks``."""
        old = [r for r in self.rounds if r.has_reads and tick - r.tick >= timeout_ticks]
        for r in old:
            self.rounds.remove(r)
        return old

    def all_reads(self) -> tuple[list[int], list[tuple[int, int]]]:
        """Every read not yet released, emptied out (the leader steps down)."""
        local = [c for r in self.rounds for c in r.local] + self.pending_local
        fwd = [f for r in self.rounds for f in r.forwarded] + self.pending_forwarded
        self.rounds.clear()
        self.pending_local, self.pending_forwarded = [], []
        return local, fwd


@dataclass(slots=True)
class FollowerReads:
    """A non-leader's reads: queued for the next forward, or forwarded and unanswered."""

    leader: int = -1
    """The leader the in-flight batches went to."""
    next_id: int = 0
    pending: list[int] = field(default_factory=list)
    inflight: dict[int, list[int]] = field(default_factory=dict)
    """Request id -> the read contexts it carries."""

    def take_all(self) -> list[int]:
        out = [c for batch in self.inflight.values() for c in batch] + self.pending
        self.pending = []
        self.inflight.clear()
        return out
