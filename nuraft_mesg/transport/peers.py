"""Per-peer outbound batching: every group's requests to one peer leave together.

Groups hand their outgoing Raft requests to :meth:`PeerSender.post`, which never blocks: the
request joins its peer's queue and the peer's *pump* task wakes.  When the pump runs (the next
scheduling round, by which time every group that had something to say in this loop turn has
posted it) it takes everything queued and hands it to :meth:`Transport.send_batch` as one
batch; the gRPC transport sends that batch as one frame on the peer's stream, so a thousand
groups heartbeating in the same turn cost one frame, not a thousand calls.  Replies come back
one by one through each request's ``on_reply``.

Order: the pump is the only sender to its peer and sends batches in post order, so one
group's requests reach the peer in the order they were posted (the stream keeps that order;
the unary fallback keeps it by sending a group's requests one at a time).

Bounds (admission control): a peer holds at most ``queue_size`` requests queued plus
``max_in_flight`` sent and unanswered.  Beyond that a post is refused (False, counted as
dropped), as Raft tolerates loss and retries on its own timers -- except *control* messages
(votes, pre-votes and entry-less appends, i.e. heartbeats and probes), which may use a further
``queue_size`` of reserve: under a flood of appends, elections and leader liveness still get
through, so overload costs throughput, not leadership.  While ``max_in_flight`` requests are
unanswered the pump waits for answers before sending more (back-pressure from a slow peer).

Failed requests are logged throttled per (peer, gRPC status) with the shared
:class:`~nuraft_mesg.transport.throttle.LogThrottle` (the 1st, 2nd, 4th, 8th, ... failure in a
60 s window, as nuraft_mesg PR #78), so a dead peer does not flood the log.

Ownership: ``async with PeerSender(transport) as sender`` opens the nursery that holds every
pump and whatever tasks the transport starts for a batch.  A pump starts on its peer's first
post and then stays (an idle pump is one parked task).  Leaving the block cancels them:
requests still queued or unanswered are abandoned and their ``on_reply`` is not called.
Posts after that return False.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Final, TypeAlias

import trio

from nuraft_mesg.raft.types import MsgType
from nuraft_mesg.transport.base import ReplyCallback, Status, Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.throttle import LogThrottle

__all__ = ["PeerSender", "PeerStatistics", "ReplyCallback", "SenderStatistics"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 16384
DEFAULT_MAX_IN_FLIGHT: Final = 16384
DEFAULT_MAX_BATCH: Final = 4096
DEFAULT_TIMEOUT: Final = 2.0
"""nuraft_mesg's ``raft_request_deadline_secs``."""

_VOTES: Final = frozenset({MsgType.PRE_VOTE_REQUEST, MsgType.REQUEST_VOTE_REQUEST})

_Item: TypeAlias = tuple[GroupEnvelope, ReplyCallback]


def is_control(request: GroupEnvelope) -> bool:
    """Votes and entry-less appends (heartbeats, probes): small, and what keeps leaders."""
    msg = request.message
    return msg.type in _VOTES or (
        msg.type == MsgType.APPEND_ENTRIES_REQUEST and not msg.entries
    )


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """Counters for one peer since the sender started."""

    sent: int = 0
    """Requests answered by the peer (whatever the Raft outcome)."""
    failed: int = 0
    """Requests that ended with a TransportError."""
    dropped: int = 0
    """Posts refused because the peer's bounds were reached (or the sender had stopped)."""
    queued: int = 0
    """Requests waiting for the pump now."""
    in_flight: int = 0
    """Requests sent and not answered yet."""
    batches: int = 0
    """Batches handed to the transport."""


@dataclass(frozen=True, slots=True)
class SenderStatistics:
    peers: Mapping[str, PeerStatistics]

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.peers.values())

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.peers.values())

    @property
    def dropped(self) -> int:
        return sum(p.dropped for p in self.peers.values())

    @property
    def batches(self) -> int:
        return sum(p.batches for p in self.peers.values())


class _PeerQueue:
    """One peer: queued requests, the pump's wake-up, and counters."""

    __slots__ = ("batches", "dropped", "failed", "in_flight", "items", "room", "sent", "wake")

    def __init__(self) -> None:
        self.items: deque[_Item] = deque()
        self.wake = trio.Event()
        self.room = trio.Event()
        """Set when an answer frees in-flight room (the pump waits on it when full)."""
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.in_flight = 0
        self.batches = 0

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            sent=self.sent,
            failed=self.failed,
            dropped=self.dropped,
            queued=len(self.items),
            in_flight=self.in_flight,
            batches=self.batches,
        )


