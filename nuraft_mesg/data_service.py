"""The data service: application payloads between group members, outside the Raft log.

nuraft_mesg's "data service" (inventory §3), on the same server and port as RaftStep::

    async def fetch(request: bytes) -> bytes:          # the server side: bytes in, bytes out
        return blobs[request]

    mgr.bind_data_service_request("fetch_data", gid, fetch)          # -> bool

    ctx = mgr.group(gid)
    await ctx.data_service_request_unidirectional(ALL, "push_data", b"...")   # -> None
    blob = await ctx.data_service_request_bidirectional(LEADER, "fetch_data", b"key")

Destinations (:data:`Destination`):

* a peer uuid (``str``): a member of the group's current configuration (or the server being
  added), never this node;
* a server id (``int``): the member with that id in the current configuration;
* :attr:`RoleRegex.LEADER`: the group's leader (BAD_REQUEST when this node leads,
  SERVER_NOT_FOUND when no leader is known);
* :attr:`RoleRegex.ALL` (unidirectional only): every member of the *current* configuration
  except this node, plus a server being added.  Members added later are reached, removed ones
  are not (nuraft_mesg sends to every peer NuRaft ever connected to, removed ones included).
  Per-peer errors are ignored: the call succeeds once every send has finished (as
  nuraft_mesg);
* :attr:`RoleRegex.FOLLOWER`, :attr:`RoleRegex.ANY`: BAD_REQUEST (not implemented, as in
  nuraft_mesg).

Errors are the :mod:`nuraft_mesg.errors` exceptions; gRPC statuses map to them with
nuraft_mesg's table (:meth:`~nuraft_mesg.transport.base.Status.to_result_code`), e.g. a name
nobody bound on the peer arrives as UNIMPLEMENTED and is raised as :class:`BadRequest`.

Both kinds wait for the peer's handler to finish (nuraft_mesg's unidirectional caller waits
for the response too); a unidirectional call just drops the response bytes.  Every call has
the deadline ``ManagerConfig.data_request_timeout`` (``data_request_deadline_secs``, 2 s).
Failed sends are logged throttled per (peer, error): the 1st, 2nd, 4th, 8th, ... failure in a
60 s window (nuraft_mesg PR #78), at DEBUG for unidirectional calls (PR #92) and WARNING for
bidirectional ones.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, TypeAlias

import trio

from nuraft_mesg.errors import (
    BadRequest,
    RaftError,
    ResultCode,
    ServerNotFound,
)
from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.transport.base import DataRequest, Status, StepError, Transport, TransportError
from nuraft_mesg.transport.throttle import LogThrottle

__all__ = [
    "ALL",
    "ANY",
    "FOLLOWER",
    "LEADER",
    "DataGroup",
    "DataService",
    "DataServiceHandler",
    "DataServiceNode",
    "Destination",
    "RoleRegex",
]


class RoleRegex(enum.IntEnum):
    """nuraft_mesg's ``role_regex`` destinations."""

    LEADER = 0
    FOLLOWER = 1
    ALL = 2
    ANY = 3


LEADER: Final = RoleRegex.LEADER
FOLLOWER: Final = RoleRegex.FOLLOWER
ALL: Final = RoleRegex.ALL
ANY: Final = RoleRegex.ANY

Destination: TypeAlias = "str | int | RoleRegex"
"""A peer uuid, a server id, or a :class:`RoleRegex` (nuraft_mesg's ``destination_t``)."""

DataServiceHandler: TypeAlias = Callable[[bytes], Awaitable[bytes]]
"""The server side of a bound request: the request bytes in, the response bytes out.

Raise a :class:`~nuraft_mesg.errors.RaftError` to fail the call with its code (the caller
gets the same exception class; BadRequest travels as OUT_OF_RANGE so that the caller's
channel is not retired), or :class:`~nuraft_mesg.transport.base.StepError` for a specific
gRPC status.  Any other exception fails the call with INTERNAL (the caller gets
:class:`~nuraft_mesg.errors.Failed`) and is logged."""

