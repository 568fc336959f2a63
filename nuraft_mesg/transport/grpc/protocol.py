"""The HTTP/2 / gRPC protocol layer, both sides: purerpc's ``GRPCProtoSocket`` made robust.

Owns one connection's event loop (:class:`_Socket`), its RPCs (:class:`_Stream`), per-stream
message parsing and flow-control credit (:class:`_ReadBuffer`, :class:`_H2Connection`) and the
gRPC method paths.  No tasks of its own: whoever enters a :class:`_Socket` runs its loop.

Why purerpc internals: its ``Server``/``Client``/stub layer swallows ``Cancelled`` with bare
``except:``, parses requests before we see the bytes, never closes accepted sockets and leaves
calls waiting forever on a lost connection (docs/transport.md, "Why not purerpc's server and
client").  So only its protocol layer is used, and :class:`_Socket` replaces its event loop.
That relies on purerpc 0.8 internals (``_streams``, ``_incoming_events``, ``_grpc_connection``,
``_socket``, ``message_read_buffers``, ``GRPCConnection``'s per-event methods,
``MessageReadBuffer``'s parser state): pyproject pins ``purerpc==0.8.0``, and an upgrade must
re-check every one of them.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import struct
import zlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, Final

import anyio
import anyio.abc
import trio
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import SocketWrapper
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import (
    MessageReceived,
    RequestEnded,
    RequestReceived,
    ResponseEnded,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import ProtocolError
from purerpc.grpclib.headers import HeaderDict

from nuraft_mesg.transport.base import Status, TransportError
from nuraft_mesg.transport.grpc.settings import DEFAULT_MAX_MESSAGE_SIZE

_SERVICE: Final = "nuraft_mesg.Messaging"
_METHOD: Final = "RaftStep"
_MESSAGE_TYPE: Final = "nuraft_mesg.RaftGroupMsg"
_RAFT_PATH: Final = (_SERVICE, _METHOD, _MESSAGE_TYPE)
_DATA_PATH: Final = ("nuraft_mesg.DataService", "Call", "nuraft_mesg.DataServiceRequest")
"""The data service (proto/data_service.proto), on the same server and port."""
_STATUS_PATH: Final = ("nuraft_mesg.Admin", "Status", "nuraft_mesg.StatusRequest")
"""The node status report (proto/admin.proto)."""
_STREAM_PATH: Final = (_SERVICE, "RaftStream", "nuraft_mesg.RaftBatch")
"""Our extension (proto/messaging_service.proto): batches of RaftSteps on one stream."""
_PATHS: Final = frozenset(p[:2] for p in (_RAFT_PATH, _DATA_PATH, _STATUS_PATH))

_H2_NO_ERROR: Final = 0x0
_H2_CANCEL: Final = 0x8

# HTTP/2 RST_STREAM error code -> gRPC status (gRPC's PROTOCOL-HTTP2 mapping).
_RESET_STATUS: Final = {
    0x7: Status.UNAVAILABLE,  # REFUSED_STREAM
    0x8: Status.CANCELLED,  # CANCEL
    0xB: Status.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: Status.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def _status(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        return Status.UNKNOWN


class _StreamReset:
    """Our event for an RST_STREAM from the peer (purerpc's GRPCConnection drops those)."""

    __slots__ = ("error_code", "stream_id")

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code


class _GoAway:
    """Our event for a GOAWAY from the peer: it takes no new streams on this connection."""

    __slots__ = ("stream_id",)

    def __init__(self) -> None:
        self.stream_id = 0


class _PingAck:
    """Our event for a PING ACK (purerpc's GRPCConnection drops those)."""

    __slots__ = ("data", "stream_id")

    def __init__(self, data: bytes) -> None:
        self.stream_id = 0
        self.data = data


class _MessageRejected:
    """Our event: the stream's incoming message (or its headers) cannot be accepted.  The
    rest of the stream's data is discarded; the reader answers or fails with ``status``."""

    __slots__ = ("message", "status", "stream_id")

    def __init__(self, stream_id: int, status: Status, message: str) -> None:
        self.stream_id = stream_id
        self.status = status
        self.message = message


class _Rejected(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ReadBuffer(MessageReadBuffer):  # type: ignore[misc]
    """purerpc's length-prefixed message parser, with per-stream errors: a message over the
    limit, a bad compressed flag or encoding, or an inflated message over the limit sets
    ``rejected`` instead of raising into the connection's reader."""

    def __init__(self, encoding: str | None, limit: int) -> None:
        super().__init__(encoding, limit)
        self.rejected: tuple[Status, str] | None = None
        self._lost_credit = 0
        # purerpc's parser state (untyped there)
        self._compressed_flag: bool | None = None
        self._message_length: int | None = None
        self._flow_controlled_length: int | None = None
        self._max_message_length: int = limit

    def feed(self, data: bytes, flow_controlled_length: int) -> tuple[Status, str] | None:
        """Parse ``data``; returns the rejection if the stream's message is refused."""
        if self.rejected is not None:
            self._lost_credit += flow_controlled_length
            return self.rejected
        try:
            self.data_received(data, flow_controlled_length)
        except _Rejected as exc:
            self.rejected = (exc.status, exc.message)
        return self.rejected

    def release(self) -> int:
        """Forget everything buffered; returns its flow-control credit (to acknowledge)."""
        credit = self._lost_credit + (self._flow_controlled_length or 0)
        credit += sum(n for _, n in self._buffer._deque)
        self._buffer._deque.clear()
        self._buffer._size = 0
        self._lost_credit = 0
        self._compressed_flag = self._message_length = self._flow_controlled_length = None
        return int(credit)

    def _parse_one_message(self) -> tuple[bytes | None, int]:
        if self._message_length is None:
            if len(self._buffer) < 5:
                return None, 0
            header, self._flow_controlled_length = self._buffer.popleft_flowcontrol(5)
            flag, length = struct.unpack(">BI", header)
            self._message_length = length
            if flag > 1:
                raise _Rejected(Status.INTERNAL, f"bad compressed flag {flag}")
            self._compressed_flag = bool(flag)
            if length > self._max_message_length:
                raise _Rejected(
                    Status.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes is larger than the maximum receive size "
                    f"({self._max_message_length})",
                )
        if len(self._buffer) < self._message_length:
            return None, 0
        data, credit = self._buffer.popleft_flowcontrol(self._message_length)
        credit += self._flow_controlled_length or 0
        compressed = self._compressed_flag
        self._compressed_flag = self._message_length = self._flow_controlled_length = None
        if compressed:
            try:
                data = self._inflate(data)
            except _Rejected:
                self._lost_credit += credit
                raise
        return data, credit

    def _inflate(self, data: bytes) -> bytes:
        encoding = self._message_encoding
        if encoding in (None, "identity"):
            raise _Rejected(Status.INTERNAL, "compressed message without a grpc-encoding")
        if encoding not in ("gzip", "deflate"):
            raise _Rejected(Status.UNIMPLEMENTED, f"unsupported grpc-encoding {encoding!r}")
        limit = self._max_message_length
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            out = inflater.decompress(data, limit + 1)
        except zlib.error as exc:
            raise _Rejected(Status.INTERNAL, f"cannot inflate {encoding} message: {exc}") from None
        if len(out) > limit:
            raise _Rejected(
                Status.RESOURCE_EXHAUSTED,
                f"inflated message is larger than the maximum receive size ({limit})",
            )
        if not inflater.eof:
            raise _Rejected(Status.INTERNAL, f"truncated {encoding} message")
        return out


class _H2Connection(GRPCConnection):  # type: ignore[misc]
    """purerpc's connection, but reporting RST_STREAM and GOAWAY instead of dropping them,
    and turning per-stream problems (oversize or undecodable messages, malformed request
    headers, data for a forgotten stream) into :class:`_MessageRejected` events instead of
    exceptions that would end the whole connection.  ``receive_limit`` bounds incoming
    messages."""

    def __init__(self, config: GRPCConfiguration, receive_limit: int) -> None:
        super().__init__(config=config)
        self.receive_limit = receive_limit

    def _stream_reset(self, event: Any) -> list[object]:
        return [_StreamReset(event.stream_id, int(event.error_code))]

    def _connection_terminated(self, event: Any) -> list[object]:
        return [_GoAway()]

    def _ping_acknowledged(self, event: Any) -> list[object]:
        return [_PingAck(bytes(event.ping_data))]

    def _request_received(self, event: Any) -> list[object]:
        sid: int = event.stream_id
        problem = ""
        try:
            request = RequestReceived.parse_from_stream_id_and_headers_destructive(
                sid, HeaderDict(event.headers)
            )
        except Exception as exc:  # ProtocolError, KeyError, ValueError, binascii.Error, ...
            request = RequestReceived(sid, "http", "", "", "")
            problem = f"malformed request headers: {type(exc).__name__}: {exc}"
        # A request without a body (HEADERS with END_STREAM) gets its RequestEnded from
        # _stream_ended, which needs the buffer; the reader then answers "no message".
        buffer = _ReadBuffer(request.message_encoding, self.receive_limit)
        self.message_read_buffers[sid] = buffer
        if problem:
            buffer.rejected = request.rejection = (Status.INTERNAL, problem)
        return [request]

    def _response_received(self, event: Any) -> list[object]:
        events: list[object] = super()._response_received(event)
        sid: int = event.stream_id
        if sid in self.message_read_buffers:
            self.message_read_buffers[sid] = _ReadBuffer(
                events[0].message_encoding,  # type: ignore[attr-defined]
                self.receive_limit,
            )
        return events

    def _data_received(self, event: Any) -> list[object]:
        sid: int = event.stream_id
        credit: int = event.flow_controlled_length
        buffer = self.message_read_buffers.get(sid)
        if not isinstance(buffer, _ReadBuffer) or buffer.rejected is not None:
            self._return_credit(sid, credit)  # a stream given up on: drop its data
            return []
        rejected = buffer.feed(event.data, credit)
        events: list[object] = [
            MessageReceived(sid, data, length)
            for data, length in buffer.read_all_complete_messages_flowcontrol()
        ]
        if rejected is not None:
            self._return_credit(sid, buffer.release())
            events.append(_MessageRejected(sid, *rejected))
        return events

    def _return_credit(self, sid: int, credit: int) -> None:
        if credit > 0:
            with contextlib.suppress(Exception):  # h2 refuses once the connection is closed
                self.h2_connection.acknowledge_received_data(credit, sid)


class _Stream(GRPCProtoStream):  # type: ignore[misc]
    """One RPC.  ``failure`` says why it ended early; ``scope`` is the server handler's."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.failure: TransportError | None = None
        self.scope: trio.CancelScope | None = None
        self.remote_ended = False
        self.reset_by_peer = False

    def abort(self, failure: TransportError) -> None:
        """No more events will come (stream reset, connection lost): wake whoever reads."""
        if self.failure is None:
            self.failure = failure
        self._incoming_events[0].close()
        self._flow_control_update_event.set()  # a sender waiting for window gives up
        if self.scope is not None:
            self.scope.cancel()

    async def next_event(self) -> object:
        """The next event; a :class:`TransportError` once the stream was aborted."""
        try:
            return await self._receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self.failure or TransportError(Status.UNAVAILABLE, "stream closed") from None

    async def _receive(self) -> object:
        # purerpc's, minus its asserts (an event of ours, _MessageRejected, is neither a
        # start nor an end event): acknowledge a message's data as it is taken.
        event = await self._incoming_events[1].receive()
        if isinstance(event, MessageReceived):
            self._grpc_connection.acknowledge_received_data(
                self._stream_id, event.flow_controlled_length
            )
            await self._socket.flush()
        elif isinstance(event, (RequestEnded, ResponseEnded)):
            self._end_stream_event = event
        elif not isinstance(event, _MessageRejected):
            self._start_stream_event = event
        return event

    async def send_bytes(self, payload: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        await self._send(payload)


class _Socket(GRPCProtoSocket):  # type: ignore[misc]
    """One HTTP/2 connection, either side.  ``alive`` turns False once it is lost;
    ``going_away`` once the peer sent GOAWAY (no new streams).  Incoming messages larger
    than ``receive_limit`` are refused per stream (see :class:`_H2Connection`)."""

    StreamClass = _Stream

    def __init__(
        self,
        config: Any,
        sock: anyio.abc.ByteStream,
        on_lost: Callable[[], None] | None = None,
        on_goaway: Callable[[], None] | None = None,
        *,
        receive_limit: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(config, sock)
        # Swap in our connection class (purerpc hard-codes GRPCConnection in __init__).
        self._grpc_connection = _H2Connection(config, receive_limit)
        self._socket = SocketWrapper(self._grpc_connection, sock)
        self._on_lost = on_lost
        self._on_goaway = on_goaway
        self.alive = True
        self.lost_abruptly = False
        """The connection ended from the other side (EOF, reset, error), not by our close."""
        self.going_away = False
        self.last_receive = trio.current_time()
        self._last_ping = -math.inf
        self._ping_count = 0
        self._ping_waiters: dict[bytes, tuple[trio.Event, list[bool]]] = {}
        self.remote = ""
        """The peer's host (server side; for logs)."""

    # -- event loop (replaces GRPCSocket._listen / _reader_thread) ----------------------------
    async def _listen(self) -> AsyncGenerator[_Stream, None]:
        """Read and dispatch events until the connection ends; yields each new stream (server
        side)."""
        streams: dict[int, _Stream] = self._streams
        reason = "closed by peer"
        abrupt = False  # stays False when we end the connection (cancellation)
        try:
            while True:
                try:
                    data = await self._socket.recv(self._receive_buffer_size)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError
                        ) as exc:
                    if exc.__cause__ is not None:
                        reason = f"{reason}: {exc.__cause__}"
                    abrupt = True
                    return
                except (ssl.SSLError, OSError) as exc:  # e.g. a TLS alert: say which
                    reason = f"{type(exc).__name__}: {exc}"
                    abrupt = True
                    return
                self.last_receive = trio.current_time()
                try:
                    events = self._grpc_connection.receive_data(data)
                except Exception as exc:
                    reason = f"protocol error: {exc!r}"
                    abrupt = True
                    raise
                await self._socket.flush()
                for event in events:
                    sid: int = event.stream_id
                    if isinstance(event, _PingAck):
                        waiter = self._ping_waiters.pop(event.data, None)
                        if waiter is not None:
                            waiter[1].append(True)
                            waiter[0].set()
                        continue
                    if isinstance(event, WindowUpdated):
                        targets = list(streams.values()) if sid == 0 else [streams.get(sid)]
                        for target in targets:
                            if target is not None:
                                target._flow_control_update_event.set()
                        continue
                    if isinstance(event, _GoAway):
                        self.going_away = True
                        if self._on_goaway is not None:
                            self._on_goaway()
                        continue
                    if isinstance(event, _StreamReset):
                        self._grpc_connection.message_read_buffers.pop(sid, None)
                        reset = streams.pop(sid, None)
                        if reset is not None:
                            reset.reset_by_peer = True
                            code = event.error_code
                            reset.abort(
                                TransportError(
                                    _RESET_STATUS.get(code, Status.INTERNAL),
                                    f"stream reset by peer (HTTP/2 error {code:#x})",
                                )
                            )
                        continue
                    if isinstance(event, RequestReceived):
                        stream: _Stream | None = self._allocate_stream(sid)
                    else:
                        stream = streams.get(sid)
                    if stream is None:
                        continue  # a stream we already gave up on
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        stream._incoming_events[0].send_nowait(event)
                    if isinstance(event, RequestReceived):
                        yield stream
                    elif isinstance(event, (RequestEnded, ResponseEnded)):
                        stream.remote_ended = True
                        stream._close_remote()
        finally:
            self._lost(reason, abrupt=abrupt)

    async def _reader_thread(self) -> None:
        async with contextlib.aclosing(self._listen()) as events:
            async for _ in events:
                raise ProtocolError("the server opened a stream")

    def _lost(self, reason: str, *, abrupt: bool = False) -> None:
        if not self.alive:
            return
        self.alive = False
        self.lost_abruptly = abrupt
        failure = TransportError(Status.UNAVAILABLE, f"connection lost: {reason}")
        for stream in list(self._streams.values()):
            stream.abort(failure)
        waiters, self._ping_waiters = self._ping_waiters, {}
        for done, _ in waiters.values():
            done.set()
        if self._on_lost is not None:
            self._on_lost()

    async def ping(self) -> None:
        """Send an HTTP/2 PING and wait for its ACK (the peer's HTTP/2 layer answers at once,
        however busy its handlers are).  Raises :class:`TransportError` (UNAVAILABLE) if the
        connection is or gets lost first."""
        if not self.alive:
            raise TransportError(Status.UNAVAILABLE, "connection lost")
        self._ping_count += 1
        data = struct.pack(">Q", self._ping_count)  # never ping_if_quiet's b"nuraftpg"
        done, acked = trio.Event(), list[bool]()
        self._ping_waiters[data] = (done, acked)
        try:
            try:
                self._grpc_connection.h2_connection.ping(data)
            except Exception as exc:  # h2 refuses once the connection is closed
                raise TransportError(Status.UNAVAILABLE, f"cannot send PING: {exc!r}") from None
            self._socket._flush_event.set()
            await done.wait()
        finally:
            self._ping_waiters.pop(data, None)
        if not acked:
            raise TransportError(Status.UNAVAILABLE, "connection lost before the PING ACK")

    def ping_if_quiet(self, quiet_for: float) -> None:
        """Send an HTTP/2 PING if nothing was received for ``quiet_for`` seconds and no PING
        is outstanding.  The peer's HTTP/2 layer answers it at once, even while its handlers
        are slow, so only a dead connection leaves it unanswered."""
        now = trio.current_time()
        if now - self.last_receive < quiet_for or self._last_ping > self.last_receive:
            return
        self._last_ping = now
        with contextlib.suppress(Exception):
            self._grpc_connection.h2_connection.ping(b"nuraftpg")
            self._socket._flush_event.set()

    def unanswered_ping_age(self) -> float:
        """How long the outstanding PING (if any) has gone unanswered, in seconds."""
        if self._last_ping > self.last_receive:
            return trio.current_time() - self._last_ping
        return 0.0

    def discard(self, stream: _Stream, *, reset: bool) -> None:
        """Forget ``stream``; with ``reset``, tell the peer (RST_STREAM CANCEL) if still open.
        A stream answered before the peer finished sending is reset with NO_ERROR ("the
        rest is not needed", as gRPC servers do), so the peer stops sending.

        Unread data is acknowledged so that the connection's flow-control window is not lost.
        """
        sid: int = stream.stream_id
        conn = self._grpc_connection
        if self._streams.get(sid) is stream:
            del self._streams[sid]
            buffer = conn.message_read_buffers.pop(sid, None)
            if isinstance(buffer, _ReadBuffer):
                conn._return_credit(sid, buffer.release())  # a partly received message
            if (reset or not stream.remote_ended) and self.alive:
                with contextlib.suppress(Exception):  # h2 refuses if it is closed already
                    conn.reset_stream(sid, _H2_CANCEL if reset else _H2_NO_ERROR)
        receive = stream._incoming_events[1]
        while True:
            try:
                event = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if isinstance(event, MessageReceived) and self.alive:
                with contextlib.suppress(Exception):
                    conn.acknowledge_received_data(sid, event.flow_controlled_length)
        stream._incoming_events[0].close()
        receive.close()
        self._socket._flush_event.set()  # wake the writer; SocketWrapper.flush() in sync form
