"""Read modes and the runtime side of reads (see docs/reads.md).

``await mgr.read(gid, query, mode=...)`` answers ``StateMachine.query(query)`` from this
node's state machine once that state is recent enough for the mode:

* ``"linearizable"`` (default): the read index (Raft thesis §6.4) -- the leader confirms its
  leadership with one heartbeat round that a quorum acknowledges (one round serves every
  read queued meanwhile), a follower asks the leader for that index; the state is queried
  once applied up to it.  Reflects every write that completed before the read began.
* ``"lease"``: like linearizable, but a leader whose lease holds answers without the round
  (needs ``RaftParams.lease_reads``; rests on bounded clock drift).  Elsewhere, or once the
  lease has run out, it is a linearizable read.
* ``"stale"``: this node's state as it is, at once: no guarantee of recency (it may be a
  deposed leader's or a lagging follower's), but monotonic on one node.

:class:`GroupReads` is one group's bookkeeping: reads waiting for their index, then for the
apply.  Everything runs in the group's task, which owns the core and the state machine.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Final, Literal

from nuraft_mesg.errors import BadRequest, Failed, RaftError, RaftTimeout
from nuraft_mesg.oneshot import Slot
from nuraft_mesg.raft.ready import Ready
from nuraft_mesg.raft.types import LogEntry, LogType
from nuraft_mesg.storage.interfaces import StateMachine

__all__ = [
    "READ_MODES",
    "GroupReads",
    "PendingRead",
    "ReadMode",
    "check_mode",
    "decode_client_read",
    "encode_client_read",
]

ReadMode = Literal["linearizable", "lease", "stale"]
READ_MODES: Final[tuple[ReadMode, ...]] = ("linearizable", "lease", "stale")


def check_mode(mode: str) -> ReadMode:
    for m in READ_MODES:
        if mode == m:
            return m
    raise BadRequest(f"read mode must be one of {', '.join(READ_MODES)}, not {mode!r}")


# -- the external client's read (MsgType.CLIENT_READ_REQUEST) ---------------------------------
def encode_client_read(mode: ReadMode, query: bytes) -> LogEntry:
    """The one entry of a client_read request: the mode's byte, then the query."""
    return LogEntry(0, LogType.CUSTOM, bytes([READ_MODES.index(mode)]) + bytes(query))


def decode_client_read(entries: tuple[LogEntry, ...]) -> tuple[ReadMode, bytes]:
    """Raises :class:`BadRequest` for anything but one CUSTOM entry with a known mode."""
    if len(entries) != 1 or entries[0].type != LogType.CUSTOM or not entries[0].buffer:
        raise BadRequest("a client read carries one CUSTOM entry: a mode byte, then the query")
    buf = entries[0].buffer
    if buf[0] >= len(READ_MODES):
        raise BadRequest(f"unknown read mode {buf[0]}")
    return READ_MODES[buf[0]], buf[1:]


# -- one group's reads ------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class PendingRead:
    """A linearizable or lease read: queued in the core, then waiting for the apply."""

    ctx: int
    query: bytes
    lease: bool
    slot: Slot[bytes] = field(default_factory=Slot)
    index: int = -1
    """The read index, once the core released it (-1 before)."""
    deadline: float = math.inf
    """When it fails with RaftTimeout if still unanswered (the group's clock: one timer for
    all reads rather than a cancel scope per read, as for writes)."""


class GroupReads:
    """The reads of one group in its runtime: contexts for the core, the apply wait, and
    the state machine's answer."""

    __slots__ = ("_expiries", "_next_ctx", "_pending", "_sm", "_waiting", "counts")

    @property
    def waiting(self) -> bool:
        """Released reads wait for the state machine to apply their index."""
        return bool(self._waiting)

    def __init__(self, state_machine: StateMachine) -> None:
        self._sm = state_machine
        self._next_ctx = 0
        self._pending: dict[int, PendingRead] = {}
        self._waiting: list[tuple[int, int]] = []
        """Heap of ``(index, ctx)``: released reads waiting for the state machine to apply."""
        self._expiries: list[tuple[float, int]] = []
        """Heap of ``(deadline, ctx)`` of the reads handed to the core."""
        self.counts: dict[str, int] = {"linearizable": 0, "lease": 0, "stale": 0, "failed": 0}
        """Reads answered per mode, and reads failed (for statistics)."""

    def new(self, query: bytes, *, lease: bool, deadline: float = math.inf) -> PendingRead:
        self._next_ctx += 1
        read = PendingRead(self._next_ctx, bytes(query), lease, deadline=deadline)
        self._pending[read.ctx] = read
        return read

    def started(self, read: PendingRead) -> None:
        """The group's task handed ``read`` to the core: watch its deadline."""
        if read.deadline != math.inf and read.ctx in self._pending:
            heapq.heappush(self._expiries, (read.deadline, read.ctx))

    def next_expiry(self) -> float:
        expiries = self._expiries
        while expiries and expiries[0][1] not in self._pending:
            heapq.heappop(expiries)
        return expiries[0][0] if expiries else math.inf

    def expire(self, now: float) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, ctx = heapq.heappop(expiries)
            read = self._pending.get(ctx)
            if read is not None:
                self.fail(read, RaftTimeout("read not answered by its deadline (no quorum "
                                            "confirmed the read index in time?)"))

    def forget(self, read: PendingRead) -> None:
        """The caller stopped waiting (deadline, cancellation): a later release is ignored."""
        self._pending.pop(read.ctx, None)

    def query_now(self, query: bytes) -> bytes:
        """A stale read: the state machine as it is."""
        answer = self._query(query)
        self.counts["stale"] += 1
        return answer

    def fail(self, read: PendingRead, error: RaftError) -> None:
        if self._pending.pop(read.ctx, None) is not None:
            self.counts["failed"] += 1
        read.slot.fail(error)

    def on_ready(self, rd: Ready, applied_index: int) -> None:
        """Take the core's verdicts on reads; serve those already applied."""
        pending = self._pending
        for state in rd.read_states:
            read = pending.get(state.ctx)
            if read is None:
                continue
            read.index = state.index
            if state.index <= applied_index:
                self._serve(pending.pop(state.ctx))
            else:
                heapq.heappush(self._waiting, (state.index, state.ctx))
        for failure in rd.read_failures:
            read = pending.get(failure.ctx)
            if read is not None:
                self.fail(read, failure.error)
        self.on_applied(applied_index)

    def on_applied(self, applied_index: int) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= applied_index:
            _, ctx = heapq.heappop(waiting)
            read = self._pending.pop(ctx, None)
            if read is not None:
                self._serve(read)

    def _serve(self, read: PendingRead) -> None:
        try:
            answer = self._query(read.query)
        except RaftError as exc:
            self.counts["failed"] += 1
            read.slot.fail(exc)
        else:
            self.counts["lease" if read.lease else "linearizable"] += 1
            read.slot.set(answer)

    def fail_all(self, error: RaftError) -> None:
        """The group stopped."""
        for read in list(self._pending.values()):
            self.fail(read, error)
        self._waiting.clear()
        self._expiries.clear()

    def _query(self, query: bytes) -> bytes:
        try:
            return self._sm.query(query)
        except RaftError:
            raise
        except Exception as exc:  # the application's bug: the group keeps running
            raise Failed(f"state machine query failed: {exc!r}") from exc
