"""The real transport: ``nuraft_mesg.Messaging/RaftStep`` (and our batched ``RaftStream``)
over gRPC (HTTP/2) with purerpc.

Wire behaviour follows nuraft_mesg (inventory §2.3-§2.5):

* server: a request must decode (:mod:`~nuraft_mesg.transport.codec`), carry a uuid
  ``group_id`` and a uuid ``intended_addr`` equal to this node's uuid, otherwise the answer is
  INVALID_ARGUMENT.  The handler's :class:`~nuraft_mesg.transport.base.StepError` becomes its
  status; any other exception becomes INTERNAL (logged) and the server keeps serving.  The reply
  echoes the request's ``group_id`` and carries the handler's message and ``dest_addr``; its
  ``intended_addr`` and ``group_type`` are empty, as in nuraft_mesg.  A ``grpc-timeout`` sent by
  the client bounds the handler (DEADLINE_EXCEEDED).
* the same server and port also answer ``nuraft_mesg.DataService/Call``
  (``proto/data_service.proto``; checked like RaftStep, then the handler's ``data_request``)
  and ``nuraft_mesg.Admin/Status`` (``proto/admin.proto``; no uuid check, the handler's
  ``node_status``), or UNIMPLEMENTED when the handler lacks that method.  Their client side,
  :meth:`GrpcTransport.data_call` and :meth:`GrpcTransport.status_call`, uses the same
  per-peer channels as RaftStep.
* client: one HTTP/2 connection ("channel") per peer uuid, shared by every group, resolved
  lazily through ``lookup_peer``.  INVALID_ARGUMENT from the peer retires the channel
  (nuraft_mesg's ``bad_service``): the next call re-resolves the address and reconnects.  A lost
  connection (peer restarted, reset) is noticed by the channel's reader and the next call
  reconnects.  A call on a channel that has been quiet for a second (or half its timeout) also
  sends an HTTP/2 PING; if the call times out with that PING unanswered for half the timeout,
  the channel is presumed stale (peer host gone without a FIN, address moved) and retired too.
  A slow but live peer answers PINGs and keeps its channel.  After a failed connection
  attempt, calls to that peer fail at once with UNAVAILABLE for a short, growing backoff
  (50 ms doubling to 0.5 s).  :meth:`GrpcTransport.ping` is an HTTP/2 PING on the channel,
  awaiting its ACK.
* batches (:meth:`GrpcTransport.send_batch`): ``nuraft_mesg.Messaging/RaftStream`` (an
  extension of ours, ``proto/messaging_service.proto``; :mod:`~nuraft_mesg.transport.stream`
  has the frames and the per-stream state).  Each channel opens one long-lived stream on the
  first batch (headers with the token; the response headers are awaited, so a refusal is known
  before anything is sent) and keeps it: every batch is one frame (split by
  ``max_send_message_size``) of items numbered by ``seq``; answers come back batched on the
  same stream, matched by ``seq``, in any order.  Requests pending on a stream fail with
  DEADLINE_EXCEEDED after their timeout (a per-stream sweeper sleeps until the earliest
  deadline), and all of them with the stream's error (UNAVAILABLE, ...) if the stream or the
  connection is lost; the next batch reopens it (a lost connection first reconnects, with the
  backoff above).  An INVALID_ARGUMENT item retires the channel as for RaftStep (the stream is
  half-closed once nothing is pending there).  A peer answering RaftStream with UNIMPLEMENTED
  (a C++ node; ``enable_stream=False``) gets unary RaftSteps (:meth:`Transport.send_batch`)
  until its channel is rebuilt.  On the server, a RaftStream passes RaftStep's header checks,
  then a reader hands each valid item to the handler (``step_nowait`` first, else
  ``raft_step``; one group's requests in the order sent) and a writer sends every answer
  accumulated in one loop turn as one frame.  Per-item problems are per-item statuses; an
  undecodable or oversize frame ends only that stream.  The stream has no read deadline.
* ``peer_lost``: when a connection to a peer is lost abruptly (not by our own close), when a
  peer resets our RaftStream, when a RaftStream from a peer (uuid: its frames' ``sender``)
  ends by reset or connection loss, and when a stream's PING goes unanswered, a handler that
  is a :class:`~nuraft_mesg.transport.base.PeerWatcher` is told (a hint only).

Security and hostile input (docs/security.md)
---------------------------------------------
* TLS (:class:`~nuraft_mesg.transport.security.TlsConfig`): the server wraps each accepted
  connection (with ``mutual``: a client certificate signed by the CA is required); every
  channel dials with TLS and ALPN ``h2``.  A failed handshake drops the connection.
* Tokens: the token client's header goes on every outbound call; the token verifier sees
  every inbound call's metadata before its body is read.  A refusal is answered at once
  (UNAUTHENTICATED unless the verifier chose another status) and nothing reaches a handler.
* Message sizes: ``max_send_message_size`` bounds what this side sends (checked before
  sending: RESOURCE_EXHAUSTED locally), ``max_receive_message_size`` what it accepts.  An
  oversize message is refused *per stream* (RESOURCE_EXHAUSTED; the rest of it is discarded
  and its flow-control credit returned), so the connection's other calls go on.  purerpc
  itself would raise inside the connection's reader and drop every call on the connection;
  so would a compressed message with an unknown encoding, a request without a body or with
  malformed headers - all of these are per-stream errors here.  Compressed messages (gzip,
  deflate) are inflated with the size limit applied to the inflated size.
* Time limits on the server: the TLS handshake, the client's HTTP/2 preface and its first
  call's headers must arrive within ``handshake_timeout`` (a silent, idle or byte-at-a-time
  client is dropped), and a request must arrive completely within ``read_timeout`` after its
  headers (or the client's ``grpc-timeout``), else DEADLINE_EXCEEDED.  Connections whose
  peer vanishes later are reaped by TCP keepalive (purerpc enables it: about 7.5 minutes).
* Anything the HTTP/2 layer cannot parse ends that one connection; other connections and the
  server are unaffected.

Structured concurrency: who owns what
--------------------------------------
* ``serve()`` opens one nursery.  It holds the accept loop(s), one task per accepted connection
  (whose own nursery holds one task per in-flight request), and - unless ``async with
  transport`` is active - the client channels.  Cancelling ``serve`` ends all of them, and
  ``serve`` raises the ``Cancelled`` (it never returns normally).
* ``async with GrpcTransport(...)``: for a node that only sends (an external client), or to
  keep channels independent of the server.  While the block is active it owns the channels
  instead of ``serve``; leaving it closes them.
* A channel is one *holder task* that opened the TCP connection and stays inside the purerpc
  socket's ``async with`` (purerpc's sockets own anyio task groups, so they must be entered and
  left by one long-lived task).  It is started with ``nursery.start`` from the first ``call``
  that needs it (the connect runs under that call's deadline) and ends when its
  ``CancelScope`` is cancelled: retirement (after its last in-flight call and once its
  RaftStream has nothing pending), connection loss, :meth:`GrpcTransport.aclose`, or the end
  of its owner.  No task outlives its owner.
* The holder also opens a nursery for the channel's RaftStream: one task per open stream
  (:meth:`GrpcTransport._run_link`, with a child reader of answers and a deadline sweeper).
  Reply callbacks run in that reader (or, for a request refused before it was sent, in the
  caller of ``send_batch``).  The task ends with the stream or the channel, failing every
  request still pending.  On the server, a RaftStream is a request task of its connection
  with a child nursery: its writer, and one task per group whose requests need ``raft_step``
  (alive while that group has some queued).
* Connection setup takes a per-peer :class:`trio.Lock` only; a slow or dead peer never blocks
  calls to other peers.  Calls never wait for one another otherwise (HTTP/2 multiplexes them).
* Calls made while nothing owns channels (neither ``serve`` nor ``async with`` active) or after
  :meth:`~GrpcTransport.aclose` fail at once with UNAVAILABLE.

purerpc
-------
Only purerpc's HTTP/2 gRPC protocol layer is used (``GRPCProtoSocket``, its events and
``GRPCConfiguration``), not its ``Server``/``Client``/stub layer, because that layer:

* catches everything with bare ``except:`` in per-request and per-connection tasks (so it
  swallows ``Cancelled``, logs shutdown as warnings, and turns a handler's exception into
  CANCELLED with ``repr(sys.exc_info())`` as the message);
* parses the request with protobuf before our code sees it (a malformed request becomes
  CANCELLED, not INVALID_ARGUMENT; we need the bytes for the codec anyway);
* listens on every interface with ``SO_REUSEPORT`` and never closes accepted sockets;
* leaves a client call waiting forever when the connection drops or the server resets the
  stream, and leaks a stream (client and server side) for every call abandoned by a deadline.

:class:`_Socket` therefore subclasses ``GRPCProtoSocket`` and replaces its event loop
(``_listen``, ``_reader_thread``): events for unknown or abandoned streams are ignored instead
of crashing the connection, a stream reset by the peer or a lost connection wakes the stream's
reader, and a stream abandoned by a deadline is reset (RST_STREAM CANCEL) and forgotten.  This
relies on purerpc 0.8 internals (``_streams``, ``_incoming_events``, ``_grpc_connection``,
``_socket``, ``message_read_buffers``, ``GRPCConnection``'s per-event methods and
``MessageReadBuffer``'s parser state, which :class:`_ReadBuffer` takes over); a purerpc
upgrade must re-check them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import ssl
import struct
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Final

import anyio
import anyio.abc
import trio
from anyio.streams.tls import TLSStream
from google.protobuf.message import DecodeError
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
    ResponseReceived,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import ProtocolError
from purerpc.grpclib.headers import HeaderDict
from purerpc.grpclib.status import Status as WireStatus

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport._proto.data_service_pb2 import DataServiceRequest, DataServiceResponse
from nuraft_mesg.transport.base import (
    DataHandler,
    DataRequest,
    PeerWatcher,
    ReplyCallback,
    Status,
    StepError,
    StepHandler,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope, decode_group_msg, encode_group_msg
from nuraft_mesg.transport.security import (
    TlsConfig,
    TokenClient,
    TokenVerifier,
    fetch_token,
    metadata_of,
    run_verifier,
)
from nuraft_mesg.transport.status import (
    NodeStatus,
    StatusHandler,
    decode_status,
    decode_status_request,
    encode_status,
    encode_status_request,
)
from nuraft_mesg.transport.stream import (
    ClientLink,
    ServerSession,
    check_request,
    deliver,
    encode_reply,
    is_uuid,
    step_error_status,
)
from nuraft_mesg.transport.throttle import LogThrottle

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_TIMEOUT",
    "GrpcTransport",
    "parse_address",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
"""Largest message sent or accepted (bytes) when no limit is given (0)."""
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds an accepted connection has for the TLS handshake, the HTTP/2 preface and the
headers of its first call."""
DEFAULT_READ_TIMEOUT: Final = 30.0
"""Seconds a request has to arrive completely after its headers (unless its grpc-timeout is
shorter)."""

