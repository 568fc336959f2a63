"""The client side of the gRPC transport: :class:`GrpcClient`.

Owns the per-peer channels (one HTTP/2 connection per peer uuid, shared by every group), the
holder task of each (started in the nursery of whoever owns channels: ``serve`` or ``async
with``), reconnection back-off, PINGs, and the outbound calls: unary ``RaftStep``,
``DataService/Call``, ``Admin/Status``, and batches on each channel's RaftStream
(:mod:`~nuraft_mesg.transport.grpc.channel`).  docs/transport.md, "Client", has the design.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final, Protocol

import anyio
import anyio.abc
import trio
from google.protobuf.message import DecodeError
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import MessageReceived, ResponseEnded, ResponseReceived

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport._proto.data_service_pb2 import DataServiceRequest, DataServiceResponse
from nuraft_mesg.transport.base import DataRequest, ReplyCallback, Status, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope, decode_group_msg, encode_group_msg
from nuraft_mesg.transport.grpc.channel import _Channel, _Link, _StreamUnsupported
from nuraft_mesg.transport.grpc.protocol import (
    _DATA_PATH,
    _RAFT_PATH,
    _STATUS_PATH,
    _STREAM_PATH,
    _MessageRejected,
    _Socket,
    _status,
    _Stream,
)
from nuraft_mesg.transport.grpc.settings import Settings
from nuraft_mesg.transport.security import fetch_token
from nuraft_mesg.transport.status import NodeStatus, decode_status, encode_status_request
from nuraft_mesg.transport.stream import deliver

log = logging.getLogger(__package__)  # one logger for the whole gRPC transport

_PING_WHEN_QUIET: Final = 1.0
"""A call on a channel that received nothing for this long (seconds, or half the call's
timeout if shorter) also sends an HTTP/2 PING."""
_RECONNECT_BACKOFF: Final = 0.05
_RECONNECT_BACKOFF_MAX: Final = 0.5
"""After a failed connection attempt, calls to that peer fail at once (UNAVAILABLE) for
50 ms, doubling with each further failure up to 0.5 s, so that a dead peer does not turn
every Raft message into a connection attempt."""

Batch = Sequence[tuple[GroupEnvelope, ReplyCallback]]


class UnaryBatch(Protocol):
    """Sends a batch as unary RaftSteps (``Transport.send_batch``'s default): for peers
    without RaftStream."""

    async def __call__(
        self, peer: str, batch: Batch, *, timeout: float, nursery: trio.Nursery  # noqa: ASYNC109
    ) -> None: ...


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6).  Raises ``ValueError``."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    return host, port



class _PeerSlot:
    """Per-peer state: the current channel, the lock for building one, reconnect backoff."""

    __slots__ = ("channel", "failures", "last_error", "lock", "retry_at")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.channel: _Channel | None = None
        self.failures = 0
        self.retry_at = -math.inf
        self.last_error = ""

    def connect_failed(self, error: str) -> None:
        self.failures += 1
        backoff = _RECONNECT_BACKOFF * 2 ** min(self.failures - 1, 16)
        self.retry_at = trio.current_time() + min(backoff, _RECONNECT_BACKOFF_MAX)
        self.last_error = error

    def connected(self) -> None:
        self.failures = 0
        self.retry_at = -math.inf


class GrpcClient:
    """The calling half of one node's transport (see the module doc and docs/transport.md).

    Args:
        settings: shared with the server half (read live).
        lookup_peer: peer uuid -> ``"host:port"``; ``""`` (or an exception) means unknown.
        peer_lost: told when the connection with a peer ends abruptly (a hint).
        unary_batch: sends a batch to a peer without RaftStream.
    """

    def __init__(
        self,
        settings: Settings,
        lookup_peer: Callable[[str], str],
        *,
        peer_lost: Callable[[str], None],
        unary_batch: UnaryBatch,
    ) -> None:
        self.settings = settings
        self._lookup_peer = lookup_peer
        self._peer_lost = peer_lost
        self._unary_batch = unary_batch
        tls = settings.tls
        # Built now so that unreadable files fail here; the server's is rebuilt by serve().
        self._client_ssl = tls.client_context() if tls is not None else None
        # purerpc's own size check (on its write buffer) and window size use the larger
        # limit; ours (before sending, and _ReadBuffer on receipt) are per direction.
        self._config = GRPCConfiguration(
            client_side=True,
            max_message_length=max(
                settings.max_send_message_size, settings.max_receive_message_size
            ),
        )
        self._peers: dict[str, _PeerSlot] = {}
        self._channels: set[_Channel] = set()
        self._channel_nursery: trio.Nursery | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def owning_channels(self) -> AsyncIterator[trio.Nursery]:
        """A nursery that hosts the channels unless someone else already does."""
        async with trio.open_nursery() as nursery:
            claimed = self._channel_nursery is None
            if claimed:
                self._channel_nursery = nursery
            try:
                yield nursery
            finally:
                if claimed:
                    self._channel_nursery = None
                    for channel in list(self._channels):
                        channel.scope.cancel()

    async def aclose(self) -> None:
        """Close every channel and refuse further calls (idempotent)."""
        self._closed = True
        channels = list(self._channels)
        for channel in channels:
            channel.scope.cancel()
        for channel in channels:
            await channel.finished.wait()

    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> GroupEnvelope:
        """One RaftStep to ``peer``.  ``intended_addr`` defaults to ``peer`` when empty."""
        if self._closed:
            raise TransportError(Status.UNAVAILABLE, "transport is closed")
        payload = self._encode_request(peer, request)
        if not timeout > 0:
            raise TransportError(Status.DEADLINE_EXCEEDED, f"no time left for RaftStep to {peer}")
        channel: _Channel | None = None
        with trio.move_on_after(timeout):
            channel = await self._channel(peer)
            data = await self._unary(channel, payload, min(_PING_WHEN_QUIET, timeout / 2))
            return self._decode_reply(peer, data)
        socket = channel.socket if channel is not None else None
        if socket is not None and socket.unanswered_ping_age() >= timeout / 2:
            assert channel is not None
            channel.retire(f"PING unanswered for {socket.unanswered_ping_age():.2f}s")
        raise TransportError(
            Status.DEADLINE_EXCEEDED, f"RaftStep to {peer} timed out after {timeout:g}s"
        )

    def _encode_request(self, peer: str, request: GroupEnvelope) -> bytes:
        if not request.message.type.is_request:
            raise TransportError(
                Status.INVALID_ARGUMENT, f"{request.message.type.name} is not a request"
            )
        try:
            payload = encode_group_msg(
                request.group_id,
                request.group_type,
                request.intended_addr or peer,
                request.message,
            )
        except BadRequest as exc:
            raise TransportError(Status.INVALID_ARGUMENT, f"cannot encode: {exc}") from None
        if len(payload) > self.settings.max_send_message_size:
            raise TransportError(
                Status.RESOURCE_EXHAUSTED,
                f"request of {len(payload)} bytes is larger than the maximum send size "
                f"({self.settings.max_send_message_size})",
            )
        return payload

    @staticmethod
    def _decode_reply(peer: str, data: bytes) -> GroupEnvelope:
        try:
            reply = decode_group_msg(data)
        except BadRequest as exc:
            raise TransportError(Status.INTERNAL, f"malformed reply from {peer}: {exc}") from None
        if reply.message.type.is_request:
            raise TransportError(
                Status.INTERNAL, f"reply from {peer} is a {reply.message.type.name}"
            )
        return reply

    # -- batches on the RaftStream ---------------------------------------------------------------
    async def send_batch(
        self,
        peer: str,
        batch: Batch,
        *,
        timeout: float,  # noqa: ASYNC109 - each request's deadline
        nursery: trio.Nursery,
    ) -> None:
        """Send ``batch`` on the channel's RaftStream (opened on first use), as one frame
        or several (by ``max_send_message_size``), and return once it is written.  Answers
        reach the callbacks from the stream's reader task; a request that cannot be encoded
        fails at once, alone.  A peer without RaftStream (UNIMPLEMENTED) gets unary RaftSteps
        (:meth:`Transport.send_batch`) until its channel is rebuilt."""
        if not batch:
            return
        if not self.settings.enable_stream:
            await self._unary_batch(peer, batch, timeout=timeout, nursery=nursery)
            return
        if self._closed:
            _fail_all(batch, TransportError(Status.UNAVAILABLE, "transport is closed"))
            return
        slot = self._peers.get(peer)
        channel = slot.channel if slot is not None else None
        if channel is not None and channel.usable and channel.stream_unsupported:
            await self._unary_batch(peer, batch, timeout=timeout, nursery=nursery)
            return
        if not timeout > 0:
            _fail_all(batch, TransportError(
                Status.DEADLINE_EXCEEDED, f"no time left for RaftStep to {peer}"
            ))
            return
        deadline = trio.current_time() + timeout
        encoded: list[tuple[bytes, bool, ReplyCallback]] = []
        good: list[tuple[GroupEnvelope, ReplyCallback]] = []
        for request, callback in batch:
            try:
                payload = self._encode_request(peer, request)
            except TransportError as exc:
                deliver(callback, exc)
                continue
            encoded.append((payload, request.quiesce, callback))
            good.append((request, callback))
        if not encoded:
            return
        link = channel.link if channel is not None and channel.usable else None
        if link is None or not link.usable:
            link = None
            channel = None
            try:
                with trio.move_on_at(deadline):
                    channel = await self._channel(peer)
                    if channel.socket is not None:
                        channel.socket.ping_if_quiet(min(_PING_WHEN_QUIET, timeout / 2))
                    link = await self._open_link(channel)
            except _StreamUnsupported:
                left = deadline - trio.current_time()
                await self._unary_batch(peer, good, timeout=left, nursery=nursery)
                return
            except TransportError as exc:
                _fail_all(good, exc)
                return
            except BaseException:  # the caller was cancelled: its callbacks still get an answer
                _fail_all(good, TransportError(
                    Status.CANCELLED, f"RaftStep to {peer}: cancelled before it was sent"
                ))
                raise
            if link is None:
                socket = channel.socket if channel is not None else None
                if socket is not None and socket.unanswered_ping_age() >= timeout / 2:
                    assert channel is not None
                    channel.retire(f"PING unanswered for {socket.unanswered_ping_age():.2f}s")
                _fail_all(good, TransportError(
                    Status.DEADLINE_EXCEEDED, f"RaftStep to {peer} timed out after {timeout:g}s"
                ))
                return
        socket = link.channel.socket
        if socket is not None:
            socket.ping_if_quiet(min(_PING_WHEN_QUIET, timeout / 2))
        with trio.move_on_at(deadline):  # a write stuck on flow control ends the link
            await link.send(encoded, deadline, timeout)

    async def _open_link(self, channel: _Channel) -> _Link:
        """The channel's RaftStream, opened if needed: request headers (with the token), then
        the response headers are awaited, so that a refusal (UNIMPLEMENTED: no RaftStream
        there; UNAUTHENTICATED; ...) is known before anything is sent on it."""
        peer = channel.peer
        async with channel.link_lock:
            link = channel.link
            if link is not None and link.usable:
                return link
            if channel.stream_unsupported:
                raise _StreamUnsupported
            grpc_socket = channel.socket
            links = channel.nursery
            if not channel.usable or grpc_socket is None or links is None:
                raise TransportError(Status.UNAVAILABLE, f"channel to {peer} closed")
            metadata = await self._call_metadata()
            channel.in_flight += 1  # the link's, from here on
            stream: _Stream | None = None
            opened = False
            try:
                stream = await grpc_socket.start_request(
                    "https" if self.settings.tls is not None else "http",
                    *_STREAM_PATH[:2], _STREAM_PATH[2], channel.authority,
                    custom_metadata=metadata,
                )
                if not grpc_socket.alive:
                    raise TransportError(Status.UNAVAILABLE, "connection lost")
                event = await stream.next_event()
                if isinstance(event, ResponseReceived) and stream.remote_ended:
                    event = await stream.next_event()  # trailers-only: the refusal
                if isinstance(event, ResponseEnded):
                    status = _status(event.status.int_value)
                    if status == Status.UNIMPLEMENTED:
                        log.info("%s has no RaftStream (%s): unary RaftSteps on this channel",
                                 peer, event.status.status_message)
                        channel.stream_unsupported = True
                        raise _StreamUnsupported
                    if status == Status.OK:
                        status = Status.INTERNAL
                    raise TransportError(status, f"RaftStream refused: "
                                                 f"{event.status.status_message}")
                if isinstance(event, _MessageRejected):
                    raise TransportError(event.status, f"RaftStream refused: {event.message}")
                if not isinstance(event, ResponseReceived):
                    raise TransportError(Status.INTERNAL, f"RaftStream: unexpected {event!r}")
                if not channel.usable:
                    raise TransportError(Status.UNAVAILABLE, f"channel to {peer} closed")
                settings = self.settings
                link = _Link(channel, stream, settings.server_uuid, settings.max_send_message_size)
                links.start_soon(link.run, self._peer_lost)
                channel.link = link
                opened = True
                return link
            except (TransportError, _StreamUnsupported):
                raise
            except Exception as exc:
                if stream is not None and stream.failure is not None:
                    raise stream.failure from None
                channel.retire(f"RaftStream failed: {exc!r}")
                raise TransportError(
                    Status.UNAVAILABLE, f"RaftStream to {peer} failed: {exc!r}"
                ) from None
            finally:
                if not opened:
                    if stream is not None:
                        grpc_socket.discard(stream, reset=not stream.remote_ended)
                    channel.in_flight -= 1
                    if channel.retired and channel.in_flight == 0:
                        channel.scope.cancel()

    async def ping(
        self,
        peer: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> None:
        """An HTTP/2 PING on the channel to ``peer`` (connecting if needed), answered by the
        peer's HTTP/2 layer however busy its handlers are.  A PING unanswered within
        ``timeout`` retires the channel (presumed stale).

        Raises:
            TransportError: UNAVAILABLE (cannot connect, connection lost) or
                DEADLINE_EXCEEDED (no answer in time).
        """
        if self._closed:
            raise TransportError(Status.UNAVAILABLE, "transport is closed")
        if not timeout > 0:
            raise TransportError(Status.DEADLINE_EXCEEDED, f"no time left for a PING to {peer}")
        channel: _Channel | None = None
        acked = False
        with trio.move_on_after(timeout):
            channel = await self._channel(peer)
            grpc_socket = channel.socket
            assert grpc_socket is not None
            await grpc_socket.ping()
            acked = True
            stream_wanted = self.settings.enable_stream and not channel.stream_unsupported
            if stream_wanted and channel.link is None:
                # A channel that only pings makes no call, and a server drops a connection
                # without one after its handshake_timeout: give it its (idle) RaftStream.
                # (Its headers are what counts there; the rest may finish at the next ping.)
                with contextlib.suppress(TransportError, _StreamUnsupported):
                    await self._open_link(channel)
        if acked:
            return
        if channel is not None:
            channel.retire(f"PING unanswered for {timeout:g}s")
        raise TransportError(
            Status.DEADLINE_EXCEEDED, f"PING to {peer} unanswered after {timeout:g}s"
        )

    async def data_call(
        self,
        peer: str,
        request: DataRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> bytes:
        """One ``DataService/Call`` to ``peer``; ``intended_addr`` defaults to ``peer``."""
        if self._closed:
            raise TransportError(Status.UNAVAILABLE, "transport is closed")
        try:
            payload = DataServiceRequest(
                group_id=request.group_id,
                request_name=request.name,
                intended_addr=request.intended_addr or peer,
                payload=request.payload,
            ).SerializeToString()
        except (TypeError, ValueError) as exc:
            raise TransportError(Status.INVALID_ARGUMENT, f"cannot encode: {exc}") from None
        if len(payload) > self.settings.max_send_message_size:
            raise TransportError(
                Status.RESOURCE_EXHAUSTED,
                f"data request of {len(payload)} bytes is larger than the maximum send "
                f"size ({self.settings.max_send_message_size})",
            )
        data = await self._round_trip(peer, payload, timeout, _DATA_PATH)
        pb = DataServiceResponse()
        try:
            pb.ParseFromString(data)
        except DecodeError as exc:
            raise TransportError(Status.INTERNAL, f"malformed reply from {peer}: {exc}") from None
        return pb.payload

    async def status_call(
        self,
        peer: str,
        group_ids: tuple[str, ...] | list[str] = (),
        *,
        timeout: float,  # noqa: ASYNC109 - like call()
    ) -> NodeStatus:
        """``Admin/Status`` of ``peer`` (any key ``lookup_peer`` resolves: no uuid check)."""
        if self._closed:
            raise TransportError(Status.UNAVAILABLE, "transport is closed")
        data = await self._round_trip(
            peer, encode_status_request(group_ids), timeout, _STATUS_PATH
        )
        try:
            return decode_status(data)
        except BadRequest as exc:
            raise TransportError(Status.INTERNAL, f"malformed reply from {peer}: {exc}") from None

    async def _round_trip(
        self,
        peer: str,
        payload: bytes,
        timeout: float,  # noqa: ASYNC109 - a deadline travels with the call
        path: tuple[str, str, str],
    ) -> bytes:
        """Like :meth:`call`'s transfer, for another method of the same server."""
        if not timeout > 0:
            raise TransportError(Status.DEADLINE_EXCEEDED, f"no time left for {path[1]} to {peer}")
        channel: _Channel | None = None
        with trio.move_on_after(timeout):
            channel = await self._channel(peer)
            return await self._unary(channel, payload, min(_PING_WHEN_QUIET, timeout / 2), path)
        socket = channel.socket if channel is not None else None
        if socket is not None and socket.unanswered_ping_age() >= timeout / 2:
            assert channel is not None
            channel.retire(f"PING unanswered for {socket.unanswered_ping_age():.2f}s")
        raise TransportError(
            Status.DEADLINE_EXCEEDED, f"{path[1]} to {peer} timed out after {timeout:g}s"
        )

    async def _channel(self, peer: str) -> _Channel:
        slot = self._peers.get(peer)
        if slot is None:
            slot = self._peers[peer] = _PeerSlot()
        channel = slot.channel
        if channel is not None and channel.usable:
            return channel
        async with slot.lock:
            channel = slot.channel
            if channel is not None and channel.usable:
                return channel
            slot.channel = None
            nursery = self._channel_nursery
            if nursery is None or self._closed:
                raise TransportError(
                    Status.UNAVAILABLE, "transport is not running (neither serving nor entered)"
                )
            wait = slot.retry_at - trio.current_time()
            if wait > 0:
                raise TransportError(
                    Status.UNAVAILABLE,
                    f"{slot.last_error} (next connection attempt in {wait:.2f}s)",
                )
            try:
                host, port = self._resolve(peer)
            except TransportError:
                if slot.lock.statistics().tasks_waiting == 0:
                    self._peers.pop(peer, None)
                raise
            try:
                channel = await self._connect(nursery, peer, host, port)
            except TransportError as exc:
                slot.connect_failed(exc.message)
                raise
            slot.connected()
            slot.channel = channel
            return channel

    def _resolve(self, peer: str) -> tuple[str, int]:
        try:
            address = self._lookup_peer(peer)
        except Exception as exc:
            raise TransportError(
                Status.UNAVAILABLE, f"cannot resolve peer {peer}: {exc!r}"
            ) from None
        if not address:
            raise TransportError(Status.UNAVAILABLE, f"unknown peer {peer}")
        try:
            return parse_address(address)
        except ValueError as exc:
            raise TransportError(Status.UNAVAILABLE, f"peer {peer}: {exc}") from None

    async def _connect(self, nursery: trio.Nursery, peer: str, host: str, port: int) -> _Channel:
        channel = _Channel(peer, host, port)
        try:
            await nursery.start(self._hold_channel, channel)
        except TransportError:
            raise
        except Exception as exc:  # OSError from connect, a closed nursery, ...
            cause = exc.__cause__ or exc
            raise TransportError(
                Status.UNAVAILABLE, f"cannot connect to {peer} at {channel.authority}: {cause}"
            ) from None
        return channel

    async def _hold_channel(
        self, channel: _Channel, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._channels.add(channel)
        started = False
        try:
            with channel.scope:
                sock: anyio.abc.ByteStream
                if self._client_ssl is None:
                    sock = await anyio.connect_tcp(channel.host, channel.port)
                else:
                    assert self.settings.tls is not None
                    sock = await anyio.connect_tcp(
                        channel.host, channel.port, ssl_context=self._client_ssl,
                        tls_hostname=self.settings.tls.server_name or channel.host,
                        tls_standard_compatible=False,
                    )
                async with sock:
                    try:
                        async with _Socket(
                            self._config,
                            sock,
                            on_lost=channel.scope.cancel,
                            on_goaway=functools.partial(channel.retire, "peer sent GOAWAY"),
                            receive_limit=self.settings.max_receive_message_size,
                        ) as grpc_socket, trio.open_nursery() as links:
                            channel.socket = grpc_socket
                            channel.nursery = links
                            task_status.started()
                            started = True
                            log.debug("channel to %s at %s open", channel.peer, channel.authority)
                            await trio.sleep_forever()
                    except* Exception as group:
                        if not started:
                            raise
                        log.info(
                            "channel to %s at %s failed: %r",
                            channel.peer,
                            channel.authority,
                            group.exceptions,
                        )
            if not started:
                raise TransportError(Status.UNAVAILABLE, "channel closed while connecting")
        finally:
            channel.retired = True
            channel.nursery = None
            self._channels.discard(channel)
            slot = self._peers.get(channel.peer)
            if slot is not None and slot.channel is channel:
                slot.channel = None
            channel.finished.set()
            if channel.socket is not None and channel.socket.lost_abruptly:
                self._peer_lost(channel.peer)

    async def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of an outbound call: the token client's header, if any."""
        if self.settings.token_client is None:
            return ()
        try:
            return await fetch_token(self.settings.token_client)
        except ValueError as exc:
            raise TransportError(Status.UNAUTHENTICATED, str(exc)) from None

    async def _unary(
        self,
        channel: _Channel,
        payload: bytes,
        ping_when_quiet: float,
        path: tuple[str, str, str] = _RAFT_PATH,
    ) -> bytes:
        grpc_socket = channel.socket
        assert grpc_socket is not None
        channel.in_flight += 1
        stream: _Stream | None = None
        done = False
        try:
            metadata = await self._call_metadata()
            stream = await grpc_socket.start_request(
                "https" if self.settings.tls is not None else "http",
                path[0], path[1], path[2], channel.authority,
                custom_metadata=metadata,
            )
            if not grpc_socket.alive:  # lost between the usable check and the new stream
                raise TransportError(Status.UNAVAILABLE, "connection lost")
            grpc_socket.ping_if_quiet(ping_when_quiet)
            try:
                await stream.send_bytes(payload)
                await stream.close()
            except Exception:
                # A server may answer (and reset the stream) before it has read the whole
                # request; the answer is what counts then.
                if not stream.remote_ended:
                    raise
            data = await _read_reply(stream)
            done = True
            return data
        except TransportError as exc:
            if exc.status == Status.INVALID_ARGUMENT:  # nuraft_mesg's bad_service
                channel.retire(f"sent to the wrong service? {exc.message}", logging.WARNING)
            raise
        except Exception as exc:
            if stream is not None and stream.failure is not None:
                raise stream.failure from None  # reset by the peer, or connection lost
            # h2 state errors and the like: do not trust this channel any more
            channel.retire(f"call failed: {exc!r}")
            raise TransportError(
                Status.UNAVAILABLE, f"{path[1]} to {channel.peer} failed: {exc!r}"
            ) from None
        finally:
            if stream is not None:
                grpc_socket.discard(stream, reset=not done)
            channel.in_flight -= 1
            if channel.retired and channel.in_flight == 0:
                channel.scope.cancel()


async def _read_reply(stream: _Stream) -> bytes:
    data: bytes | None = None
    while True:
        event = await stream.next_event()
        if isinstance(event, MessageReceived):
            if data is not None:
                raise TransportError(Status.INTERNAL, "more than one reply message")
            data = event.data
        elif isinstance(event, _MessageRejected):  # too large, or undecodable
            raise TransportError(event.status, f"reply refused: {event.message}")
        elif isinstance(event, ResponseEnded):
            status = event.status
            if status.int_value != Status.OK:
                raise TransportError(_status(status.int_value), status.status_message)
            if data is None:
                raise TransportError(Status.INTERNAL, "missing response")
            return data


def _fail_all(batch: Batch, error: TransportError) -> None:
    for _, callback in batch:
        deliver(callback, error)
