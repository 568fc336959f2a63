"""The transport interface: what a Manager needs from a network.

One implementation speaks purerpc on loopback or a real network
(:mod:`nuraft_mesg.transport.grpc`); the public test harness swaps in a simulated one.  The
Manager never imports either directly: it is handed a :class:`Transport`.

The shape follows nuraft_mesg: a request/reply exchange per Raft message, ``RaftStep
(RaftGroupMsg) -> RaftGroupMsg``, routed by group id.  Requests carry the destination peer's
uuid in ``intended_addr`` so that a stale address mapping is detected (INVALID_ARGUMENT)
instead of delivering a message to the wrong process.

Senders hand a transport *batches* (:meth:`Transport.send_batch`): every request queued for
one peer in one event-loop turn, across all groups.  A transport that multiplexes (the gRPC
one streams batches over one long-lived HTTP/2 stream per peer) sends the batch as one frame
and delivers each reply through its callback as it arrives; the default here falls back to
one :meth:`Transport.call` per request.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeAlias, runtime_checkable

import trio

from nuraft_mesg.errors import ResultCode
from nuraft_mesg.transport.codec import GroupEnvelope

__all__ = [
    "DataHandler",
    "DataRequest",
    "FastStepHandler",
    "PeerWatcher",
    "ReplyCallback",
    "StepReply",
    "StepError",
    "StepHandler",
    "Status",
    "Transport",
    "TransportError",
]


class Status(enum.IntEnum):
    """gRPC status codes used by the transport (the numbers are gRPC's)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    def to_result_code(self) -> ResultCode:
        """nuraft_mesg's gRPC status -> NuRaft code mapping (inventory §2.5)."""
        return _STATUS_TO_CODE.get(self, ResultCode.FAILED)


_STATUS_TO_CODE = {
    Status.OK: ResultCode.OK,
    Status.DEADLINE_EXCEEDED: ResultCode.TIMEOUT,
    Status.UNAVAILABLE: ResultCode.SERVER_NOT_FOUND,
    Status.NOT_FOUND: ResultCode.SERVER_NOT_FOUND,
    Status.CANCELLED: ResultCode.CANCELLED,
    Status.ABORTED: ResultCode.CANCELLED,
    Status.FAILED_PRECONDITION: ResultCode.TERM_MISMATCH,
    Status.ALREADY_EXISTS: ResultCode.SERVER_ALREADY_EXISTS,
    Status.INVALID_ARGUMENT: ResultCode.BAD_REQUEST,
    Status.UNIMPLEMENTED: ResultCode.BAD_REQUEST,
    Status.UNAUTHENTICATED: ResultCode.BAD_REQUEST,
    Status.PERMISSION_DENIED: ResultCode.BAD_REQUEST,
    Status.RESOURCE_EXHAUSTED: ResultCode.BAD_REQUEST,
    Status.OUT_OF_RANGE: ResultCode.BAD_REQUEST,
}


class StepError(Exception):
    """Raised by a :class:`StepHandler` to answer a RaftStep with a non-OK gRPC status
    (for example NOT_FOUND for a group this node does not host)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


class TransportError(Exception):
    """A RaftStep to a peer failed: no route, connection error, deadline, or a non-OK status
    from the peer.  ``status`` says which; ``code`` is nuraft_mesg's mapping of it."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message

    @property
    def code(self) -> ResultCode:
        return self.status.to_result_code()


class StepHandler(Protocol):
    """The server side: the Manager routes a request to its group and returns the reply."""

    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        """Handle one RaftStep.  Raise :class:`StepError` for a non-OK status."""
        ...


ReplyCallback: TypeAlias = Callable[[GroupEnvelope | TransportError], None]
"""Called once per request, in trio context, with the reply or the error; must not block."""

StepReply: TypeAlias = Callable[[GroupEnvelope | StepError], None]
"""How a :class:`FastStepHandler` answers: called once, with the reply or the refusal."""


@runtime_checkable
class FastStepHandler(Protocol):
    """Optional fast path of a :class:`StepHandler` for batched transports: take a request
    without a task of its own.  A transport calls :meth:`step_nowait` first and falls back to
    ``await raft_step(...)`` (in a task) when it returns False."""

    def step_nowait(self, request: GroupEnvelope, respond: StepReply) -> bool:
        """Hand ``request`` to its group without blocking and return True, then call
        ``respond`` exactly once later (or now).  False: this request needs the general
        path (nothing was done and ``respond`` will not be called)."""
        ...


@runtime_checkable
class PeerWatcher(Protocol):
    """Optional: told when the transport saw the connection to or from a peer end abruptly
    (connection lost, reset) -- a hint that the peer may be down, never a proof."""

    def peer_lost(self, peer: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DataRequest:
    """One data-service call (``nuraft_mesg.DataService/Call``): ``payload`` for the handler
    bound to ``(name, group_id)`` on the peer.  ``intended_addr`` is the peer's uuid (the
    transport fills it in when empty), checked like RaftStep's."""

    group_id: str
    name: str
    payload: bytes
    intended_addr: str = ""


@runtime_checkable
class DataHandler(Protocol):
    """The server side of the data service (a :class:`StepHandler` may also be one; a
    transport answers UNIMPLEMENTED for data calls when its handler is not)."""

    async def data_request(self, request: DataRequest) -> bytes:
        """Run the bound handler and return its response bytes.  Raise :class:`StepError`
        for a non-OK status (UNIMPLEMENTED: nothing bound under that name and group)."""
        ...


class Transport(ABC):
    """Server plus per-peer clients for one node.

    Lifecycle: the Manager runs :meth:`serve` in its nursery (``await nursery.start(...)``)
    and cancels it last, after every group has stopped; :meth:`aclose` then drops client
    connections.
    """

    supports_ping: ClassVar[bool] = False
    """Whether :meth:`ping` can tell a live peer from a dead one.  Groups go quiet when idle
    only over a transport that can (a quiet follower relies on pings to notice that its
    leader died)."""

    @abstractmethod
    async def serve(
        self,
        handler: StepHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept RaftSteps until cancelled; report the bound port through ``task_status``."""

    @abstractmethod
    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - a gRPC deadline travels with the call
    ) -> GroupEnvelope:
        """One RaftStep round trip to ``peer`` (a uuid string), within ``timeout`` seconds.

        Raises:
            TransportError: the call failed; the message may or may not have been processed.
        """

    async def send_batch(
        self,
        peer: str,
        batch: Sequence[tuple[GroupEnvelope, ReplyCallback]],
        *,
        timeout: float,  # noqa: ASYNC109 - each request's deadline
        nursery: trio.Nursery,
    ) -> None:
        """Send every request of ``batch`` to ``peer``, in order, and return once they are on
        their way (not answered).  Each callback is then called exactly once, from a task in
        ``nursery`` (or the transport's own), with the reply or a :class:`TransportError`
        (DEADLINE_EXCEEDED after ``timeout`` seconds).  Never raises for a failed peer: the
        callbacks get the error.

        The default runs one :meth:`call` per request in ``nursery``, one at a time per
        (peer, group) and in order -- NuRaft's one request in flight per peer and group --
        so a unary transport does not reorder a group's requests (concurrent unary calls
        overtake one another); different groups go concurrently.
        """
        chains: dict[tuple[str, str], deque[tuple[GroupEnvelope, ReplyCallback]]]
        chains = self.__dict__.setdefault("_unary_chains", {})
        for item in batch:
            key = (peer, item[0].group_id)
            chain = chains.get(key)
            if chain is not None:
                chain.append(item)  # its task is running and will get to it
                continue
            chains[key] = deque((item,))
            nursery.start_soon(self._run_chain, key, chains, timeout)

    async def _run_chain(
        self,
        key: tuple[str, str],
        chains: dict[tuple[str, str], deque[tuple[GroupEnvelope, ReplyCallback]]],
        timeout: float,  # noqa: ASYNC109 - each request's deadline
    ) -> None:
        chain = chains[key]
        try:
            while chain:
                request, on_reply = chain[0]
                result: GroupEnvelope | TransportError
                try:
                    result = await self.call(key[0], request, timeout=timeout)
                except TransportError as exc:
                    result = exc
                except Exception as exc:  # a transport bug: report it as a failed call
                    result = TransportError(Status.UNKNOWN, f"{type(exc).__name__}: {exc}")
                chain.popleft()
                on_reply(result)
        finally:
            if chains.get(key) is chain:
                del chains[key]  # cancelled: the rest is abandoned with its nursery

    async def ping(
        self,
        peer: str,
        *,
        timeout: float,  # noqa: ASYNC109 - how long to wait for the answer
    ) -> None:
        """Check that ``peer`` is reachable and answering, within ``timeout`` seconds (node-
        level liveness, independent of any group).  Only meaningful when
        :attr:`supports_ping`.

        Raises:
            TransportError: no answer (UNIMPLEMENTED when this transport cannot ping).
        """
        raise TransportError(Status.UNIMPLEMENTED, f"{type(self).__name__} cannot ping")

    async def data_call(
        self,
        peer: str,
        request: DataRequest,
        *,
        timeout: float,  # noqa: ASYNC109 - a gRPC deadline travels with the call
    ) -> bytes:
        """One data-service round trip to ``peer``; returns the handler's response bytes.

        The default refuses (UNIMPLEMENTED, which callers see as BAD_REQUEST), so a transport
        that only carries Raft traffic needs nothing more.

        Raises:
            TransportError: the call failed (``code`` maps its status to a ResultCode).
        """
        raise TransportError(
            Status.UNIMPLEMENTED, f"{type(self).__name__} does not carry the data service"
        )

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close client connections (called after :meth:`serve` has stopped)."""