# A handler's RaftError -> a gRPC status that the caller maps back to the same code
# (INVALID_ARGUMENT is avoided: it would make the caller retire its channel).
_CODE_TO_STATUS: Final = {
    ResultCode.CANCELLED: Status.CANCELLED,
    ResultCode.TIMEOUT: Status.DEADLINE_EXCEEDED,
    ResultCode.SERVER_NOT_FOUND: Status.NOT_FOUND,
    ResultCode.TERM_MISMATCH: Status.FAILED_PRECONDITION,
    ResultCode.SERVER_ALREADY_EXISTS: Status.ALREADY_EXISTS,
    ResultCode.BAD_REQUEST: Status.OUT_OF_RANGE,
}


class DataTimeouts(Protocol):
    """The one setting the data service reads (a :class:`~nuraft_mesg.manager.ManagerConfig`)."""

    @property
    def data_request_timeout(self) -> float: ...


class DataServiceNode(Protocol):
    """What the data service needs of its node (the Manager): who it is, how to reach peers,
    and the deadline of a call.  A protocol, so that this module does not import the Manager."""

    @property
    def server_uuid(self) -> str: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def config(self) -> DataTimeouts: ...


class DataGroup(Protocol):
    """What the data service reads of a group (a :class:`~nuraft_mesg.group.RaftGroup`) to
    resolve a destination."""

    @property
    def group_id(self) -> str: ...

    @property
    def stopped(self) -> bool: ...

    @property
    def core(self) -> RaftNode: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> str: ...


_LogThrottle = LogThrottle
"""The shared throttle (:mod:`nuraft_mesg.transport.throttle`), under its former name."""


