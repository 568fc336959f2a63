"""The :class:`~nuraft_mesg.transport.base.Transport` over gRPC: :class:`GrpcTransport`.

A façade: it validates the configuration, builds the server half
(:class:`~nuraft_mesg.transport.grpc.server.GrpcServer`) and the client half
(:class:`~nuraft_mesg.transport.grpc.client.GrpcClient`), and decides who owns the client's
channels: ``serve`` (whose nursery then hosts them too) or ``async with`` (for a node that
only sends, or to keep channels independent of the server).  Calls made while neither is
active, or after :meth:`GrpcTransport.aclose`, fail at once with UNAVAILABLE.
docs/transport.md describes the whole transport.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import ClassVar, Generic, TypeVar, cast, overload

import trio

from nuraft_mesg.transport.base import (
    DataRequest,
    ReplyCallback,
    StepHandler,
    Transport,
)
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.grpc.client import GrpcClient
from nuraft_mesg.transport.grpc.server import GrpcServer
from nuraft_mesg.transport.grpc.settings import (
    _MAX_MESSAGE_SIZE_LIMIT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_READ_TIMEOUT,
    Settings,
)
from nuraft_mesg.transport.security import TlsConfig, TokenClient, TokenVerifier
from nuraft_mesg.transport.status import NodeStatus

T = TypeVar("T")


class _Shared(Generic[T]):
    """An attribute of the transport kept in its :class:`Settings`, which both halves read
    live (so that setting it applies to the server and the client alike)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, transport: None, owner: type) -> _Shared[T]: ...
    @overload
    def __get__(self, transport: GrpcTransport, owner: type) -> T: ...
    def __get__(self, transport: GrpcTransport | None, owner: type) -> _Shared[T] | T:
        if transport is None:
            return self
        return cast(T, getattr(transport.settings, self._name))

    def __set__(self, transport: GrpcTransport, value: T) -> None:
        setattr(transport.settings, self._name, value)


class GrpcTransport(Transport):
    """One node's gRPC transport: a :class:`GrpcServer` and a :class:`GrpcClient` sharing
    one :class:`Settings` (docs/transport.md).

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
    # The configuration, kept in the Settings both halves read live:
    server_uuid = _Shared[str]()
    max_send_message_size = _Shared[int]()
    max_receive_message_size = _Shared[int]()
    tls = _Shared["TlsConfig | None"]()
    handshake_timeout = _Shared[float]()
    read_timeout = _Shared[float]()
    enable_stream = _Shared[bool]()

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
        default_size = max_message_size or DEFAULT_MAX_MESSAGE_SIZE
        self.settings = Settings(
            server_uuid=server_uuid,
            max_send_message_size=max_send_message_size or default_size,
            max_receive_message_size=max_receive_message_size or default_size,
            tls=tls,
            token_client=token_client,
            token_verifier=token_verifier,
            handshake_timeout=handshake_timeout,
            read_timeout=read_timeout,
            enable_stream=enable_stream,
        )
        self.server = GrpcServer(self.settings, host, port)
        self.client = GrpcClient(
            self.settings, lookup_peer, peer_lost=self.server.peer_lost,
            unary_batch=super().send_batch,  # unary RaftSteps, one chain per (peer, group)
        )
        self._context: contextlib.AbstractAsyncContextManager[trio.Nursery] | None = None

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        """The listening port: the constructor's, or the bound one once :meth:`serve` runs."""
        return self.server.port

    # -- ownership ------------------------------------------------------------------------------
    async def __aenter__(self) -> GrpcTransport:
        if self._context is not None:
            raise RuntimeError("GrpcTransport is already entered")
        context = self.client.owning_channels()
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
        await self.client.aclose()

    async def serve(
        self,
        handler: StepHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.server.serve(handler, self.client.owning_channels, task_status=task_status)

    # -- calls (the client half) -----------------------------------------------------------------
    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> GroupEnvelope:
        return await self.client.call(peer, request, timeout=timeout)

    async def send_batch(
        self,
        peer: str,
        batch: Sequence[tuple[GroupEnvelope, ReplyCallback]],
        *,
        timeout: float,  # noqa: ASYNC109 - each request's deadline
        nursery: trio.Nursery,
    ) -> None:
        await self.client.send_batch(peer, batch, timeout=timeout, nursery=nursery)

    async def ping(
        self,
        peer: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> None:
        await self.client.ping(peer, timeout=timeout)

    async def data_call(
        self,
        peer: str,
        request: DataRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> bytes:
        return await self.client.data_call(peer, request, timeout=timeout)

    async def status_call(
        self,
        peer: str,
        group_ids: tuple[str, ...] | list[str] = (),
        *,
        timeout: float,  # noqa: ASYNC109 - like call()
    ) -> NodeStatus:
        return await self.client.status_call(peer, group_ids, timeout=timeout)
