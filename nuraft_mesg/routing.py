"""How incoming RaftSteps reach their group: the server side of the Manager.

``raft_step`` is the general path (one task per request: client writes and reads, joins that
create a group, add-server), ``step_nowait`` the fast path (no task: the message goes straight
into the group's inbox, a full inbox is answered UNAVAILABLE at once).  docs/architecture.md,
"An incoming message", follows one through.

A mixin of :class:`~nuraft_mesg.manager.Manager`, separate because it is the boundary where
untrusted envelopes from the network are checked and turned into group inbox items; the rest
of the Manager drives groups on behalf of the local application.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from nuraft_mesg.admission import Admission
from nuraft_mesg.errors import (
    BadRequest,
    Busy,
    NotLeader,
    RaftError,
    ResultCode,
)
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.liveness import Liveness
from nuraft_mesg.manager_config import ManagerConfig, to_server_id
from nuraft_mesg.raft.node import NO_LEADER, Proposal
from nuraft_mesg.raft.types import (
    ClusterConfig,
    LogType,
    Message,
    MsgType,
    ServerConfig,
)
from nuraft_mesg.reads import decode_client_read
from nuraft_mesg.storage.interfaces import StateManager
from nuraft_mesg.transport.base import (
    Status,
    StepError,
    StepReply,
)
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.peers import PeerSender

__all__ = ["StepRouting"]

_GENERAL_PATH = frozenset({MsgType.CLIENT_REQUEST, MsgType.ADD_SERVER_REQUEST,
                           MsgType.CLIENT_READ_REQUEST})
"""Requests that :meth:`Manager.step_nowait` leaves to :meth:`Manager.raft_step`."""


class StepRouting:
    """The RaftStep server side of a Manager (state initialised by its ``__init__``)."""

    server_id: int
    config: ManagerConfig
    admission: Admission
    log: logging.Logger
    _groups: dict[str, RaftGroup]
    _closing: bool
    _peers: PeerSender | None
    _liveness: Liveness
    _infra: trio.Nursery | None

    if TYPE_CHECKING:  # defined by Manager
        async def _ensure_group(
            self, group_id: str, group_type: str, smgr: StateManager | None,
            bootstrap: ClusterConfig | None = None,
        ) -> RaftGroup: ...

    # ==========================================================================================
    # The RaftStep server side
    # ==========================================================================================
    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        """Route one incoming RaftStep to its group (nuraft_mesg's proto_service)."""
        msg = request.message
        if not msg.type.is_request:
            raise StepError(Status.INVALID_ARGUMENT, f"{msg.type.name} is not a request")
        group = self._groups.get(request.group_id)
        if group is None or group.stopped:
            if msg.type != MsgType.JOIN_CLUSTER_REQUEST or self._closing:
                raise StepError(Status.NOT_FOUND, f"Missing RAFT group {request.group_id}")
            why_not = self._invalid_invitation(msg)
            if why_not:  # create no group for a join that its core would refuse anyway
                raise StepError(Status.NOT_FOUND,
                                f"Missing RAFT group {request.group_id} ({why_not})")
            try:
                group = await self._ensure_group(request.group_id, request.group_type, None)
            except RaftError as exc:
                raise StepError(Status.NOT_FOUND, f"cannot create group: {exc}") from None
        if msg.type == MsgType.ADD_SERVER_REQUEST:
            refusal = self._learn_joiner(group, msg)
            if refusal is not None:
                return self._envelope(group, refusal)
        if msg.type == MsgType.CLIENT_READ_REQUEST:
            return self._envelope(group, await self._client_read(group, msg))
        started = trio.current_time()
        if msg.type == MsgType.CLIENT_REQUEST:  # a forwarded or external write
            try:
                self.admission.enter(group.group_id, group.params.max_pending_proposals)
            except Busy:
                return self._envelope(group, Message(
                    msg.type.response_type, group.core.term, self.server_id, msg.src,
                    result_code=ResultCode.SERVER_IS_BUSY))
            try:
                return await self._client_step(group, msg)
            finally:
                self.admission.leave(group.group_id)
        try:
            reply = await group.handle_request(msg, quiesce=request.quiesce)
        except RaftError as exc:
            raise self._step_refused(exc) from None
        return self._step_answer(group, msg, started, reply)

    async def _client_step(self, group: RaftGroup, msg: Message) -> GroupEnvelope:
        """A client_request (admitted): the answer, once its entries are applied here."""
        try:
            reply, applied = await group.handle_client_request(msg)
        except RaftError as exc:
            raise self._step_refused(exc) from None
        if not reply.accepted:
            return self._envelope(group, reply)
        # Answer forwarded and external writes once they are committed and applied here,
        # so "accepted" means durable on a quorum (NuRaft's blocking return mode).
        last = reply.next_index - 1
        prop = Proposal(reply.term, last - len(msg.entries) + 1, last)
        slot = applied if applied is not None else group.watch_apply(prop)
        with trio.move_on_after(self.config.client_request_timeout):
            try:
                results = await slot.wait()
            except RaftError as exc:
                reply = Message(reply.type, reply.term, reply.src, reply.dest,
                                result_code=exc.code)
            else:
                reply = Message(reply.type, reply.term, reply.src, reply.dest,
                                next_index=reply.next_index, accepted=True,
                                context=results[-1] if results else b"",
                                results=tuple(results))
            return self._envelope(group, reply)
        reply = Message(reply.type, reply.term, reply.src, reply.dest,
                        result_code=ResultCode.TIMEOUT)
        return self._envelope(group, reply)

    async def _client_read(self, group: RaftGroup, msg: Message) -> Message:
        """An external client's read, served here (any member: followers read through
        the leader's index).  A refusal names the leader in ``dest`` when one is known, so
        the client can redirect."""
        try:
            mode, query = decode_client_read(msg.entries)
            answer = await group.read(query, mode=mode,
                                      timeout=self.config.client_request_timeout)
        except NotLeader as exc:
            leader = exc.leader_id if exc.leader_id != self.server_id else NO_LEADER
            return Message(MsgType.CLIENT_READ_RESPONSE, group.core.term, self.server_id,
                           leader, result_code=ResultCode.NOT_LEADER)
        except RaftError as exc:
            return Message(MsgType.CLIENT_READ_RESPONSE, group.core.term, self.server_id,
                           NO_LEADER, result_code=exc.code)
        return Message(MsgType.CLIENT_READ_RESPONSE, group.core.term, self.server_id, msg.src,
                       accepted=True, context=answer)

    def step_nowait(self, request: GroupEnvelope, respond: StepReply) -> bool:
        """The transport's fast path (a FastStepHandler): hand ``request`` to its group's
        inbox without a task of its own and answer through ``respond`` -- the same envelope
        :meth:`raft_step` would return, or its StepError.  A full inbox is answered
        UNAVAILABLE at once (Raft retries).  False (nothing done) for what needs the general
        path: client and add_server requests, requests to groups not running here (a join
        may create one), non-requests."""
        msg = request.message
        if not msg.type.is_request or msg.type in _GENERAL_PATH:
            return False
        group = self._groups.get(request.group_id)
        if group is None or group.stopped:
            return False
        started = trio.current_time()

        def on_reply(result: Message | RaftError) -> None:
            answer: GroupEnvelope | StepError = (
                self._step_refused(result) if isinstance(result, RaftError)
                else self._step_answer(group, msg, started, result))
            try:
                respond(answer)
            except Exception:
                self.log.exception("a fast-path reply callback failed")

        try:
            group.handle_request_nowait(msg, on_reply, quiesce=request.quiesce)
        except trio.WouldBlock:
            respond(StepError(Status.UNAVAILABLE, f"group {request.group_id} is busy"))
        except RaftError as exc:
            respond(self._step_refused(exc))
        return True

    @staticmethod
    def _step_refused(exc: RaftError) -> StepError:
        """How a RaftStep that its group refused (stopped, failed) is answered."""
        return StepError(Status.CANCELLED, f"Server rejected request: {exc}")

    def _step_answer(
        self, group: RaftGroup, msg: Message, started: float, reply: Message
    ) -> GroupEnvelope:
        """The envelope answering ``msg`` (received at ``started``) with ``reply``."""
        if msg.type == MsgType.APPEND_ENTRIES_REQUEST:
            group.record_append_latency(trio.current_time() - started)
        return self._envelope(group, reply)

    def _invalid_invitation(self, msg: Message) -> str:
        """Why a join for a group not hosted here cannot be an invitation ("" if it can be):
        it must be addressed to this server and carry the leader's configuration."""
        if msg.dest != self.server_id:
            return f"join addressed to server {msg.dest}, not {self.server_id}"
        if not msg.entries or msg.entries[0].type != LogType.CONFIG:
            return "join without a configuration"
        try:
            ClusterConfig.decode(msg.entries[0].buffer)
        except RaftError as exc:
            return f"join with a bad configuration: {exc}"
        return ""

    def _learn_joiner(self, group: RaftGroup, msg: Message) -> Message | None:
        """An add_server request (from an external client): record the new server's uuid so
        that the leader can invite it.  A server id that is not its uuid's is refused."""
        if len(msg.entries) != 1 or msg.entries[0].type != LogType.CLUSTER:
            return None  # the core refuses it
        try:
            srv = ServerConfig.decode(msg.entries[0].buffer)
        except BadRequest:
            return None  # the core refuses it
        try:
            valid = to_server_id(srv.endpoint) == srv.id
        except ValueError:
            valid = False
        if not valid:
            return Message(msg.type.response_type, group.core.term, self.server_id, msg.src,
                           result_code=ResultCode.BAD_REQUEST)
        group.learn_endpoint(srv.id, srv.endpoint)
        return None

    def _envelope(self, group: RaftGroup, reply: Message) -> GroupEnvelope:
        dest_addr = ""
        if not reply.accepted and reply.dest != NO_LEADER:
            dest_addr = group.endpoint_of(reply.dest)
        return GroupEnvelope(group.group_id, "", "", reply, dest_addr=dest_addr)
