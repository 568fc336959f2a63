"""The timers of one group: election and heartbeat deadlines, the grid heartbeats lie on,
and quiescing (an idle group stops them; see docs/raft-core.md, "Quiet idle groups").

A mixin of :class:`~nuraft_mesg.group.RaftGroup`, separate because it is the one part of the
runtime that only moves deadlines: nothing here touches the log, storage or replies, so
Raft's safety does not depend on it.  Everything runs in (or is safe from outside) the
group's task, like the rest of the group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from typing import TYPE_CHECKING

import trio

from nuraft_mesg.group_inbox import TICK, InboxItem
from nuraft_mesg.raft.node import NO_LEADER, RaftNode, ReplState, Role
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import Ready, TimerCommand
from nuraft_mesg.raft.types import Message
from nuraft_mesg.timers import Timers

__all__ = ["GroupTimers"]

_MAX_POSTPONED = 3
"""Election timeouts a follower postpones in a row while its own process runs late."""


class GroupTimers:
    """Deadlines and quiescing of a RaftGroup (state initialised by its ``__init__``)."""

    core: RaftNode
    params: RaftParams
    log: logging.LoggerAdapter[logging.Logger]
    stopped: bool
    applied_index: int
    quiet: bool
    _inbox_send: trio.MemorySendChannel[InboxItem]
    _timers: Timers
    _rng: random.Random
    _election_deadline: float
    _heartbeat_deadline: float
    _heartbeat_interval: float
    _quiesce_after: float | None
    _active_at: float
    _seen_last_index: int
    _hb_commit: int
    _quiesce_round: bool
    _woken: bool
    _go_quiet: bool
    _hold_until: float
    _postponed: int
    _timer_at: float
    _leader_heard_at: float

    if TYPE_CHECKING:  # defined by RaftGroup
        @property
        def leader_id(self) -> str: ...
        def _next_expiry(self) -> float: ...
        def _set_quiet(self, quiet: bool, leader: str = "") -> None: ...

    # -- quiescing (only timers change: see docs/raft-core.md, "Quiet idle groups") ---------
    def _should_quiesce(self, now: float) -> bool:
        """At a heartbeat tick: whether this leader's round is its last before going quiet.
        The group has been idle for ``quiesce_after``, every follower holds the whole log
        and a heartbeat already told them the commit index, and nothing is in flight."""
        after = self._quiesce_after
        core = self.core
        if (after is None or self.quiet or self._woken or not core.is_leader
                or now - self._active_at < after or self._hb_commit != core.commit):
            return False
        last = core.log.last_index
        if (core.commit != last or self.applied_index != last or core.config_changing
                or core.joining_server is not None or core.transferring_leadership):
            return False
        return all(pr.match == last and pr.state == ReplState.REPLICATE and not pr.inflight
                   and not pr.joining for pr in core.progress.values())

    def _quiesce_answered(self, req: Message, reply: Message) -> None:
        """A quiesce heartbeat was answered: go quiet if it came from our leader and we
        accepted it; else it wakes us like any other request."""
        core = self.core
        if (reply.accepted and not req.entries and core.role == Role.FOLLOWER
                and core.leader_id == req.src and core.term == req.term):
            self._go_quiet = True
        else:
            self._stir()

    def _settle_quiet(self) -> None:
        """End of a loop turn: go quiet if this turn's traffic says so, note activity."""
        core = self.core
        if not self._woken:
            if self._go_quiet and core.role == Role.FOLLOWER and self.leader_id:
                self._election_deadline = math.inf
                self._set_quiet(True, self.leader_id)
            elif self._quiesce_round and core.is_leader:
                self._heartbeat_deadline = math.inf
                self._set_quiet(True, "")
        self._woken = self._go_quiet = self._quiesce_round = False
        last = core.log.last_index
        if last != self._seen_last_index:
            self._seen_last_index = last
            self._active_at = trio.current_time()

    def _stir(self) -> None:
        """Traffic other than quiet heartbeats (and their acknowledgements) arrived."""
        self._woken = True
        if self.quiet:
            self._wake()

    def _wake(self) -> None:
        """Leave the quiet state: a leader heartbeats at once (which wakes its followers),
        a follower re-arms a randomized election timeout."""
        self._set_quiet(False)
        now = trio.current_time()
        if self.core.is_leader:
            self._heartbeat_deadline = now
        elif self._election_deadline == math.inf:
            low, high = self.params.election_timeout_ms
            self._election_deadline = now + self._rng.uniform(low, high) / 1000
        self._retime()

    def _elect_soon(self) -> None:
        """Campaign within half the lower election timeout (the leader looks dead)."""
        self._postponed = _MAX_POSTPONED  # a dead leader's node is not our own lateness
        self._set_quiet(False)
        half_low = self.params.election_timeout_ms[0] / 2000
        soon = trio.current_time() + self._rng.uniform(0, half_low)
        if self.params.lease_reads:
            # Leader leases rest on followers not campaigning within the lower election
            # timeout of the last heartbeat they took (docs/reads.md).
            soon = max(soon, self._leader_heard_at + 2 * half_low)
        self._election_deadline = min(self._election_deadline, soon)
        self._retime()

    def leader_lost(self, peer: str) -> bool:
        """The node ``peer`` looks dead (its connection broke and a ping failed, or pings
        failed for a while): if it leads this group and we follow, campaign soon (within
        half the lower election timeout), quiet or not.  Safe from any task.  True if it
        did."""
        core = self.core
        if (self.stopped or core.role != Role.FOLLOWER or core.leader_id == NO_LEADER
                or self.leader_id != peer):
            return False
        self._elect_soon()
        return True


    def hold_election(self, seconds: float) -> None:
        """Do not campaign on this node's own election timer for ``seconds``: another member
        was designated to campaign first (``Manager.create_group(members=...)``), and with
        thousands of new groups, members campaigning for groups their peers do not host yet
        would flood the network with refused pre-votes.  Timers only; an early election for
        a dead leader's node (``leader_lost``) is not held back."""
        self._hold_until = trio.current_time() + seconds
        if self._election_deadline != math.inf:
            self._election_deadline = max(self._election_deadline, self._hold_until)
            self._retime()

    def _election_expired(self, now: float) -> None:
        """The election timer fired.  If this process's own event loop is running late (by
        more than a heartbeat interval), the leader's heartbeats are probably queued here
        rather than missing: wait out twice the delay, at most ``_MAX_POSTPONED`` times in a
        row, before campaigning.  Timers only: safety does not depend on it; a dead leader
        is still replaced, a little later, and the transport's ``peer_lost`` is not
        postponed."""
        lag = self._timers.lag(now)
        if lag > self._heartbeat_interval and self._postponed < _MAX_POSTPONED:
            self._postponed += 1
            self._election_deadline = now + 2 * lag
            return
        self._postponed = 0
        self._election_deadline = math.inf
        self.core.election_timeout()

    def _retime(self) -> None:
        """A timer moved from outside the loop's wait (another task, or a wake)."""
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Make sure the node's timer task wakes this group by its next deadline.  A later
        deadline keeps the earlier entry (it fires a tick that finds nothing due); an
        earlier one, or any once the scheduled one is due, adds an entry."""
        deadline = min(self._election_deadline, self._heartbeat_deadline, self._next_expiry())
        if deadline < self._timer_at or self._timer_at <= trio.current_time():
            self._timer_at = deadline
            self._timers.schedule(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """Called by the timer task: put a tick in the inbox (a full inbox means the loop is
        busy and checks its deadlines after the batch anyway)."""
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError,
                                 trio.BrokenResourceError):
            self._inbox_send.send_nowait(TICK)

    def _next_heartbeat(self, now: float) -> float:
        """The next heartbeat deadline: the next multiple of the interval on trio's clock
        (at least half an interval away), so that every leader group with this interval
        ticks in the same loop turn and their heartbeats leave to each peer as one batch
        (coalesced heartbeats)."""
        interval = self._heartbeat_interval
        nxt = (math.floor(now / interval) + 1) * interval
        if nxt - now < interval / 2:
            nxt += interval
        return nxt

    # -- timers ------------------------------------------------------------------------------
    def _apply_timers(self, rd: Ready) -> None:
        if rd.election_timer is not None:
            self._apply_timer((rd.election_timer, None))
        if rd.heartbeat_timer is not None:
            self._apply_timer((None, rd.heartbeat_timer))

    def _apply_timer(self, timers: tuple[TimerCommand | None, TimerCommand | None]) -> None:
        election, heartbeat = timers
        now = trio.current_time()
        if election is not None:
            self._election_deadline = (
                math.inf if election.stop
                else max(now + election.timeout_ms / 1000, self._hold_until)
            )
        if heartbeat is not None:
            if heartbeat.stop:
                self._heartbeat_deadline = math.inf
            else:
                self._heartbeat_interval = heartbeat.timeout_ms / 1000
                self._heartbeat_deadline = now  # heartbeat at once, then every interval

