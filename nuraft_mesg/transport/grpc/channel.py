"""One peer's connection, client side (:class:`_Channel`), and its RaftStream
(:class:`_Link`): the link's task, with its reader of answer frames and its deadline sweeper.

The channel's holder task (:mod:`~nuraft_mesg.transport.grpc.client`) owns the nursery the
link's task runs in; a link never outlives its channel (docs/transport.md, "Who owns which
task").
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Final

import trio
from purerpc.grpclib.events import MessageReceived, ResponseEnded

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport.base import ReplyCallback, Status, TransportError
from nuraft_mesg.transport.grpc.protocol import _MessageRejected, _Socket, _status, _Stream
from nuraft_mesg.transport.stream import ClientLink, deliver

log = logging.getLogger(__package__)  # one logger for the whole gRPC transport

_STREAM_CLOSE_GRACE: Final = 5.0
"""Seconds a RaftStream we half-closed (channel retired, nothing pending) may take to be
ended by the peer before it is reset."""


class _StreamUnsupported(Exception):
    """The peer answered RaftStream with UNIMPLEMENTED."""


class _Channel:
    """The connection to one peer, held open by a holder task (its socket's ``async with``)."""

    def __init__(self, peer: str, host: str, port: int) -> None:
        self.peer = peer
        self.host = host
        self.port = port
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self.socket: _Socket | None = None
        self.nursery: trio.Nursery | None = None
        """The holder's nursery: the RaftStream link's task runs in it."""
        self.link: _Link | None = None
        self.link_lock = trio.Lock()
        self.stream_unsupported = False
        """The peer answered RaftStream with UNIMPLEMENTED: unary RaftSteps on this channel."""
        self.retired = False
        self.in_flight = 0
        """Unary calls in flight, plus one while a RaftStream link is open."""

    @property
    def usable(self) -> bool:
        socket = self.socket
        return not self.retired and socket is not None and socket.alive and not socket.going_away

    def retire(self, why: str, level: int = logging.INFO) -> None:
        """Take no new calls; close once the calls in flight (and the requests pending on
        the RaftStream) have finished."""
        if not self.retired:
            log.log(level, "retiring channel to %s at %s: %s", self.peer, self.authority, why)
            self.retired = True
        if self.link is not None:
            self.link.wake()  # it half-closes its stream once nothing is pending
        if self.in_flight == 0:
            self.scope.cancel()


class _Link:
    """The RaftStream of one channel, client side: the stream, its pending requests
    (:class:`~nuraft_mesg.transport.stream.ClientLink`) and its task (:meth:`run`, in the
    channel's nursery: a reader of answer frames and a sweeper of deadlines)."""

    def __init__(self, channel: _Channel, stream: _Stream, sender: str, max_send: int) -> None:
        self.channel = channel
        self.stream = stream
        self.core = ClientLink(channel.peer, sender, max_send)
        self.send_lock = trio.StrictFIFOLock()
        self.scope = trio.CancelScope()
        self.sweep_scope = trio.CancelScope()
        self.woken = False
        self.half_closed = False
        self.close_by = math.inf
        self.done = False

    @property
    def usable(self) -> bool:
        return (
            not self.done and not self.half_closed and self.core.failure is None
            and self.channel.usable
        )

    def wake(self) -> None:
        """Make the sweeper look again (the channel was retired, or a request finished)."""
        self.woken = True
        self.sweep_scope.cancel()

    def fail(self, error: TransportError) -> None:
        """End the link now: every pending request fails with ``error``."""
        self.core.fail_all(error)
        self.scope.cancel()

    async def send(
        self,
        requests: Sequence[tuple[bytes, bool, ReplyCallback]],
        deadline: float,
        timeout: float,  # noqa: ASYNC109 - each request's deadline
    ) -> None:
        """Register ``requests`` and write them as frames, in order.  From here on every
        callback is called exactly once, whatever happens (a cancelled or failed write ends
        the whole link: its frame may be half-written)."""
        core = self.core
        if core.failure is not None or self.done:
            error = core.failure or TransportError(Status.UNAVAILABLE, "RaftStream closed")
            for _, _, callback in requests:
                deliver(callback, error)
            return
        frames, seqs = core.prepare(requests, deadline, timeout)
        if not frames:
            return
        if deadline < self.sweep_scope.deadline:
            self.sweep_scope.deadline = deadline
        lock = self.send_lock
        try:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
        except BaseException:  # cancelled before anything of ours was written
            core.fail(seqs, self._interrupted(deadline))
            raise
        try:
            for frame in frames:
                if core.failed:
                    return  # the link failed meanwhile (our requests got its error)
                await self.stream.send_bytes(frame)
        except TransportError as exc:  # reset, or connection lost
            self.fail(exc)
        except Exception as exc:  # h2 state errors and the like
            self.fail(TransportError(Status.UNAVAILABLE, f"RaftStream write failed: {exc!r}"))
        except BaseException:  # cancelled (our deadline, or the caller's) mid-write
            self.fail(self._interrupted(deadline))
            raise
        finally:
            lock.release()

    def _interrupted(self, deadline: float) -> TransportError:
        if trio.current_time() >= deadline:
            return TransportError(
                Status.DEADLINE_EXCEEDED, f"RaftStream to {self.channel.peer}: not sent in time"
            )
        return TransportError(Status.CANCELLED, f"RaftStream to {self.channel.peer}: cancelled")

    async def run(self, peer_lost: Callable[[str], None]) -> None:
        """The link's task (in the channel's nursery): reads answers, sweeps deadlines; when
        either ends the link (or the channel closes), every pending request fails.
        ``peer_lost`` hears of an abrupt end."""
        channel = self.channel
        stream = self.stream
        failure: TransportError | None = None
        abrupt = False
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sweep, peer_lost)
                    failure, abrupt = await self._read()
                    nursery.cancel_scope.cancel()
        finally:
            self.done = True
            if channel.link is self:
                channel.link = None
            error = failure or self.core.failure or stream.failure or TransportError(
                Status.UNAVAILABLE, f"RaftStream to {channel.peer} closed"
            )
            self.core.fail_all(error)
            grpc_socket = channel.socket
            if grpc_socket is not None:
                if stream.remote_ended and not self.half_closed and grpc_socket.alive:
                    with contextlib.suppress(Exception):  # end our side too
                        grpc_socket._grpc_connection.end_request(stream.stream_id)
                grpc_socket.discard(stream, reset=not stream.remote_ended)
            channel.in_flight -= 1
            if channel.retired and channel.in_flight == 0:
                channel.scope.cancel()
            if abrupt:
                peer_lost(channel.peer)

    async def _read(self) -> tuple[TransportError | None, bool]:
        """Deliver answer frames until the stream ends; returns why (None: the peer ended
        it after our half-close) and whether that was abrupt (reset by the peer)."""
        stream = self.stream
        channel = self.channel
        peer = channel.peer
        core = self.core
        try:
            while True:
                event = await stream.next_event()
                if isinstance(event, MessageReceived):
                    try:
                        bad_service = core.on_frame(event.data)
                    except BadRequest as exc:
                        return TransportError(
                            Status.INTERNAL, f"malformed RaftStream answer from {peer}: {exc}"
                        ), False
                    if bad_service is not None:  # as RaftStep: nuraft_mesg's bad_service
                        channel.retire(f"sent to the wrong service? {bad_service}",
                                       logging.WARNING)
                    if channel.retired and not core.pending:
                        self.wake()
                elif isinstance(event, _MessageRejected):  # too large, or undecodable
                    return TransportError(
                        event.status, f"RaftStream answer refused: {event.message}"
                    ), False
                elif isinstance(event, ResponseEnded):
                    status = _status(event.status.int_value)
                    if status != Status.OK:
                        return TransportError(status, event.status.status_message), False
                    if self.half_closed:
                        return None, False
                    return TransportError(
                        Status.UNAVAILABLE, f"RaftStream closed by {peer}"
                    ), False
        except TransportError as exc:  # reset by the peer, or connection lost
            return exc, stream.reset_by_peer

    async def _sweep(self, peer_lost: Callable[[str], None]) -> None:
        """Fail requests whose deadline passed (sleeping until the earliest one, no polling),
        and half-close the stream once the channel is retired and nothing is pending."""
        core = self.core
        channel = self.channel
        while True:
            self.woken = False
            now = trio.current_time()
            expired = core.expire(now)
            grpc_socket = channel.socket
            if (
                expired is not None and grpc_socket is not None
                and grpc_socket.unanswered_ping_age() >= expired / 2
            ):
                age = grpc_socket.unanswered_ping_age()
                channel.retire(f"PING unanswered for {age:.2f}s")
                self.fail(TransportError(
                    Status.UNAVAILABLE, f"{channel.peer} did not answer a PING for {age:.2f}s"
                ))
                peer_lost(channel.peer)
                return
            if channel.retired and not core.pending and not self.half_closed:
                self.half_closed = True
                self.close_by = now + _STREAM_CLOSE_GRACE
                try:
                    await self.stream.close()
                except Exception as exc:
                    self.fail(TransportError(Status.UNAVAILABLE, f"RaftStream close: {exc!r}"))
                    return
            if self.half_closed and now >= self.close_by:
                self.fail(TransportError(Status.UNAVAILABLE, "RaftStream not ended by the peer"))
                return
            if self.woken:
                continue
            with trio.CancelScope(deadline=min(core.next_deadline(), self.close_by)) as scope:
                self.sweep_scope = scope
                await trio.sleep_forever()