_MAX_MESSAGE_SIZE_LIMIT: Final = (1 << 30) - 1
"""purerpc advertises an HTTP/2 window of twice the message size, which must stay < 2**31."""

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
_STREAM_CLOSE_GRACE: Final = 5.0
"""Seconds a RaftStream we half-closed (channel retired, nothing pending) may take to be
ended by the peer before it is reset."""

_H2_NO_ERROR: Final = 0x0
_H2_CANCEL: Final = 0x8
_ACCEPT_RETRY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED, errno.EPROTO}
)
_ACCEPT_RETRY_DELAY: Final = 0.1
_PING_WHEN_QUIET: Final = 1.0
"""A call on a channel that received nothing for this long (seconds, or half the call's
timeout if shorter) also sends an HTTP/2 PING."""
_RECONNECT_BACKOFF: Final = 0.05
_RECONNECT_BACKOFF_MAX: Final = 0.5
"""After a failed connection attempt, calls to that peer fail at once (UNAVAILABLE) for
50 ms, doubling with each further failure up to 0.5 s, so that a dead peer does not turn
every Raft message into a connection attempt."""

# HTTP/2 RST_STREAM error code -> gRPC status (gRPC's PROTOCOL-HTTP2 mapping).
_RESET_STATUS: Final = {
    0x7: Status.UNAVAILABLE,  # REFUSED_STREAM
    0x8: Status.CANCELLED,  # CANCEL
    0xB: Status.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: Status.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


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


def _status(code: int) -> Status:
    try:
        return Status(code)
    except ValueError:
        return Status.UNKNOWN


# ---------------------------------------------------------------------------------------------
# purerpc protocol layer, made robust
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------------
class _Channel:
    """The connection to one peer, held open by a holder task (see the module doc)."""

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
    (:class:`~nuraft_mesg.transport.stream.ClientLink`) and the state of its task (run by
    :meth:`GrpcTransport._run_link` in the channel's nursery: a reader of answer frames and a
    sweeper of deadlines)."""

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


class GrpcTransport(Transport):
    """purerpc server plus per-peer channel cache for one node (see the module doc).

    Args:
        server_uuid: this node's uuid; requests must name it in ``intended_addr``.
        host, port: where :meth:`serve` listens (port 0 picks a free port, see :attr:`port`;
            host ``""`` means every interface).
        lookup_peer: peer uuid -> ``"host:port"``; ``""`` (or an exception) means unknown.
            Called when a channel to that peer is (re)built, never while one is usable.
        max_message_size: largest message sent or accepted, in bytes (requests and replies
            of every method alike), unless one of the next two says otherwise.
        max_send_message_size, max_receive_message_size: largest message this side sends /
            accepts (0: ``max_message_size``), as nuraft_mesg's two Params.  Applied to the
            server (replies sent, requests accepted) and to every channel (requests sent,
            replies accepted).
        tls: TLS for the server and every channel (None: plain TCP).
        token_client: adds its header to every outbound call.
        token_verifier: checks every inbound call before anything else.
        handshake_timeout: seconds an accepted connection has to finish the TLS handshake,
            send its HTTP/2 preface and start its first call.
        read_timeout: seconds a request has to arrive completely after its headers.
        enable_stream: serve ``RaftStream`` and send batches over it (:meth:`send_batch`).
            False: RaftStream is answered UNIMPLEMENTED, as by a C++ node, and batches go as
            unary RaftSteps.
    """

    supports_ping: ClassVar[bool] = True

    def __init__(
        self,
        *,
        server_uuid: str,
        host: str = "0.0.0.0",
        port: int = 0,
        lookup_peer: Callable[[str], str],
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_send_message_size: int = 0,
        max_receive_message_size: int = 0,
        tls: TlsConfig | None = None,
        token_client: TokenClient | None = None,
        token_verifier: TokenVerifier | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        enable_stream: bool = True,
    ) -> None:
        for name, size in (
            ("max_message_size", max_message_size or 1),
            ("max_send_message_size", max_send_message_size or 1),
            ("max_receive_message_size", max_receive_message_size or 1),
        ):
            if not 0 < size <= _MAX_MESSAGE_SIZE_LIMIT:
                raise ValueError(f"{name} must be in 1..{_MAX_MESSAGE_SIZE_LIMIT} (0: default)")
        if not 0 <= port < 65536:
            raise ValueError(f"port out of range: {port}")
        if not (handshake_timeout > 0 and read_timeout > 0):
            raise ValueError("handshake_timeout and read_timeout must be positive")
        self.server_uuid = server_uuid
        self._uuid = uuid.UUID(server_uuid)
        self.host = host
        self.port = port
        """The listening port: the constructor's, or the bound one once :meth:`serve` runs."""
        self._lookup_peer = lookup_peer
        default_size = max_message_size or DEFAULT_MAX_MESSAGE_SIZE
        self.max_send_message_size = max_send_message_size or default_size
        self.max_receive_message_size = max_receive_message_size or default_size
        self.tls = tls
        # Built now so that unreadable files fail here; the server's is rebuilt by serve().
        self._client_ssl = tls.client_context() if tls is not None else None
        self._token_client = token_client
        self._token_verifier = token_verifier
        self.handshake_timeout = handshake_timeout
        self.read_timeout = read_timeout
        self._refusals = LogThrottle()
        # purerpc's own size check (on its write buffer) and window size use the larger
        # limit; ours (before sending, and _ReadBuffer on receipt) are per direction.
        wire_limit = max(self.max_send_message_size, self.max_receive_message_size)
        self._server_config = GRPCConfiguration(
            client_side=False, max_message_length=wire_limit
        )
        self._client_config = GRPCConfiguration(
            client_side=True, max_message_length=wire_limit
        )
        self.enable_stream = enable_stream
        self._paths = _PATHS | {_STREAM_PATH[:2]} if enable_stream else _PATHS
        self._handler: StepHandler | None = None
        """The handler serve() runs with (told about lost peers if it is a PeerWatcher)."""
        self._peers: dict[str, _PeerSlot] = {}
        self._channels: set[_Channel] = set()
        self._channel_nursery: trio.Nursery | None = None
        self._context: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None
        self._serving = False
        self._closed = False

    # -- ownership ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _owning_channels(self) -> AsyncIterator[trio.Nursery]:
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

    async def __aenter__(self) -> GrpcTransport:
        if self._context is not None:
            raise RuntimeError("GrpcTransport is already entered")
        context = self._owning_channels()
        await context.__aenter__()
        self._context = context
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        context, self._context = self._context, None
        assert context is not None
        try:
            with trio.CancelScope(shield=True):
                await self.aclose()
        finally:
            try:
                suppress = await context.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                if exc is not None and group.exceptions == (exc,):
                    return False  # just the block's own exception: let it out unwrapped
                raise
        return suppress

    async def aclose(self) -> None:
        """Close every channel and refuse further calls (idempotent)."""
        self._closed = True
        channels = list(self._channels)
        for channel in channels:
            channel.scope.cancel()
        for channel in channels:
            await channel.finished.wait()

    # -- server ---------------------------------------------------------------------------------
    async def serve(
        self,
        handler: StepHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._serving:
            raise RuntimeError("GrpcTransport.serve is already running")
        self._serving = True
        self._handler = handler
        try:
            # Read the certificate files at every (re)start, so restart_server picks up new ones.
            server_ssl = self.tls.server_context() if self.tls is not None else None
            listener = await anyio.create_tcp_listener(
                local_host=self.host or None, local_port=self.port
            )
            async with listener:
                self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
                async with self._owning_channels() as nursery:
                    for sub in listener.listeners:
                        assert isinstance(sub, anyio.abc.SocketListener)
                        nursery.start_soon(self._accept_loop, sub, nursery, handler, server_ssl)
                    log.info("%s serving RaftStep on port %d", self.server_uuid, self.port)
                    task_status.started(self.port)
                    await trio.sleep_forever()
        finally:
            self._serving = False
            self._handler = None

    async def _accept_loop(
        self,
        listener: anyio.abc.SocketListener,
        nursery: trio.Nursery,
        handler: StepHandler,
        server_ssl: ssl.SSLContext | None,
    ) -> None:
        while True:
            try:
                sock = await listener.accept()
            except anyio.BrokenResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno in _ACCEPT_RETRY_ERRNOS:
                    log.warning("accept failed (%s); retrying", cause)
                    await trio.sleep(_ACCEPT_RETRY_DELAY)
                    continue
                raise
            nursery.start_soon(self._serve_connection, sock, handler, server_ssl)

    async def _serve_connection(
        self,
        sock: anyio.abc.SocketStream,
        handler: StepHandler,
        server_ssl: ssl.SSLContext | None = None,
    ) -> None:
        remote = sock.extra(anyio.abc.SocketAttribute.remote_address, None)
        host = str(remote[0]) if isinstance(remote, tuple) and remote else str(remote)
        async with sock:
            # The TLS handshake, the HTTP/2 preface and the first call must arrive in time: a
            # silent, half-open, byte-at-a-time or idle client is dropped, not kept forever.
            with trio.CancelScope(
                deadline=trio.current_time() + self.handshake_timeout
            ) as preface_scope:
                stream: anyio.abc.ByteStream = sock
                if server_ssl is not None:
                    try:
                        stream = await TLSStream.wrap(
                            sock, server_side=True, ssl_context=server_ssl,
                            standard_compatible=False,
                        )
                    except (anyio.BrokenResourceError, anyio.EndOfStream, OSError,
                            ssl.SSLError) as exc:
                        self._refused(host, "TLS handshake", repr(exc.__cause__ or exc))
                        return
                try:
                    async with (
                        _Socket(
                            self._server_config, stream,
                            receive_limit=self.max_receive_message_size,
                        ) as grpc_socket,
                        trio.open_nursery() as requests,
                        contextlib.aclosing(grpc_socket._listen()) as streams,
                    ):
                        grpc_socket.remote = host
                        async for stream_ in streams:
                            preface_scope.deadline = math.inf  # a client that makes calls
                            requests.start_soon(self._handle_stream, grpc_socket, stream_,
                                                handler)
                        requests.cancel_scope.cancel()  # the client is gone: nobody to answer
                except* Exception as group:
                    log.debug("connection from %s ended: %r", remote, group.exceptions)
            if preface_scope.cancelled_caught:
                self._refused(host, "connection", "no TLS handshake, HTTP/2 preface and first "
                              f"call within {self.handshake_timeout:g}s")

    def _refused(self, host: str, what: str, why: str, level: int = logging.INFO) -> None:
        """Log a refused connection or call, throttled per (remote host, what)."""
        count = self._refusals.hit((host, what))
        if count:
            log.log(level, "%s refused %s from %s: %s [%d in this %gs window]",
                    self.server_uuid, what, host, why, count, self._refusals.window)

    async def _handle_stream(
        self, grpc_socket: _Socket, stream: _Stream, handler: StepHandler
    ) -> None:
        responded = False
        try:
            with trio.CancelScope() as scope:
                stream.scope = scope
                if stream.failure is not None:
                    return
                code, message, payload = await self._process(stream, handler, grpc_socket)
                if stream.failure is None:
                    if code == Status.OK and not stream._response_started:  # a RaftStream's is
                        await stream.start_response()
                        await stream.send_bytes(payload)
                    await stream.close(WireStatus(int(code), message))
                    responded = True
        except TransportError:
            pass  # the stream was reset or the connection lost: nobody to answer
        except Exception as exc:
            log.debug("could not answer RaftStep on stream %s: %r", stream.stream_id, exc)
        finally:
            grpc_socket.discard(stream, reset=not responded)

    async def _process(
        self, stream: _Stream, handler: StepHandler, grpc_socket: _Socket
    ) -> tuple[Status, str, bytes]:
        """Read one request and run the handler; returns the status, message and reply.

        The headers are checked first (malformed, unknown method, token): a refusal is
        answered before the body is read.  The body must then arrive within
        ``read_timeout`` (or the client's deadline, if shorter).  A RaftStream passes the
        same header checks, then runs (:meth:`_serve_raft_stream`) without a read deadline."""
        remote = grpc_socket.remote
        head = await stream.next_event()
        if not isinstance(head, RequestReceived):  # cannot happen: _listen sends it first
            return Status.INTERNAL, "request without headers", b""
        head_at = trio.current_time()
        path = (head.service_name, head.method_name)
        read_deadline = head_at + self.read_timeout
        if head.timeout is not None:
            read_deadline = min(read_deadline, head_at + head.timeout.total_seconds())
        data: bytes | None = None
        extra = False
        ended = False
        streaming = False
        with trio.move_on_at(read_deadline):
            # Headers alone: anything wrong with them is answered before the body is read.
            rejection: tuple[Status, str] | None = getattr(head, "rejection", None)
            if rejection is not None:
                return rejection[0], rejection[1], b""
            if path not in self._paths:
                return (
                    Status.UNIMPLEMENTED,
                    f"Method {head.service_name}/{head.method_name} is not implemented",
                    b"",
                )
            if self._token_verifier is not None:
                code, why = await run_verifier(
                    self._token_verifier, metadata_of(head.custom_metadata)
                )
                if code != Status.OK:
                    self._refused(remote, f"{head.method_name} call",
                                  f"{code.name}: {why}", logging.WARNING)
                    return code, why or "refused by the token verifier", b""
            streaming = path == _STREAM_PATH[:2]
            while not streaming:
                event = await stream.next_event()
                if isinstance(event, MessageReceived):
                    extra = data is not None
                    data = event.data
                elif isinstance(event, _MessageRejected):
                    return event.status, event.message, b""
                elif isinstance(event, RequestEnded):
                    ended = True
                    break
        if streaming:
            deadline = math.inf  # long-lived; only a grpc-timeout of the client's bounds it
            if head.timeout is not None:
                deadline = head_at + head.timeout.total_seconds()
            with trio.move_on_at(deadline):
                return await self._serve_raft_stream(stream, handler, grpc_socket)
            return Status.DEADLINE_EXCEEDED, "Deadline Exceeded", b""
        if not ended:
            return (
                Status.DEADLINE_EXCEEDED,
                f"request not received within {read_deadline - head_at:g}s",
                b"",
            )
        if path == _DATA_PATH[:2]:
            return await self._process_data(head, data, extra, handler)
        if path == _STATUS_PATH[:2]:
            return self._process_status(data, extra, handler)
        if data is None or extra:
            return Status.INVALID_ARGUMENT, "RaftStep takes exactly one message", b""
        try:
            request = decode_group_msg(data)
        except BadRequest as exc:
            return Status.INVALID_ARGUMENT, f"Bad request: {exc}", b""
        problem = check_request(request, self._uuid, self.server_uuid)
        if problem is not None:
            return Status.INVALID_ARGUMENT, problem, b""

        deadline = math.inf
        if head.timeout is not None:
            deadline = trio.current_time() + head.timeout.total_seconds()
        try:
            with trio.move_on_at(deadline):
                reply = await handler.raft_step(request)
                return encode_reply(request.group_id, reply, self.max_send_message_size)
            return Status.DEADLINE_EXCEEDED, "Deadline Exceeded", b""
        except StepError as exc:
            status, message = step_error_status(exc)
            return status, message, b""
        except Exception as exc:
            log.exception("RaftStep handler failed (group %s)", request.group_id)
            return Status.INTERNAL, f"RaftStep failed: {type(exc).__name__}: {exc}", b""

    # -- server: RaftStream ----------------------------------------------------------------------
    async def _serve_raft_stream(
        self, stream: _Stream, handler: StepHandler, grpc_socket: _Socket
    ) -> tuple[Status, str, bytes]:
        """One RaftStream, after its headers passed the checks: a reader of request frames
        (this task) and a writer of answer frames, in a nursery of the stream.  Returns OK
        once the client ended its side and everything is answered, or the status that ends
        the stream (an undecodable or oversize frame); the connection goes on either way.
        An abrupt end (stream reset by the client, connection lost) tells the handler's
        ``peer_lost`` about the client."""
        session = ServerSession(handler, self._uuid, self.server_uuid, self.max_send_message_size)
        try:
            await stream.start_response()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stream_writer, stream, session)
                result = await self._stream_reader(stream, session, nursery)
                if result is None:  # the client ended its side: answer what is pending
                    await session.idle.wait()
                nursery.cancel_scope.cancel()
            return result or (Status.OK, "", b"")
        finally:
            session.close()
            if stream.failure is not None and session.sender and (
                stream.reset_by_peer or grpc_socket.lost_abruptly
            ):
                self._peer_lost(session.sender, handler)

    @staticmethod
    async def _stream_reader(
        stream: _Stream, session: ServerSession, nursery: trio.Nursery
    ) -> tuple[Status, str, bytes] | None:
        try:
            while True:
                if session.backlogged:  # the client does not read its answers: stop reading
                    await session.wait_drained()
                event = await stream.next_event()
                if isinstance(event, MessageReceived):
                    problem = session.on_frame(event.data, nursery)
                    if problem is not None:
                        return problem[0], problem[1], b""
                elif isinstance(event, _MessageRejected):  # too large, or undecodable
                    return event.status, event.message, b""
                elif isinstance(event, RequestEnded):
                    session.end()
                    return None
        except TransportError as exc:  # reset, or connection lost: nobody to answer
            return exc.status, exc.message, b""

    @staticmethod
    async def _stream_writer(stream: _Stream, session: ServerSession) -> None:
        """Send every answer accumulated so far as one frame (or several, by size), as soon
        as there is any: answers made in one event-loop turn go together."""
        try:
            while True:
                await session.wait_output()
                for frame in session.take_frames():
                    await stream.send_bytes(frame)
                session.written()
        except TransportError:
            pass  # reset, or connection lost: the stream's scope is being cancelled

    # -- server: data service and status ---------------------------------------------------------
    async def _process_data(
        self, head: Any, data: bytes | None, extra: bool, handler: StepHandler
    ) -> tuple[Status, str, bytes]:
        """``DataService/Call``: checked like RaftStep (uuid group id, our intended_addr),
        then the handler bound to (name, group) runs under the caller's deadline."""
        if not isinstance(handler, DataHandler):
            return Status.UNIMPLEMENTED, "this node serves no data service", b""
        if data is None or extra:
            return Status.INVALID_ARGUMENT, "DataService/Call takes exactly one message", b""
        pb = DataServiceRequest()
        try:
            pb.ParseFromString(data)
        except DecodeError as exc:
            return Status.INVALID_ARGUMENT, f"Bad request: {exc}", b""
        if not is_uuid(pb.group_id):
            return Status.INVALID_ARGUMENT, f"Bad GroupID {pb.group_id!r}", b""
        if not is_uuid(pb.intended_addr) or uuid.UUID(pb.intended_addr) != self._uuid:
            return (
                Status.INVALID_ARGUMENT,
                f"intended addr: [{pb.intended_addr}], our addr: [{self.server_uuid}]",
                b"",
            )
        request = DataRequest(pb.group_id, pb.request_name, pb.payload, pb.intended_addr)
        deadline = math.inf
        if head.timeout is not None:
            deadline = trio.current_time() + head.timeout.total_seconds()
        try:
            with trio.move_on_at(deadline):
                reply = await handler.data_request(request)
                payload = DataServiceResponse(payload=reply).SerializeToString()
                if len(payload) > self.max_send_message_size:
                    return (
                        Status.RESOURCE_EXHAUSTED,
                        f"response of {len(payload)} bytes is larger than the maximum send "
                        f"size ({self.max_send_message_size})",
                        b"",
                    )
                return Status.OK, "", payload
            return Status.DEADLINE_EXCEEDED, "Deadline Exceeded", b""
        except StepError as exc:
            if exc.status == Status.OK:
                return Status.INTERNAL, f"StepError without an error status: {exc.message}", b""
            return exc.status, exc.message, b""
        except Exception as exc:
            log.exception("data service handler %r failed (group %s)", pb.request_name,
                          pb.group_id)
            return Status.INTERNAL, f"data handler failed: {type(exc).__name__}: {exc}", b""

    @staticmethod
    def _process_status(
        data: bytes | None, extra: bool, handler: StepHandler
    ) -> tuple[Status, str, bytes]:
        if not isinstance(handler, StatusHandler):
            return Status.UNIMPLEMENTED, "this node serves no status", b""
        if extra:
            return Status.INVALID_ARGUMENT, "Admin/Status takes one message", b""
        try:
            group_ids = decode_status_request(data or b"")
            return Status.OK, "", encode_status(handler.node_status(group_ids))
        except BadRequest as exc:
            return Status.INVALID_ARGUMENT, str(exc), b""
        except Exception as exc:
            log.exception("status handler failed")
            return Status.INTERNAL, f"status failed: {type(exc).__name__}: {exc}", b""

    # -- client ---------------------------------------------------------------------------------
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
        if len(payload) > self.max_send_message_size:
            raise TransportError(
                Status.RESOURCE_EXHAUSTED,
                f"request of {len(payload)} bytes is larger than the maximum send size "
                f"({self.max_send_message_size})",
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

    # -- client: RaftStream ----------------------------------------------------------------------
    async def send_batch(
        self,
        peer: str,
        batch: Sequence[tuple[GroupEnvelope, ReplyCallback]],
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
        if not self.enable_stream:
            await super().send_batch(peer, batch, timeout=timeout, nursery=nursery)
            return
        if self._closed:
            _fail_all(batch, TransportError(Status.UNAVAILABLE, "transport is closed"))
            return
        slot = self._peers.get(peer)
        channel = slot.channel if slot is not None else None
        if channel is not None and channel.usable and channel.stream_unsupported:
            await super().send_batch(peer, batch, timeout=timeout, nursery=nursery)
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
                await super().send_batch(peer, good, timeout=left, nursery=nursery)
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
                    "https" if self.tls is not None else "http",
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
                link = _Link(channel, stream, self.server_uuid, self.max_send_message_size)
                links.start_soon(self._run_link, link)
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

    async def _run_link(self, link: _Link) -> None:
        """The link's task (in the channel's nursery): reads answers, sweeps deadlines; when
        either ends the link (or the channel closes), every pending request fails."""
        channel = link.channel
        stream = link.stream
        failure: TransportError | None = None
        abrupt = False
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._link_sweeper, link)
                    failure, abrupt = await self._link_reader(link)
                    nursery.cancel_scope.cancel()
        finally:
            link.done = True
            if channel.link is link:
                channel.link = None
            error = failure or link.core.failure or stream.failure or TransportError(
                Status.UNAVAILABLE, f"RaftStream to {channel.peer} closed"
            )
            link.core.fail_all(error)
            grpc_socket = channel.socket
            if grpc_socket is not None:
                if stream.remote_ended and not link.half_closed and grpc_socket.alive:
                    with contextlib.suppress(Exception):  # end our side too
                        grpc_socket._grpc_connection.end_request(stream.stream_id)
                grpc_socket.discard(stream, reset=not stream.remote_ended)
            channel.in_flight -= 1
            if channel.retired and channel.in_flight == 0:
                channel.scope.cancel()
            if abrupt:
                self._peer_lost(channel.peer)

    async def _link_reader(self, link: _Link) -> tuple[TransportError | None, bool]:
        """Deliver answer frames until the stream ends; returns why (None: the peer ended
        it after our half-close) and whether that was abrupt (reset by the peer)."""
        stream = link.stream
        channel = link.channel
        peer = channel.peer
        core = link.core
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
                        link.wake()
                elif isinstance(event, _MessageRejected):  # too large, or undecodable
                    return TransportError(
                        event.status, f"RaftStream answer refused: {event.message}"
                    ), False
                elif isinstance(event, ResponseEnded):
                    status = _status(event.status.int_value)
                    if status != Status.OK:
                        return TransportError(status, event.status.status_message), False
                    if link.half_closed:
                        return None, False
                    return TransportError(
                        Status.UNAVAILABLE, f"RaftStream closed by {peer}"
                    ), False
        except TransportError as exc:  # reset by the peer, or connection lost
            return exc, stream.reset_by_peer

    async def _link_sweeper(self, link: _Link) -> None:
        """Fail requests whose deadline passed (sleeping until the earliest one, no polling),
        and half-close the stream once the channel is retired and nothing is pending."""
        core = link.core
        channel = link.channel
        while True:
            link.woken = False
            now = trio.current_time()
            expired = core.expire(now)
            grpc_socket = channel.socket
            if (
                expired is not None and grpc_socket is not None
                and grpc_socket.unanswered_ping_age() >= expired / 2
            ):
                age = grpc_socket.unanswered_ping_age()
                channel.retire(f"PING unanswered for {age:.2f}s")
                link.fail(TransportError(
                    Status.UNAVAILABLE, f"{channel.peer} did not answer a PING for {age:.2f}s"
                ))
                self._peer_lost(channel.peer)
                return
            if channel.retired and not core.pending and not link.half_closed:
                link.half_closed = True
                link.close_by = now + _STREAM_CLOSE_GRACE
                try:
                    await link.stream.close()
                except Exception as exc:
                    link.fail(TransportError(Status.UNAVAILABLE, f"RaftStream close: {exc!r}"))
                    return
            if link.half_closed and now >= link.close_by:
                link.fail(TransportError(Status.UNAVAILABLE, "RaftStream not ended by the peer"))
                return
            if link.woken:
                continue
            with trio.CancelScope(deadline=min(core.next_deadline(), link.close_by)) as scope:
                link.sweep_scope = scope
                await trio.sleep_forever()

    def _peer_lost(self, peer: str, handler: StepHandler | None = None) -> None:
        """Tell the handler (if it is a PeerWatcher) that the connection with ``peer`` ended
        abruptly: a hint, which it may check with :meth:`ping`."""
        target = handler if handler is not None else self._handler
        if target is None or not isinstance(target, PeerWatcher):
            return
        try:
            target.peer_lost(peer)
        except Exception:
            log.exception("peer_lost(%s) failed", peer)

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
            if self.enable_stream and channel.link is None and not channel.stream_unsupported:
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
        if len(payload) > self.max_send_message_size:
            raise TransportError(
                Status.RESOURCE_EXHAUSTED,
                f"data request of {len(payload)} bytes is larger than the maximum send "
                f"size ({self.max_send_message_size})",
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
                    assert self.tls is not None
                    sock = await anyio.connect_tcp(
                        channel.host, channel.port, ssl_context=self._client_ssl,
                        tls_hostname=self.tls.server_name or channel.host,
                        tls_standard_compatible=False,
                    )
                async with sock:
                    try:
                        async with _Socket(
                            self._client_config,
                            sock,
                            on_lost=channel.scope.cancel,
                            on_goaway=functools.partial(channel.retire, "peer sent GOAWAY"),
                            receive_limit=self.max_receive_message_size,
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
        if self._token_client is None:
            return ()
        try:
            return await fetch_token(self._token_client)
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
                "https" if self.tls is not None else "http",
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


class _StreamUnsupported(Exception):
    """The peer answered RaftStream with UNIMPLEMENTED."""


def _fail_all(
    batch: Sequence[tuple[GroupEnvelope, ReplyCallback]], error: TransportError
) -> None:
    for _, callback in batch:
        deliver(callback, error)