def _join(payload: bytes | bytearray | memoryview | Sequence[bytes]) -> bytes:
    """nuraft_mesg sends a list of blobs as their concatenation."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return b"".join(payload)


class DataService:
    """A Manager's data service: the bindings (server side) and the sends (client side).

    Made by the Manager (``manager.data_service``); the public calls are
    :meth:`Manager.bind_data_service_request` and the group context's
    ``data_service_request_*``.  Bindings live here, not in the transport, so they survive
    :meth:`Manager.restart_server`.
    """

    def __init__(self, manager: DataServiceNode, *, enabled: bool) -> None:
        self._manager = manager
        self.enabled = enabled
        self._bindings: dict[tuple[str, str], DataServiceHandler] = {}
        self._throttle = _LogThrottle()
        self.log = logging.getLogger(f"nuraft_mesg.data_service.{manager.server_uuid}")

    # -- bindings ----------------------------------------------------------------------------
    def bind(self, name: str, group_id: str, handler: DataServiceHandler | None) -> bool:
        """Bind ``handler`` to requests named ``name`` for ``group_id``.  False if the data
        service is off, the handler is None, the group id is not a uuid, or ``(name,
        group_id)`` is already bound."""
        if not self.enabled or handler is None:
            return False
        try:
            uuidlib.UUID(group_id)
        except (ValueError, TypeError, AttributeError):
            self.log.warning("bind_data_service_request: group id %r is not a uuid", group_id)
            return False
        key = (name, group_id)
        if key in self._bindings:
            return False
        self._bindings[key] = handler
        return True

    def unbind(self, name: str, group_id: str) -> bool:
        """Remove a binding; False if there was none."""
        return self._bindings.pop((name, group_id), None) is not None

    @property
    def bindings(self) -> list[tuple[str, str]]:
        """Every bound ``(name, group_id)``."""
        return list(self._bindings)

    # -- server side -------------------------------------------------------------------------
    async def serve(self, request: DataRequest) -> bytes:
        """Run the handler bound for ``request`` (the transport's DataHandler call)."""
        if not self.enabled:
            raise StepError(Status.UNIMPLEMENTED, "the data service is disabled on this node")
        handler = self._bindings.get((request.name, request.group_id))
        if handler is None:
            raise StepError(
                Status.UNIMPLEMENTED,
                f"generic RPC {request.name}|{request.group_id} not registered",
            )
        try:
            result: object = await handler(request.payload)
        except RaftError as exc:
            raise StepError(_CODE_TO_STATUS.get(exc.code, Status.INTERNAL), str(exc)) from None
        if isinstance(result, bytearray | memoryview):
            result = bytes(result)
        if not isinstance(result, bytes):
            raise TypeError(
                f"data service handler {request.name!r} returned {type(result).__name__}, "
                "not bytes"
            )
        return result

    # -- client side -------------------------------------------------------------------------
    def _targets(self, group: DataGroup, dest: Destination, *, bidirectional: bool) -> list[str]:
        """nuraft_mesg's ``get_peer_id``: the peer uuids ``dest`` stands for (see module doc)."""
        if group.stopped:
            raise ServerNotFound(f"group {group.group_id} is not running here")
        core = group.core
        me = self._manager.server_uuid
        members = list(core.config.servers)
        joiner = core.joining_server
        if joiner is not None and joiner.id not in core.config:
            members.append(joiner)
        if isinstance(dest, RoleRegex):
            if dest == RoleRegex.ALL:
                if bidirectional:
                    raise BadRequest("a bidirectional request cannot go to ALL")
                return [s.endpoint for s in members if s.endpoint and s.endpoint != me]
            if dest == RoleRegex.LEADER:
                if group.is_leader:
                    raise BadRequest("this node is the leader: it cannot send to LEADER")
                leader = group.leader_id
                if not leader:
                    raise ServerNotFound(f"group {group.group_id} has no known leader")
                return [leader]
            raise BadRequest(f"destination {dest.name} is not implemented")
        if isinstance(dest, bool):
            raise BadRequest(f"bad destination {dest!r}")
        if isinstance(dest, int):
            for srv in members:
                if srv.id == dest and srv.endpoint and srv.endpoint != me:
                    return [srv.endpoint]
            raise ServerNotFound(f"no server {dest} in group {group.group_id}")
        if isinstance(dest, str):
            try:
                peer = str(uuidlib.UUID(dest))
            except ValueError:
                raise BadRequest(f"destination {dest!r} is not a uuid") from None
            if peer != me and any(s.endpoint == peer for s in members):
                return [peer]
            raise ServerNotFound(f"peer {dest} is not a member of group {group.group_id}")
        raise BadRequest(f"bad destination {dest!r}")

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise ServerNotFound("the data service is disabled on this node")

    async def _send(
        self, group: DataGroup, peer: str, name: str, payload: bytes, *, bidirectional: bool
    ) -> bytes:
        request = DataRequest(group.group_id, name, payload, intended_addr=peer)
        mgr = self._manager
        try:
            return await mgr.transport.data_call(
                peer, request, timeout=mgr.config.data_request_timeout
            )
        except TransportError as exc:
            code = exc.code
            count = self._throttle.hit((peer, int(code)))
            if count:
                self.log.log(
                    logging.WARNING if bidirectional else logging.DEBUG,
                    "data request %r (group %s) to %s failed: %s [%s; failure %d in this %gs "
                    "window]",
                    name, group.group_id, peer, exc.message, code.name, count,
                    self._throttle.window,
                )
            raise RaftError.for_code(
                code, f"data request {name!r} to {peer} failed: {exc}"
            ) from None

    async def unidirectional(
        self,
        group: DataGroup,
        dest: Destination,
        name: str,
        payload: bytes | bytearray | memoryview | Sequence[bytes],
    ) -> None:
        """Send and wait for the handler(s) to finish; ALL ignores per-peer errors."""
        self._check_enabled()
        peers = self._targets(group, dest, bidirectional=False)
        data = _join(payload)
        if not (isinstance(dest, RoleRegex) and dest == RoleRegex.ALL):
            await self._send(group, peers[0], name, data, bidirectional=False)
            return

        async def one(peer: str) -> None:
            with contextlib.suppress(RaftError):  # broadcasts ignore per-peer errors
                await self._send(group, peer, name, data, bidirectional=False)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)

    async def bidirectional(
        self,
        group: DataGroup,
        dest: Destination,
        name: str,
        payload: bytes | bytearray | memoryview | Sequence[bytes],
    ) -> bytes:
        """Send to one peer and return its handler's response bytes."""
        self._check_enabled()
        (peer,) = self._targets(group, dest, bidirectional=True)
        return await self._send(group, peer, name, _join(payload), bidirectional=True)
