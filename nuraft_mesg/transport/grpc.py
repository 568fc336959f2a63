"""The real transport: ``nuraft_mesg.Messaging/RaftStep`` over gRPC (HTTP/2) with purerpc.

Wire behaviour follows nuraft_mesg (inventory §2.3-§2.5):

* server: a request must decode (:mod:`~nuraft_mesg.transport.codec`), carry a uuid
  ``group_id`` and a uuid ``intended_addr`` equal to this node's uuid, otherwise the answer is
  INVALID_ARGUMENT.  The handler's :class:`~nuraft_mesg.transport.base.StepError` becomes its
  status; any other exception becomes INTERNAL (logged) and the server keeps serving.  The reply
  echoes the request's ``group_id`` and carries the handler's message and ``dest_addr``; its
  ``intended_addr`` and ``group_type`` are empty, as in nuraft_mesg.  A ``grpc-timeout`` sent by
  the client bounds the handler (DEADLINE_EXCEEDED).
* client: one HTTP/2 connection ("channel") per peer uuid, shared by every group, resolved
  lazily through ``lookup_peer``.  INVALID_ARGUMENT from the peer retires the channel
  (nuraft_mesg's ``bad_service``): the next call re-resolves the address and reconnects.  A lost
  connection (peer restarted, reset) is noticed by the channel's reader and the next call
  reconnects.  A call on a channel that has been quiet for a second (or half its timeout) also
  sends an HTTP/2 PING; if the call times out with that PING unanswered for half the timeout,
  the channel is presumed stale (peer host gone without a FIN, address moved) and retired too.
  A slow but live peer answers PINGs and keeps its channel.  After a failed connection
  attempt, calls to that peer fail at once with UNAVAILABLE for a short, growing backoff
  (50 ms doubling to 0.5 s).

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
  ``CancelScope`` is cancelled: retirement (after its last in-flight call), connection loss,
  :meth:`GrpcTransport.aclose`, or the end of its owner.  No task outlives its owner.
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
``_socket``, ``message_read_buffers``); a purerpc upgrade must re-check them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc
import trio
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import SocketWrapper
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
from purerpc.grpclib.status import Status as WireStatus

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport.base import (
    Status,
    StepError,
    StepHandler,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope, decode_group_msg, encode_group_msg

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "GrpcTransport", "parse_address"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
"""Largest RaftGroupMsg sent or accepted (bytes)."""

_MAX_MESSAGE_SIZE_LIMIT: Final = (1 << 30) - 1
"""purerpc advertises an HTTP/2 window of twice the message size, which must stay < 2**31."""

_SERVICE: Final = "nuraft_mesg.Messaging"
_METHOD: Final = "RaftStep"
_MESSAGE_TYPE: Final = "nuraft_mesg.RaftGroupMsg"

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


class _H2Connection(GRPCConnection):  # type: ignore[misc]
    """purerpc's connection, but reporting RST_STREAM and GOAWAY instead of dropping them."""

    def _stream_reset(self, event: Any) -> list[object]:
        return [_StreamReset(event.stream_id, int(event.error_code))]

    def _connection_terminated(self, event: Any) -> list[object]:
        return [_GoAway()]