class PeerSender:
    """Per-peer batching pumps over a :class:`Transport` (see the module doc).

    Args:
        transport: what carries the batches.
        queue_size: requests queued per peer before posts fail (control messages may use as
            many again).
        max_in_flight: requests sent to one peer and not yet answered before the pump waits.
        max_batch: most requests in one batch.
        timeout: deadline of one request, in seconds.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_batch: int = DEFAULT_MAX_BATCH,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if queue_size < 1 or max_in_flight < 1 or max_batch < 1:
            raise ValueError("queue_size, max_in_flight and max_batch must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.transport = transport
        self.queue_size = queue_size
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.timeout = timeout
        self._queues: dict[str, _PeerQueue] = {}
        self._nursery_manager: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._throttle = LogThrottle()

    async def __aenter__(self) -> PeerSender:
        if self._nursery_manager is not None or self._closed:
            raise RuntimeError("a PeerSender can be entered only once")
        manager = trio.open_nursery()
        self._nursery = await manager.__aenter__()
        self._nursery_manager = manager
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        manager = self._nursery_manager
        nursery = self._nursery
        assert manager is not None and nursery is not None
        self._nursery = None
        self._closed = True
        nursery.cancel_scope.cancel()
        try:
            return await manager.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and group.exceptions == (exc,):
                return False  # just the block's own exception: let it out unwrapped
            raise

    def post(self, peer: str, request: GroupEnvelope, on_reply: ReplyCallback) -> bool:
        """Queue ``request`` for ``peer`` without blocking; False if it was dropped."""
        queue = self._queues.get(peer)
        if queue is None:
            nursery = self._nursery
            if nursery is None:
                if not self._closed:
                    raise RuntimeError("PeerSender.post outside its `async with` block")
                return False
            queue = self._queues[peer] = _PeerQueue()
            nursery.start_soon(self._pump, peer, queue, nursery, name=f"PeerSender[{peer}]")
        limit = self.queue_size * 2 if is_control(request) else self.queue_size
        if self._closed or len(queue.items) >= limit:
            queue.dropped += 1
            return False
        queue.items.append((request, on_reply))
        queue.wake.set()
        return True

    def statistics(self) -> SenderStatistics:
        return SenderStatistics(
            MappingProxyType({peer: q.statistics() for peer, q in self._queues.items()})
        )

    async def _pump(self, peer: str, queue: _PeerQueue, nursery: trio.Nursery) -> None:
        send_batch = self.transport.send_batch
        while True:
            if not queue.items:
                queue.wake = trio.Event()
                await queue.wake.wait()
            while queue.in_flight >= self.max_in_flight:
                queue.room = trio.Event()
                await queue.room.wait()
            room = min(self.max_batch, self.max_in_flight - queue.in_flight)
            items = queue.items
            batch = [self._tracked(peer, queue, *items.popleft())
                     for _ in range(min(room, len(items)))]
            queue.in_flight += len(batch)
            queue.batches += 1
            try:
                await send_batch(peer, batch, timeout=self.timeout, nursery=nursery)
            except Exception as exc:  # a transport bug: fail the batch, keep the pump
                log.exception("send_batch to %s raised", peer)
                failure = TransportError(Status.UNKNOWN, f"{type(exc).__name__}: {exc}")
                for _, done in batch:
                    done(failure)

    def _tracked(self, peer: str, queue: _PeerQueue, request: GroupEnvelope,
                 on_reply: ReplyCallback) -> _Item:
        """``request`` with a callback that also keeps the counters and logs failures."""

        answered = False

        def done(result: GroupEnvelope | TransportError) -> None:
            nonlocal answered
            if answered:
                return  # a transport that answered twice: the first answer counts
            answered = True
            queue.in_flight -= 1
            queue.room.set()
            if isinstance(result, TransportError):
                queue.failed += 1
                count = self._throttle.hit((peer, result.status))
                if count:
                    log.warning(
                        "RaftStep %s to %s (group %s) failed: %s [failure %d to this peer "
                        "with %s in this %gs window]",
                        request.message.type.name, peer, request.group_id, result.message,
                        count, result.status.name, self._throttle.window,
                    )
            else:
                queue.sent += 1
            try:
                on_reply(result)
            except Exception:
                log.exception("on_reply callback for a RaftStep to %s failed", peer)

        return request, done
