"""Per-peer outbound queues: a dead or slow peer never holds up other peers or other groups.

Groups hand their outgoing Raft requests to :meth:`PeerSender.post`, which never blocks: each
peer has a bounded queue, and when it is full the message is dropped (and counted), as Raft
tolerates loss and retries on its own timers.  Each peer has ``concurrency`` worker tasks that
take requests from its queue and run :meth:`Transport.call` with the configured deadline; the
reply (or the :class:`~nuraft_mesg.transport.base.TransportError`) goes to the request's
``on_reply``.

Ordering: one group's requests to one peer go one at a time, in the order they were posted
(NuRaft keeps at most one request in flight per peer and group: its ``busy`` flag).  Concurrent
unary calls are not delivered in order: trio runs each batch of ready tasks in a random
direction, so both the client tasks starting the calls and the server tasks handling them
overtake one another (500 back-to-back posts of one group arrived with ~45% of neighbours
swapped).  Raft survives reordering, but overtaken AppendEntries are rejected and resent.
Different groups (up to ``concurrency``) are in flight to the same peer at once, taken
round-robin, so a slow group does not hold up the others; a group may also hold at most
``group_queue_size`` queued requests, so one stuck group cannot fill its peer's queue either.
The core's pipelining (``max_inflight_appends``) still works: its appends wait here, in order,
and leave one round trip apart.

Failed calls are logged throttled per (peer, gRPC status) with the shared
:class:`~nuraft_mesg.transport.throttle.LogThrottle` (the 1st, 2nd, 4th, 8th, ... failure in a
60 s window, as nuraft_mesg PR #78), so a dead peer does not flood the log.

Ownership: ``async with PeerSender(transport) as sender`` opens the nursery that holds every
worker.  Workers start on a peer's first post and then stay (idle workers cost a parked task
each).  Leaving the block cancels them: requests still queued or in flight are abandoned and
their ``on_reply`` is not called.  Posts after that return False.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Final, TypeAlias

import trio

from nuraft_mesg.transport.base import Status, Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.throttle import LogThrottle

__all__ = ["PeerSender", "PeerStatistics", "ReplyCallback", "SenderStatistics"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 1024
DEFAULT_GROUP_QUEUE_SIZE: Final = 64
DEFAULT_CONCURRENCY: Final = 8
DEFAULT_TIMEOUT: Final = 2.0
"""nuraft_mesg's ``raft_request_deadline_secs``."""

ReplyCallback: TypeAlias = Callable[[GroupEnvelope | TransportError], None]
"""Called in trio context with the reply or the error; must not block (e.g. ``send_nowait``)."""

_Item: TypeAlias = tuple[GroupEnvelope, ReplyCallback]


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """Counters for one peer since the sender started."""

    sent: int = 0
    """Calls answered by the peer (whatever the Raft outcome)."""
    failed: int = 0
    """Calls that ended with a TransportError."""
    dropped: int = 0
    """Posts refused because a queue was full (or the sender had stopped)."""
    queued: int = 0
    """Requests waiting now."""
    in_flight: int = 0
    """Calls running now."""


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


class _GroupQueue:
    """One group's requests to one peer.  ``scheduled``: in the peer's ready queue or in
    flight (so never twice in either)."""

    __slots__ = ("group_id", "items", "scheduled")

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.items: deque[_Item] = deque()
        self.scheduled = False


class _PeerQueue:
    """One peer: its groups with queued requests, and a ready queue of groups to serve.

    Invariant: every group in the ready queue has at least one queued request, so the ready
    queue never holds more than ``queued <= queue_size`` entries.
    """

    __slots__ = ("dropped", "failed", "groups", "in_flight", "queued", "ready", "sent")

    def __init__(self, size: int) -> None:
        self.ready = trio.open_memory_channel[_GroupQueue](size)
        self.groups: dict[str, _GroupQueue] = {}
        self.queued = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.in_flight = 0

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            sent=self.sent,
            failed=self.failed,
            dropped=self.dropped,
            queued=self.queued,
            in_flight=self.in_flight,
        )


class PeerSender:
    """Bounded per-peer outbound queues over a :class:`Transport` (see the module doc).

    Args:
        transport: what carries the calls.
        queue_size: requests queued per peer (beyond those in flight) before posts fail.
        group_queue_size: requests queued per peer and group before posts fail.
        concurrency: calls in flight per peer (each for a different group).
        timeout: deadline of one call, in seconds.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        group_queue_size: int = DEFAULT_GROUP_QUEUE_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if queue_size < 1 or group_queue_size < 1:
            raise ValueError("queue sizes must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.transport = transport
        self.queue_size = queue_size
        self.group_queue_size = group_queue_size
        self.concurrency = concurrency
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
            queue = self._queues[peer] = _PeerQueue(self.queue_size)
            for i in range(self.concurrency):
                nursery.start_soon(self._worker, peer, queue, name=f"PeerSender[{peer}]#{i}")
        group = queue.groups.get(request.group_id)
        if (
            self._closed
            or queue.queued >= self.queue_size
            or (group is not None and len(group.items) >= self.group_queue_size)
        ):
            queue.dropped += 1
            return False
        if group is None:
            group = queue.groups[request.group_id] = _GroupQueue(request.group_id)
        group.items.append((request, on_reply))
        queue.queued += 1
        if not group.scheduled:
            group.scheduled = True
            queue.ready[0].send_nowait(group)  # cannot block: see _PeerQueue's invariant
        return True

    def statistics(self) -> SenderStatistics:
        return SenderStatistics(
            MappingProxyType({peer: q.statistics() for peer, q in self._queues.items()})
        )

    async def _worker(self, peer: str, queue: _PeerQueue) -> None:
        call = self.transport.call
        timeout = self.timeout
        async for group in queue.ready[1]:
            request, on_reply = group.items.popleft()
            queue.queued -= 1
            result: GroupEnvelope | TransportError
            queue.in_flight += 1
            try:
                result = await call(peer, request, timeout=timeout)
            except TransportError as exc:
                result = exc
            except Exception as exc:  # a transport bug: report it as a failed call
                log.exception("transport.call to %s raised an unexpected error", peer)
                result = TransportError(Status.UNKNOWN, f"{type(exc).__name__}: {exc}")
            finally:
                queue.in_flight -= 1
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
            if group.items:
                queue.ready[0].send_nowait(group)  # its turn again, behind the others
            else:
                group.scheduled = False
                del queue.groups[group.group_id]
            try:
                on_reply(result)
            except Exception:
                log.exception("on_reply callback for a RaftStep to %s failed", peer)
