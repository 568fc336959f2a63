"""The server side of the gRPC transport: :class:`GrpcServer`.

Owns the accept loop(s), one task per accepted connection and, in that connection's nursery,
one task per RPC: unary ``RaftStep``, ``DataService/Call`` and ``Admin/Status``, and the
server side of ``RaftStream`` (a reader of request frames and a writer of answer frames).
Every check (TLS, handshake and read time limits, token, method, uuid, size) happens here,
before a request reaches the handler (docs/transport.md, "Server").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import ssl
import uuid
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc
import trio
from anyio.streams.tls import TLSStream
from google.protobuf.message import DecodeError
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import MessageReceived, RequestEnded, RequestReceived
from purerpc.grpclib.status import Status as WireStatus

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport._proto.data_service_pb2 import DataServiceRequest, DataServiceResponse
from nuraft_mesg.transport.base import (
    DataHandler,
    DataRequest,
    PeerWatcher,
    Status,
    StepError,
    StepHandler,
    TransportError,
)
from nuraft_mesg.transport.codec import decode_group_msg
from nuraft_mesg.transport.grpc.protocol import (
    _DATA_PATH,
    _PATHS,
    _STATUS_PATH,
    _STREAM_PATH,
    _MessageRejected,
    _Socket,
    _Stream,
)
from nuraft_mesg.transport.grpc.settings import Settings
from nuraft_mesg.transport.security import metadata_of, run_verifier
from nuraft_mesg.transport.status import StatusHandler, decode_status_request, encode_status
from nuraft_mesg.transport.stream import (
    ServerSession,
    check_request,
    encode_reply,
    is_uuid,
    step_error_status,
)
from nuraft_mesg.transport.throttle import LogThrottle

log = logging.getLogger(__package__)  # one logger for the whole gRPC transport

_ACCEPT_RETRY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ECONNABORTED, errno.EPROTO}
)
_ACCEPT_RETRY_DELAY: Final = 0.1

Hosting = Callable[[], contextlib.AbstractAsyncContextManager[trio.Nursery]]
"""Opens the nursery :meth:`GrpcServer.serve` runs its tasks in."""


class GrpcServer:
    """The listening half of one node's transport: serves one handler at a time.

    Args:
        settings: shared with the client half (read live: a changed limit applies to the
            next connection).
        host, port: where :meth:`serve` listens (port 0 picks a free port; :attr:`port` is
            the bound one once serving).
    """

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self._refusals = LogThrottle()
        # purerpc's own size check (on its write buffer) and window size use the larger
        # limit; ours (before sending, and _ReadBuffer on receipt) are per direction.
        self._config = GRPCConfiguration(
            client_side=False,
            max_message_length=max(
                settings.max_send_message_size, settings.max_receive_message_size
            ),
        )
        self._paths = _PATHS | {_STREAM_PATH[:2]} if settings.enable_stream else _PATHS
        self.handler: StepHandler | None = None
        """The handler serve() runs with (told about lost peers if it is a PeerWatcher)."""
        self._serving = False

    async def serve(
        self,
        handler: StepHandler,
        hosting: Hosting = trio.open_nursery,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve ``handler`` until cancelled (raises the ``Cancelled``).  Every
        task runs in the nursery ``hosting`` opens: the façade passes the client's
        ``owning_channels``, so that while serving one nursery holds the channels too."""
        if self._serving:
            raise RuntimeError("GrpcTransport.serve is already running")
        self._serving = True
        self.handler = handler
        try:
            # Read the certificate files at every (re)start, so restart_server picks up new ones.
            tls = self.settings.tls
            server_ssl = tls.server_context() if tls is not None else None
            listener = await anyio.create_tcp_listener(
                local_host=self.host or None, local_port=self.port
            )
            async with listener:
                self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
                async with hosting() as nursery:
                    for sub in listener.listeners:
                        assert isinstance(sub, anyio.abc.SocketListener)
                        nursery.start_soon(self._accept_loop, sub, nursery, handler, server_ssl)
                    log.info("%s serving RaftStep on port %d", self.settings.server_uuid, self.port)
                    task_status.started(self.port)
                    await trio.sleep_forever()
        finally:
            self._serving = False
            self.handler = None

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
                deadline=trio.current_time() + self.settings.handshake_timeout
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
                            self._config, stream,
                            receive_limit=self.settings.max_receive_message_size,
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
                              f"call within {self.settings.handshake_timeout:g}s")

    def _refused(self, host: str, what: str, why: str, level: int = logging.INFO) -> None:
        """Log a refused connection or call, throttled per (remote host, what)."""
        count = self._refusals.hit((host, what))
        if count:
            log.log(level, "%s refused %s from %s: %s [%d in this %gs window]",
                    self.settings.server_uuid, what, host, why, count, self._refusals.window)

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
        read_deadline = head_at + self.settings.read_timeout
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
            if self.settings.token_verifier is not None:
                code, why = await run_verifier(
                    self.settings.token_verifier, metadata_of(head.custom_metadata)
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
        problem = check_request(request, self.settings.uuid, self.settings.server_uuid)
        if problem is not None:
            return Status.INVALID_ARGUMENT, problem, b""

        deadline = math.inf
        if head.timeout is not None:
            deadline = trio.current_time() + head.timeout.total_seconds()
        try:
            with trio.move_on_at(deadline):
                reply = await handler.raft_step(request)
                return encode_reply(request.group_id, reply, self.settings.max_send_message_size)
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
        settings = self.settings
        session = ServerSession(
            handler, settings.uuid, settings.server_uuid, settings.max_send_message_size
        )
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
                self.peer_lost(session.sender, handler)

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
        if not is_uuid(pb.intended_addr) or uuid.UUID(pb.intended_addr) != self.settings.uuid:
            return (
                Status.INVALID_ARGUMENT,
                f"intended addr: [{pb.intended_addr}], our addr: [{self.settings.server_uuid}]",
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
                if len(payload) > self.settings.max_send_message_size:
                    return (
                        Status.RESOURCE_EXHAUSTED,
                        f"response of {len(payload)} bytes is larger than the maximum send "
                        f"size ({self.settings.max_send_message_size})",
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

    def peer_lost(self, peer: str, handler: StepHandler | None = None) -> None:
        """Tell the handler (if it is a PeerWatcher) that the connection with ``peer`` ended
        abruptly: a hint, which it may check with :meth:`ping`."""
        target = handler if handler is not None else self.handler
        if target is None or not isinstance(target, PeerWatcher):
            return
        try:
            target.peer_lost(peer)
        except Exception:
            log.exception("peer_lost(%s) failed", peer)