class _Stream(GRPCProtoStream):  # type: ignore[misc]
    """One RPC.  ``failure`` says why it ended early; ``scope`` is the server handler's."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.failure: TransportError | None = None
        self.scope: trio.CancelScope | None = None
        self.remote_ended = False

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
            return await self.receive_event()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise self.failure or TransportError(Status.UNAVAILABLE, "stream closed") from None

    async def send_bytes(self, payload: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        await self._send(payload)


class _Socket(GRPCProtoSocket):  # type: ignore[misc]
    """One HTTP/2 connection, either side.  ``alive`` turns False once it is lost;
    ``going_away`` once the peer sent GOAWAY (no new streams)."""

    StreamClass = _Stream

    def __init__(
        self,
        config: Any,
        sock: anyio.abc.SocketStream,
        on_lost: Callable[[], None] | None = None,
        on_goaway: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config, sock)
        # Swap in our connection class (purerpc hard-codes GRPCConnection in __init__).
        self._grpc_connection = _H2Connection(config=config)
        self._socket = SocketWrapper(self._grpc_connection, sock)
        self._on_lost = on_lost
        self._on_goaway = on_goaway
        self.alive = True
        self.going_away = False
        self.last_receive = trio.current_time()
        self._last_ping = -math.inf

    # -- event loop (replaces GRPCSocket._listen / _reader_thread) ----------------------------
    async def _listen(self) -> AsyncGenerator[_Stream, None]:
        streams: dict[int, _Stream] = self._streams
        reason = "closed by peer"
        try:
            while True:
                try:
                    data = await self._socket.recv(self._receive_buffer_size)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return
                self.last_receive = trio.current_time()
                try:
                    events = self._grpc_connection.receive_data(data)
                except Exception as exc:
                    reason = f"protocol error: {exc!r}"
                    raise
                await self._socket.flush()
                for event in events:
                    sid: int = event.stream_id
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
            self._lost(reason)

    async def _reader_thread(self) -> None:
        async with contextlib.aclosing(self._listen()) as events:
            async for _ in events:
                raise ProtocolError("the server opened a stream")

    def _lost(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        failure = TransportError(Status.UNAVAILABLE, f"connection lost: {reason}")
        for stream in list(self._streams.values()):
            stream.abort(failure)
        if self._on_lost is not None:
            self._on_lost()

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

        Unread data is acknowledged so that the connection's flow-control window is not lost.
        """
        sid: int = stream.stream_id
        conn = self._grpc_connection
        if self._streams.get(sid) is stream:
            del self._streams[sid]
            conn.message_read_buffers.pop(sid, None)
            if reset and self.alive:
                with contextlib.suppress(Exception):  # h2 refuses if it is closed already
                    conn.reset_stream(sid, _H2_CANCEL)
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
        self.retired = False
        self.in_flight = 0

    @property
    def usable(self) -> bool:
        socket = self.socket
        return not self.retired and socket is not None and socket.alive and not socket.going_away

    def retire(self, why: str, level: int = logging.INFO) -> None:
        """Take no new calls; close once the calls in flight have finished."""
        if not self.retired:
            log.log(level, "retiring channel to %s at %s: %s", self.peer, self.authority, why)
            self.retired = True
        if self.in_flight == 0:
            self.scope.cancel()


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
        max_message_size: largest RaftGroupMsg sent or accepted, in bytes.
    """

    def __init__(
        self,
        *,
        server_uuid: str,
        host: str = "0.0.0.0",
        port: int = 0,
        lookup_peer: Callable[[str], str],
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if not 0 < max_message_size <= _MAX_MESSAGE_SIZE_LIMIT:
            raise ValueError(f"max_message_size must be in 1..{_MAX_MESSAGE_SIZE_LIMIT}")
        if not 0 <= port < 65536:
            raise ValueError(f"port out of range: {port}")
        self.server_uuid = server_uuid
        self._uuid = uuid.UUID(server_uuid)
        self.host = host
        self.port = port
        """The listening port: the constructor's, or the bound one once :meth:`serve` runs."""
        self._lookup_peer = lookup_peer
        self._max_message_size = max_message_size
        self._server_config = GRPCConfiguration(
            client_side=False, max_message_length=max_message_size
        )
        self._client_config = GRPCConfiguration(
            client_side=True, max_message_length=max_message_size
        )
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
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host or None, local_port=self.port
            )
            async with listener:
                self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
                async with self._owning_channels() as nursery:
                    for sub in listener.listeners:
                        assert isinstance(sub, anyio.abc.SocketListener)
                        nursery.start_soon(self._accept_loop, sub, nursery, handler)
                    log.info("%s serving RaftStep on port %d", self.server_uuid, self.port)
                    task_status.started(self.port)
                    await trio.sleep_forever()
        finally:
            self._serving = False

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, nursery: trio.Nursery, handler: StepHandler
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
            nursery.start_soon(self._serve_connection, sock, handler)

    async def _serve_connection(self, sock: anyio.abc.SocketStream, handler: StepHandler) -> None:
        remote = sock.extra(anyio.abc.SocketAttribute.remote_address, None)
        async with sock:
            try:
                async with (
                    _Socket(self._server_config, sock) as grpc_socket,
                    trio.open_nursery() as requests,
                    contextlib.aclosing(grpc_socket._listen()) as streams,
                ):
                    async for stream in streams:
                        requests.start_soon(self._handle_stream, grpc_socket, stream, handler)
                    requests.cancel_scope.cancel()  # the client is gone: nobody to answer
            except* Exception as group:
                log.debug("connection from %s ended: %r", remote, group.exceptions)

    async def _handle_stream(
        self, grpc_socket: _Socket, stream: _Stream, handler: StepHandler
    ) -> None:
        responded = False
        try:
            with trio.CancelScope() as scope:
                stream.scope = scope
                if stream.failure is not None:
                    return
                code, message, payload = await self._process(stream, handler)
                if stream.failure is None:
                    if code == Status.OK:
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

    async def _process(self, stream: _Stream, handler: StepHandler) -> tuple[Status, str, bytes]:
        """Read one request and run the handler; returns the status, message and reply."""
        head: Any = None
        data: bytes | None = None
        extra = False
        while True:
            event = await stream.next_event()
            if isinstance(event, RequestReceived):
                head = event
            elif isinstance(event, MessageReceived):
                extra = data is not None
                data = event.data
            elif isinstance(event, RequestEnded):
                break
        if (head.service_name, head.method_name) != (_SERVICE, _METHOD):
            return (
                Status.UNIMPLEMENTED,
                f"Method {head.service_name}/{head.method_name} is not implemented",
                b"",
            )
        if data is None or extra:
            return Status.INVALID_ARGUMENT, "RaftStep takes exactly one message", b""
        try:
            request = decode_group_msg(data)
        except BadRequest as exc:
            return Status.INVALID_ARGUMENT, f"Bad request: {exc}", b""
        if not _is_uuid(request.group_id):
            return Status.INVALID_ARGUMENT, f"Bad GroupID {request.group_id!r}", b""
        if not _is_uuid(request.intended_addr):
            return Status.INVALID_ARGUMENT, f"Bad intended addr {request.intended_addr!r}", b""
        if uuid.UUID(request.intended_addr) != self._uuid:
            return (
                Status.INVALID_ARGUMENT,
                f"intended addr: [{request.intended_addr}], our addr: [{self.server_uuid}]",
                b"",
            )
        if not request.message.type.is_request:
            return Status.INVALID_ARGUMENT, f"{request.message.type.name} is not a request", b""

        deadline = math.inf
        if head.timeout is not None:
            deadline = trio.current_time() + head.timeout.total_seconds()
        try:
            with trio.move_on_at(deadline):
                reply = await handler.raft_step(request)
                return self._encode_reply(request, reply)
            return Status.DEADLINE_EXCEEDED, "Deadline Exceeded", b""
        except StepError as exc:
            if exc.status == Status.OK:
                return Status.INTERNAL, f"StepError without an error status: {exc.message}", b""
            return exc.status, exc.message, b""
        except Exception as exc:
            log.exception("RaftStep handler failed (group %s)", request.group_id)
            return Status.INTERNAL, f"RaftStep failed: {type(exc).__name__}: {exc}", b""

    def _encode_reply(
        self, request: GroupEnvelope, reply: GroupEnvelope
    ) -> tuple[Status, str, bytes]:
        try:
            if reply.message.type.is_request:
                raise BadRequest(f"{reply.message.type.name} is not a response")
            payload = encode_group_msg(request.group_id, "", "", reply.message, reply.dest_addr)
        except Exception as exc:  # BadRequest, or not a GroupEnvelope at all
            log.error("RaftStep handler returned an unusable reply: %r", exc)
            return Status.INTERNAL, f"cannot encode reply: {exc}", b""
        if len(payload) > self._max_message_size:
            return Status.RESOURCE_EXHAUSTED, f"reply of {len(payload)} bytes is too large", b""
        return Status.OK, "", payload

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
        if len(payload) > self._max_message_size:
            raise TransportError(
                Status.RESOURCE_EXHAUSTED, f"request of {len(payload)} bytes is too large"
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
                sock = await anyio.connect_tcp(channel.host, channel.port)
                async with sock:
                    try:
                        async with _Socket(
                            self._client_config,
                            sock,
                            on_lost=channel.scope.cancel,
                            on_goaway=functools.partial(channel.retire, "peer sent GOAWAY"),
                        ) as grpc_socket:
                            channel.socket = grpc_socket
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
            self._channels.discard(channel)
            slot = self._peers.get(channel.peer)
            if slot is not None and slot.channel is channel:
                slot.channel = None
            channel.finished.set()

    async def _unary(self, channel: _Channel, payload: bytes, ping_when_quiet: float) -> bytes:
        grpc_socket = channel.socket
        assert grpc_socket is not None
        channel.in_flight += 1
        stream: _Stream | None = None
        done = False
        try:
            stream = await grpc_socket.start_request(
                "http", _SERVICE, _METHOD, _MESSAGE_TYPE, channel.authority
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
                Status.UNAVAILABLE, f"RaftStep to {channel.peer} failed: {exc!r}"
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
        elif isinstance(event, ResponseEnded):
            status = event.status
            if status.int_value != Status.OK:
                raise TransportError(_status(status.int_value), status.status_message)
            if data is None:
                raise TransportError(Status.INTERNAL, "missing response")
            return data


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
