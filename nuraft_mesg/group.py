"""The trio runtime of one Raft group: drives a :class:`~nuraft_mesg.raft.node.RaftNode`.

Theory of operation
-------------------
Each group is one task in its Manager's nursery, looping over a bounded inbox:

    wait for the next inbox item (the node's timer task, :mod:`nuraft_mesg.timers`, puts
    a tick there when the earliest of the group's deadlines passes: nothing polls, and no
    cancel scope is entered per wait)
    hand the item(s) / timer expiry to the core
    drain the core's Ready: send, persist, send-after-persist, apply, advance

Everything that touches the core happens in this one task, so the core needs no locks.
Callers in other tasks (the Manager's API, the RaftStep server handler, peer replies) talk to
it through the inbox and wait on small one-shot slots.

Persistence ordering is the core's: ``messages_after_persist`` (votes, acknowledgements,
answers to RaftStep requests) leave only after ``LogStore.write`` / ``save_state`` return.
A storage exception stops the group (never an acknowledgement of unstored data): it is logged,
``StateManager.system_exit`` is told, and every waiter gets :class:`~nuraft_mesg.errors.Failed`.

Snapshots (when ``snapshot_distance > 0`` and the state machine supports them) are data
movement only: the runtime creates one every ``snapshot_distance`` applied entries and tells
the core, reads the objects the core asks for, stages and installs what it receives, and
compacts the log store where the Ready says; the core decides everything else.

Quiet idle groups (``RaftParams.quiesce_after_ms``): an idle leader whose followers hold the
whole committed log marks one last heartbeat round *quiesce* and stops its heartbeat timer; a
follower that accepts it stops its election timer.  Anything else in the inbox wakes the
group.  Only timers change, so Raft's safety is untouched; a dead leader of a quiet group is
noticed by the Manager (node-level pings and ``peer_lost``), which calls :meth:`leader_lost`.
Heartbeat deadlines lie on a grid (multiples of the interval on trio's clock), so all leader
groups heartbeat in the same loop turn and their heartbeats leave to each peer as one batch.
docs/raft-core.md has the details.

Around this module, three mixins of RaftGroup: :mod:`nuraft_mesg.group_timers` (deadlines
and quiescing), :mod:`nuraft_mesg.group_snapshots` (taking, installing and compacting behind
snapshots) and :mod:`nuraft_mesg.group_queries` (the read-only views any task may call); and
:mod:`nuraft_mesg.group_inbox` (the inbox items and apply waiters),
:mod:`nuraft_mesg.oneshot` (the slots callers wait on) and :mod:`nuraft_mesg.group_stats`
(the rows and counters a group reports).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, overload

import trio

from nuraft_mesg.errors import (
    Cancelled,
    Failed,
    RaftError,
    RaftTimeout,
    StorageError,
    TermMismatch,
)
from nuraft_mesg.group_inbox import (
    TICK,
    ApplyWaiter,
    InboxCommand,
    InboxItem,
    InboxProposal,
    InboxReply,
    InboxRequest,
)
from nuraft_mesg.group_queries import GroupQueries
from nuraft_mesg.group_snapshots import GroupSnapshots
from nuraft_mesg.group_stats import GroupStatistics, PeerInfo, ReplicaConfig
from nuraft_mesg.group_timers import GroupTimers
from nuraft_mesg.oneshot import Callback, Slot
from nuraft_mesg.raft.node import NO_LEADER, Proposal, RaftNode, Role
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import (
    BecomeFollower,
    BecomeLeader,
    Event,
    JoinedCluster,
    NewConfig,
    Ready,
    RemovedFromCluster,
)
from nuraft_mesg.raft.types import (
    ClusterConfig,
    LogEntry,
    LogType,
    Message,
    MsgType,
)
from nuraft_mesg.reads import GroupReads, PendingRead, check_mode
from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.timers import Timers
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.peers import PeerSender

__all__ = ["Callback", "GroupStatistics", "PeerInfo", "RaftGroup", "ReplicaConfig", "Slot"]

T = TypeVar("T")

_CLIENT_TYPES = frozenset(
    {MsgType.CLIENT_REQUEST, MsgType.ADD_SERVER_REQUEST, MsgType.REMOVE_SERVER_REQUEST}
)
_VOTE_TYPES = frozenset({MsgType.PRE_VOTE_REQUEST, MsgType.REQUEST_VOTE_REQUEST})
_QUIET_READS = frozenset({MsgType.READ_INDEX_REQUEST, MsgType.READ_INDEX_RESPONSE})
"""Read traffic that does not wake a quiet group (docs/reads.md, "Quiet groups")."""
_MAX_BATCH = 256
"""Inbox items handled before one Ready is drained: proposals from many callers arriving in
the same loop turn share one storage write and one round of appends (group commit)."""


class RaftGroup(GroupTimers, GroupSnapshots, GroupQueries):
    """The runtime of one group on one node.  Built and owned by a Manager."""

    def __init__(
        self,
        *,
        group_id: str,
        group_type: str,
        params: RaftParams,
        state_mgr: StateManager,
        server_uuid: str,
        server_id: int,
        peers: PeerSender,
        logger: logging.Logger,
        inbox_size: int = 4096,
        rng: random.Random | None = None,
        on_change: Callable[[], None] | None = None,
        core_factory: Callable[..., RaftNode] | None = None,
        apply_timeout: float = math.inf,
        quiesce: bool = False,
        on_quiet: Callable[[RaftGroup, str, bool], None] | None = None,
        timers: Timers,
    ) -> None:
        """``apply_timeout``: seconds a :meth:`propose` may wait to be applied before its
        slot fails with :class:`~nuraft_mesg.errors.RaftTimeout`.

        ``quiesce``: idle groups may go quiet (the Manager passes its transport's
        ``supports_ping``).  ``on_quiet(group, leader_uuid, quiet)`` is called whenever the
        group goes quiet or wakes; ``leader_uuid`` is the leader a quiet follower relies on
        ("" on the leader itself)."""
        self.group_id = group_id
        self.group_type = group_type
        self.params = params
        self.state_mgr = state_mgr
        self.server_uuid = server_uuid
        self.server_id = server_id
        self._peers = peers
        self.log = logging.LoggerAdapter(logger, {"group": group_id})
        self.log_store = state_mgr.load_log_store()
        self.state_machine = state_mgr.get_state_machine()
        start = self.log_store.start_index()
        applied = self.state_machine.last_commit_index()
        if applied < start - 1:
            # The log was compacted behind a snapshot this state machine no longer holds (an
            # in-memory state machine over a durable log, after a restart): replaying the
            # remaining log would silently skip the compacted prefix.
            raise StorageError(
                f"group {group_id}: the log starts at {start} but the state machine has "
                f"applied only up to {applied}; snapshots need a state machine that keeps its "
                "state (or its last snapshot) across restarts, e.g. one that supports "
                "snapshots under the durable store (ManagerConfig.data_dir)"
            )
        config = state_mgr.load_config()
        # core_factory: RaftNode or anything called like it (a subclass, a wrapper that seeds
        # ``rng``); the public test harness plugs deliberately broken cores in here.
        self.core = (core_factory or RaftNode)(
            server_id,
            params,
            config=config,
            hard_state=state_mgr.read_state(),
            entries=self.log_store.entries(start, self.log_store.next_slot()),
            log_start_index=start,
            log_boundary_term=self.log_store.term_at(start - 1) if start > 1 else 0,
            applied_index=self.state_machine.last_commit_index(),
            snapshot=(self.state_machine.last_snapshot()
                      if self.state_machine.supports_snapshots else None),
            rng=rng,
        )
        self._endpoints: dict[int, str] = {}
        self._learn_endpoints(config)
        self._learn_endpoints(self.core.config)
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[InboxItem](inbox_size)
        self._election_deadline = math.inf
        self._heartbeat_deadline = math.inf
        self._heartbeat_interval = params.heartbeat_interval_ms / 1000
        self._pending_replies: deque[InboxRequest] = deque()
        self._pending_reads: dict[tuple[int, int], InboxRequest] = {}
        """Leader: read_index requests by (member, request id), answered by the core once
        their round confirms (or fails), usually a few Readies later."""
        self._apply_timeout = apply_timeout
        self._now = 0.0
        """trio's clock when the current batch of inbox items was taken (read once per batch)."""
        self._expiries: deque[InboxProposal] = deque()
        """Proposals with a deadline, oldest first (deadlines only grow)."""
        self._apply_waiters: dict[int, ApplyWaiter] = {}
        self._changed = trio.Event()
        self._on_change = on_change
        self._last_response: dict[int, float] = {}
        self.failed: BaseException | None = None
        self.stopped = False
        self._stopped_event = trio.Event()
        self.applied_index = self.core.applied
        """Last index handed to the state machine (the core's ``applied`` runs ahead of it
        while a Ready is being persisted)."""
        self._leader_changes = 0
        self._seen_leader = NO_LEADER
        """The leader last reported by a role event (NO_LEADER after a step-down): a leader
        change is a new known leader, as etcd's leader_changes_seen counts them."""
        self._received = 0
        self._sent = 0
        self._dropped = 0
        self._append_latency_us = 0
        self._append_requests = 0
        # -- quiescing (timers only; see _should_quiesce and docs/raft-core.md) ------------
        self._quiesce_after = params.quiesce_after_s if quiesce else None
        self._on_quiet = on_quiet
        self._rng = rng if rng is not None else random.Random(f"{server_uuid}/{group_id}")
        self.quiet = False
        self._quiet_key = ""
        self._active_at = 0.0
        """When the log last grew or a proposal arrived (set in run)."""
        self._seen_last_index = self.core.log.last_index
        self._hb_commit = -1
        """The commit index the last heartbeat round carried."""
        self._quiesce_round = False
        """The heartbeat round being sent is the last before going quiet."""
        self._woken = False
        """Something other than quiet traffic was handled in this turn of the loop."""
        self._go_quiet = False
        """A follower accepted its leader's quiesce heartbeat in this turn."""
        self._timers = timers
        self._hold_until = 0.0
        """No campaign of this node's own before this time (see :meth:`hold_election`)."""
        self._postponed = 0
        """Election timeouts postponed in a row because this process ran late."""
        self._timer_at = math.inf
        """The deadline the timer task will wake this group at (inf: none scheduled)."""
        self._reads = GroupReads(self.state_machine)
        self._leader_heard_at = -math.inf
        """When a follower last took an append from its leader (lease reads: see
        GroupTimers._elect_soon)."""

    # ==========================================================================================
    # Calls from other tasks
    # ==========================================================================================
    def _check_running(self) -> None:
        if self.failed is not None:
            raise Failed(f"group {self.group_id} stopped: {self.failed!r}")
        if self.stopped:
            raise Cancelled(f"group {self.group_id} is stopped")

    async def _submit(self, item: InboxItem) -> None:
        self._check_running()
        try:
            await self._inbox_send.send(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Cancelled(f"group {self.group_id} is stopped") from None

    async def handle_request(self, msg: Message, *, quiesce: bool = False) -> Message:
        """A RaftStep request for this group: returns the core's answer, sent only once
        whatever it promises is durable.  ``quiesce``: the envelope's quiesce hint."""
        slot: Slot[Message] = Slot()
        quiet_ok = quiesce and self._quiesce_after is not None
        await self._submit(InboxRequest(msg, slot, quiesce=quiet_ok))
        return await slot.wait()

    def handle_request_nowait(
        self,
        msg: Message,
        on_reply: Callable[[Message | RaftError], None],
        *,
        quiesce: bool = False,
    ) -> None:
        """:meth:`handle_request` without waiting: queue ``msg`` and call ``on_reply`` once,
        from the group's task, with the answer (or a RaftError when the group stops first).

        Raises:
            trio.WouldBlock: the inbox is full (nothing was queued).
            Cancelled, Failed: the group is stopped.
        """
        self._check_running()
        item = InboxRequest(msg, Callback(on_reply),
                        quiesce=quiesce and self._quiesce_after is not None)
        try:
            self._inbox_send.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Cancelled(f"group {self.group_id} is stopped") from None

    async def handle_client_request(
        self, msg: Message
    ) -> tuple[Message, Slot[list[bytes]] | None]:
        """:meth:`handle_request` for a client_request; when accepted, also a slot for its
        entries' apply results, watched from the moment of the answer (the caller may
        resume only after they were applied: a one-member group commits at once)."""
        slot: Slot[Message] = Slot()
        req = InboxRequest(msg, slot)
        await self._submit(req)
        reply = await slot.wait()
        return reply, req.applied

    def deliver_reply(self, reply: GroupEnvelope | Exception, peer: int) -> None:
        """A peer answered one of our requests (called by PeerSender; never blocks)."""
        if isinstance(reply, Exception):
            return  # Raft retries on its own (heartbeats, probes)
        msg = reply.message
        if msg.src != peer or msg.type.is_request:
            self.log.warning("ignoring a mismatched reply from server %d: %s", peer, msg.type.name)
            return
        try:
            self._inbox_send.send_nowait(InboxReply(msg))
        except trio.WouldBlock:
            self._dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def run_command(self, fn: Callable[[RaftNode], T]) -> T:
        """Run ``fn(core)`` inside the loop task (local requests: add_server, ...)."""
        slot: Slot[object] = Slot()
        await self._submit(InboxCommand(fn, slot))
        return await slot.wait()  # type: ignore[return-value]

    async def propose(self, data: Sequence[bytes]) -> InboxProposal:
        """Append ``data`` on the leader.  Returns at once (unless the inbox is full) with
        the proposal, whose ``applied`` slot completes with the state machine's results once
        the entries are applied here -- one wake-up per write on the hot path."""
        item = InboxProposal(list(data))
        self._check_running()
        try:
            self._inbox_send.send_nowait(item)
        except trio.WouldBlock:
            await self._submit(item)  # back-pressure: the group is behind
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Cancelled(f"group {self.group_id} is stopped") from None
        return item

    def propose_nowait(self, data: list[bytes],
                       on_done: Callable[[list[bytes] | RaftError], None]) -> InboxProposal:
        """:meth:`propose` for a pipelined writer: ``on_done`` is called once, from this
        group's task, with the results or the error -- no slot, no task waiting.

        Raises:
            trio.WouldBlock: the inbox is full (nothing was queued).
            Cancelled, Failed: the group is stopped.
        """
        self._check_running()
        item = InboxProposal(data, Callback(on_done))
        try:
            self._inbox_send.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise Cancelled(f"group {self.group_id} is stopped") from None
        return item

    @overload
    def watch_apply(self, prop: Proposal, *, slot: None = None) -> Slot[list[bytes]]: ...
    @overload
    def watch_apply(self, prop: Proposal, *,
                    slot: Slot[list[bytes]] | Callback[list[bytes]]
                    ) -> Slot[list[bytes]] | Callback[list[bytes]]: ...
    def watch_apply(self, prop: Proposal, *,
                    slot: Slot[list[bytes]] | Callback[list[bytes]] | None = None
                    ) -> Slot[list[bytes]] | Callback[list[bytes]]:
        """A slot that completes when ``prop``'s entries are applied here (with their
        results), or fails with TermMismatch if another leader's entries replaced them.

        Entries applied before the watch began have no results left to report: the slot
        fails (with TermMismatch if they were replaced, else Failed), never with empty
        placeholders.
        """
        w = ApplyWaiter(prop.term, prop.first_index, prop.last_index,
                         slot=slot if slot is not None else Slot())
        if self.stopped:  # _fail_everyone already ran: nobody would complete this waiter
            w.slot.fail(Failed(f"group stopped: {self.failed!r}") if self.failed is not None
                        else Cancelled("group stopped"))
            return w.slot
        if self.applied_index >= prop.first_index:
            term = self.core.log.term_at(prop.last_index)
            if term is not None and term != prop.term:
                w.slot.fail(TermMismatch("entries were replaced by another leader"))
            else:
                w.slot.fail(Failed(f"entries {prop.first_index}..{prop.last_index} were "
                                   "applied before their results were watched"))
            return w.slot
        for index in range(prop.first_index, prop.last_index + 1):
            self._apply_waiters[index] = w
        return w.slot

    async def read(self, query: bytes, *, mode: str = "linearizable",
                   timeout: float = math.inf,  # noqa: ASYNC109 - one deadline per read
                   ) -> bytes:
        """The state machine's answer to ``query`` once this node's state is recent enough
        for ``mode`` (see :mod:`nuraft_mesg.reads`).  A read does not wake a quiet group.

        Raises:
            BadRequest (unknown mode; lease reads off; the state machine's refusal, e.g.
            QueryNotSupported), NotLeader (no leader known, or the leadership changed while
            reading), RaftTimeout (no answer within ``timeout``: a node cut off from the
            quorum never answers a linearizable read), Cancelled (removed; group stopped).
        """
        checked = check_mode(mode)
        self._check_running()
        if checked == "stale":
            await trio.lowlevel.checkpoint()
            return self._reads.query_now(query)
        read = self._reads.new(query, lease=checked == "lease",
                               deadline=trio.current_time() + timeout)
        try:
            try:
                self._inbox_send.send_nowait(read)
            except trio.WouldBlock:
                await self._submit(read)  # back-pressure: the group is behind
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise Cancelled(f"group {self.group_id} is stopped") from None
            return await read.slot.wait()
        finally:
            self._reads.forget(read)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checked on every state change (bound it with
        the caller's cancel scope).

        Raises:
            Cancelled, Failed: the group stopped first.
        """
        while not predicate():
            self._check_running()
            await self._changed.wait()

    # ==========================================================================================
    # The loop
    # ==========================================================================================
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self._active_at = trio.current_time()
        try:
            await self._process_ready()
            while True:
                self._arm_timer()
                item = await self._inbox_recv.receive()
                self._now = trio.current_time()
                self._handle(item)
                for _ in range(_MAX_BATCH):
                    try:
                        self._handle(self._inbox_recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                now = trio.current_time()
                if now >= self._election_deadline:
                    self._election_expired(now)
                if now >= self._heartbeat_deadline:
                    self._heartbeat_deadline = self._next_heartbeat(now)
                    self._quiesce_round = self._should_quiesce(now)
                    self._hb_commit = self.core.commit
                    self.core.heartbeat_timeout(now)
                self._expire(now)
                await self._process_ready()
                self._settle_quiet()
        except Exception as exc:
            self.failed = exc
            self.log.error("group stopped by an error: %r", exc, exc_info=True)
            self.resign()
            try:
                self.state_mgr.system_exit(exc)
            except Exception:
                self.log.exception("system_exit hook failed")
        finally:
            self.stopped = True
            self._set_quiet(False)
            self._inbox_send.close()
            self._fail_everyone(self.failed)
            self._notify()
            self._stopped_event.set()

    def _next_expiry(self) -> float:
        expiries = self._expiries
        while expiries and expiries[0].applied.done:
            expiries.popleft()
        writes = expiries[0].deadline if expiries else math.inf
        return min(writes, self._reads.next_expiry())

    def _expire(self, now: float) -> None:
        expiries = self._expiries
        while expiries and (expiries[0].applied.done or expiries[0].deadline <= now):
            item = expiries.popleft()
            if not item.applied.done:
                prop = item.prop
                where = f"entries {prop.first_index}..{prop.last_index}" if prop else "entries"
                item.applied.fail(RaftTimeout(
                    f"{where} not applied within {self._apply_timeout:g}s (they may still "
                    "commit)"))
        self._reads.expire(now)

    def resign(self) -> None:
        """This group stops for good while the node stays up (``leave_group``, an error): a
        leader hands over to its most caught-up voter (:meth:`RaftNode.resignation`), so
        that its followers, quiet ones included, elect a new leader at once."""
        try:
            takeover = self.core.resignation()
            if takeover is not None:
                self.log.info("stopping as leader: server %d takes over", takeover.dest)
                self._send_request(takeover)
        except Exception:  # best effort: the election timeouts remain
            self.log.exception("resignation failed")

    async def wait_stopped(self) -> None:
        await self._stopped_event.wait()

    def record_append_latency(self, seconds: float) -> None:
        self._append_requests += 1
        self._append_latency_us += int(seconds * 1e6)

    def _fail_everyone(self, error: BaseException | None) -> None:
        exc: RaftError = (
            Failed(f"group stopped: {error!r}") if error is not None else Cancelled("group stopped")
        )
        while self._pending_replies:
            self._pending_replies.popleft().reply.fail(exc)
        for req in self._pending_reads.values():
            req.reply.fail(exc)
        self._pending_reads.clear()
        for w in set(self._apply_waiters.values()):
            w.slot.fail(exc)
        self._apply_waiters.clear()
        self._reads.fail_all(exc)
        while True:
            try:
                item = self._inbox_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, InboxRequest):
                item.reply.fail(exc)
            elif isinstance(item, InboxCommand):
                item.result.fail(exc)
            elif isinstance(item, InboxProposal):
                item.applied.fail(exc)
            elif isinstance(item, PendingRead):
                self._reads.fail(item, exc)

    def _handle(self, item: InboxItem) -> None:
        core = self.core
        if item is TICK:
            self._timer_at = math.inf  # it fired; the loop checks what is due
        elif isinstance(item, InboxReply):
            # Replies are not counted: "received" is nuraft_mesg's group_steps (requests).
            m = item.message
            if not ((m.type == MsgType.APPEND_ENTRIES_RESPONSE and m.accepted
                    and m.term == core.term and m.next_index > core.log.last_index)
                    or m.type in _QUIET_READS):
                self._stir()  # anything but an acknowledgement of the whole log wakes us
            self._last_response[m.src] = self._now
            core.step(m)
        elif isinstance(item, InboxRequest):
            m = item.message
            if not item.quiesce and m.type not in _QUIET_READS:
                # (A quiesce heartbeat is judged by its answer, in _answer.)
                if (self.quiet and m.type in _VOTE_TYPES and m.src == core.leader_id
                        and core.role == Role.FOLLOWER):
                    # The leader we rest on campaigns: it no longer leads (it restarted).
                    self._elect_soon()
                self._stir()
            self._received += 1
            if m.type != MsgType.READ_INDEX_REQUEST:
                self._pending_replies.append(item)
            elif (m.src, m.read_id) in self._pending_reads:
                # A duplicate of a request still queued: the first one's answer answers it.
                item.reply.fail(Cancelled("duplicate read_index request"))
                return
            else:
                self._pending_reads[(m.src, m.read_id)] = item  # answered when its round is
            core.step(m)
            if m.type == MsgType.APPEND_ENTRIES_REQUEST and core.leader_id == m.src:
                self._leader_heard_at = self._now
        elif isinstance(item, PendingRead):
            # Not a wake-up: a quiet leader's round goes out as quiesce heartbeats.
            try:
                core.read_index(item.ctx, lease=item.lease, now=self._now)
            except RaftError as exc:
                self._reads.fail(item, exc)
            else:
                self._reads.started(item)
        elif isinstance(item, InboxProposal):
            self._stir()
            try:
                prop = core.propose(item.data)
            except RaftError as exc:
                item.applied.fail(exc)
            else:
                item.prop = prop
                self.watch_apply(prop, slot=item.applied)
                if self._apply_timeout != math.inf and not item.applied.done:
                    item.deadline = self._now + self._apply_timeout
                    self._expiries.append(item)
        elif isinstance(item, InboxCommand):
            self._stir()
            try:
                item.result.set(item.fn(core))
            except RaftError as exc:
                item.result.fail(exc)

    async def _process_ready(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            self._dispatch(rd.messages)
            # Before anything is applied: a new snapshot would replace the one being read.
            chunks = [self._read_snapshot_chunk(r) for r in rd.snapshot_reads]
            await self._persist(rd)
            self._dispatch(rd.messages_after_persist)
            self._apply(rd)
            if rd.read_states or rd.read_failures or self._reads.waiting:
                self._reads.on_ready(rd, self.applied_index)
            snapshot = self._maybe_create_snapshot() if rd.committed else None
            self._handle_events(rd.events)
            if (rd.committed or rd.snapshot_to_install is not None) and not rd.events:
                self._notify()
            self._apply_timers(rd)
            core.advance(rd)
            for r, data, is_last in chunks:
                core.send_snapshot_chunk(r.peer, r.meta, r.obj_id, data, is_last)
            if snapshot is not None:
                core.snapshot_taken(snapshot)
        # Every request stepped so far has been answered in the Readies above.
        while self._pending_replies:
            req = self._pending_replies.popleft()
            req.reply.fail(Cancelled("request was not answered"))

    async def _persist(self, rd: Ready) -> None:
        # Snapshot work first (GroupSnapshots), before the entries after it are written and
        # before any answer leaves.
        if rd.snapshot_chunks or rd.snapshot_to_install is not None or rd.compact_to:
            await self._persist_snapshots(rd)
        writes: list[Callable[[], Awaitable[None]]] = []
        if rd.truncate_from or rd.entries:
            writes.append(functools.partial(self.log_store.write, rd.first_index, rd.entries,
                                            truncate_from=rd.truncate_from))
        if rd.hard_state is not None:
            writes.append(functools.partial(self.state_mgr.save_state, rd.hard_state))
        if rd.config_to_save is not None:
            writes.append(functools.partial(self.state_mgr.save_config, rd.config_to_save))
        if len(writes) == 1 or not self.log_store.group_commit:
            for write in writes:
                await write()
        elif writes:
            # Issued together so that a group-committing store (SQLite) makes them durable
            # in one transaction and one fsync; all are durable before any answer leaves.
            try:
                async with trio.open_nursery() as nursery:
                    for write in writes:
                        nursery.start_soon(write)
            except ExceptionGroup as group:
                raise group.exceptions[0] from group  # the storage error itself, unwrapped

    def _dispatch(self, messages: list[Message]) -> None:
        for m in messages:
            if m.type.is_request:
                self._send_request(m)
            else:
                self._answer(m)

    def _send_request(self, m: Message) -> None:
        peer_uuid = self._endpoints.get(m.dest, "")
        if not peer_uuid:
            self.log.warning("no endpoint for server %d; dropping %s", m.dest, m.type.name)
            self._dropped += 1
            return
        # A quiet leader's heartbeats are read rounds: marked quiesce, so they wake nobody.
        env = GroupEnvelope(self.group_id, self.group_type, peer_uuid, m,
                            quiesce=(self._quiesce_round or self.quiet) and not m.entries
                            and m.type == MsgType.APPEND_ENTRIES_REQUEST)
        dest = m.dest

        def on_reply(reply: GroupEnvelope | Exception) -> None:
            self.deliver_reply(reply, dest)

        if self._peers.post(peer_uuid, env, on_reply):
            self._sent += 1
        else:
            self._dropped += 1

    def _answer(self, m: Message) -> None:
        if m.type == MsgType.READ_INDEX_RESPONSE:
            pending = self._pending_reads.pop((m.dest, m.read_id), None)
            if pending is not None:
                pending.reply.set(m)
            return
        for req in self._pending_replies:
            r = req.message
            if r.type.response_type == m.type and (m.dest == r.src or r.type in _CLIENT_TYPES):
                self._pending_replies.remove(req)
                if r.type == MsgType.CLIENT_REQUEST and m.accepted and r.entries:
                    last = m.next_index - 1
                    req.applied = self.watch_apply(
                        Proposal(m.term, last - len(r.entries) + 1, last))
                if req.quiesce:
                    self._quiesce_answered(r, m)
                req.reply.set(m)
                return
        self.log.debug("unmatched response %s to %d", m.type.name, m.dest)

    def _apply(self, rd: Ready) -> None:
        for ce in rd.committed:
            entry: LogEntry = ce.entry
            result = b""
            if entry.type == LogType.APP:
                result = self.state_machine.commit(ce.index, entry.buffer)
            elif entry.type == LogType.CONFIG:
                self.state_machine.commit_config(ce.index, ClusterConfig.decode(entry.buffer))
            self.applied_index = ce.index
            w = self._apply_waiters.pop(ce.index, None)
            if w is None:
                continue
            if entry.term != w.term:
                w.slot.fail(TermMismatch(f"entry {ce.index} was replaced by another leader"))
                for i in range(ce.index + 1, w.last + 1):
                    self._apply_waiters.pop(i, None)
                continue
            w.results.append(result)
            if ce.index == w.last:
                w.slot.set(w.results)

    def _handle_events(self, events: list[Event]) -> None:
        if not events:
            return
        for ev in events:
            if isinstance(ev, BecomeLeader | BecomeFollower):
                leader = self.server_id if isinstance(ev, BecomeLeader) else ev.leader_id
                if leader not in (NO_LEADER, self._seen_leader):
                    self._leader_changes += 1
                self._seen_leader = leader
                self.log.info("%s", ev)
            elif isinstance(ev, NewConfig):
                self._learn_endpoints(ev.config)
                self.log.info("config %s: %s", "committed" if ev.committed else "appended",
                              [s.endpoint for s in ev.config.servers])
            elif isinstance(ev, JoinedCluster):
                self._learn_endpoints(self.core.config)
                self.log.info("joined the group, invited by server %d", ev.leader_id)
            elif isinstance(ev, RemovedFromCluster):
                self.log.info("removed from the group")
                self._call_hook(self.state_mgr.leave)
            self._call_hook(lambda ev=ev: self.state_mgr.raft_event(ev))  # type: ignore[misc]
        self._notify()

    def _call_hook(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            self.log.exception("state manager hook failed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self._on_change is not None:
            self._on_change()

    def _learn_endpoints(self, config: ClusterConfig) -> None:
        for s in config.servers:
            if s.endpoint:
                self._endpoints[s.id] = s.endpoint

    def learn_endpoint(self, server_id: int, endpoint: str) -> None:
        """Record a peer's uuid before it is in any config (a server being added)."""
        self._endpoints[server_id] = endpoint

    def _set_quiet(self, quiet: bool, leader: str = "") -> None:
        if quiet == self.quiet:
            return
        self.quiet = quiet
        if quiet:
            self._quiet_key = leader
        else:
            leader, self._quiet_key = self._quiet_key, ""
        self.log.debug("%s", "quiet" if quiet else "awake")
        if self._on_quiet is not None:
            try:
                self._on_quiet(self, leader, quiet)
            except Exception:
                self.log.exception("on_quiet hook failed")
