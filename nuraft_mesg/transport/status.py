"""The node status report carried by ``nuraft_mesg.Admin/Status`` (``proto/admin.proto``).

Plain dataclasses (:class:`NodeStatus`, :class:`GroupStatus`, :class:`MemberStatus`) plus
their protobuf conversion.  A Manager builds one (:meth:`~nuraft_mesg.manager.Manager.node_status`),
the transport serves it, ``nuraft-mesg status`` and :class:`~nuraft_mesg.client.ExternalClient`
read it.  This RPC is an addition: nuraft_mesg has no remote status call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from google.protobuf.message import DecodeError

from nuraft_mesg.errors import BadRequest
from nuraft_mesg.transport._proto.admin_pb2 import (
    GroupStatus as GroupStatusPb,
)
from nuraft_mesg.transport._proto.admin_pb2 import (
    StatusRequest,
    StatusResponse,
)

__all__ = [
    "GroupStatus",
    "MemberStatus",
    "NodeStatus",
    "StatusHandler",
    "decode_status",
    "decode_status_request",
    "encode_status",
    "encode_status_request",
]


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member of a group's current configuration, as the reporting node sees it."""

    peer_id: str
    server_id: int
    priority: int = 1
    learner: bool = False
    has_progress: bool = False
    """True when ``last_log_idx`` and ``last_succ_resp_us`` are known: on the leader for
    every member, on a follower for itself only (nuraft_mesg's ``get_raft_status``)."""
    last_log_idx: int = 0
    last_succ_resp_us: int = 0
    is_new_joiner: bool = False


@dataclass(frozen=True, slots=True)
class GroupStatus:
    group_id: str
    group_type: str
    leader_id: str
    is_leader: bool
    term: int
    commit_index: int
    last_log_index: int
    applied_index: int
    members: tuple[MemberStatus, ...] = ()

    def lag(self, member: MemberStatus) -> int | None:
        """Entries ``member`` is behind this node's log, or None when unknown."""
        if not member.has_progress:
            return None
        return max(0, self.last_log_index - member.last_log_idx)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    server_uuid: str
    server_id: int
    groups: tuple[GroupStatus, ...] = ()
    data_service: bool = False


@runtime_checkable
class StatusHandler(Protocol):
    """The server side of ``Admin/Status`` (a Manager is one)."""

    def node_status(self, group_ids: Sequence[str] = ()) -> NodeStatus:
        """The groups named (every hosted group when empty)."""
        ...


def encode_status_request(group_ids: Sequence[str] = ()) -> bytes:
    return StatusRequest(group_ids=list(group_ids)).SerializeToString()


def decode_status_request(data: bytes) -> list[str]:
    pb = StatusRequest()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"undecodable StatusRequest: {exc}") from None
    return list(pb.group_ids)


def encode_status(status: NodeStatus) -> bytes:
    pb = StatusResponse(
        server_uuid=status.server_uuid,
        server_id=status.server_id,
        data_service=status.data_service,
    )
    for g in status.groups:
        gp: GroupStatusPb = pb.groups.add(
            group_id=g.group_id,
            group_type=g.group_type,
            leader_id=g.leader_id,
            is_leader=g.is_leader,
            term=g.term,
            commit_index=g.commit_index,
            last_log_index=g.last_log_index,
            applied_index=g.applied_index,
        )
        for m in g.members:
            gp.members.add(
                peer_id=m.peer_id,
                server_id=m.server_id,
                priority=m.priority,
                learner=m.learner,
                has_progress=m.has_progress,
                last_log_idx=m.last_log_idx,
                last_succ_resp_us=m.last_succ_resp_us,
                is_new_joiner=m.is_new_joiner,
            )
    return pb.SerializeToString()


def decode_status(data: bytes) -> NodeStatus:
    pb = StatusResponse()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise BadRequest(f"undecodable StatusResponse: {exc}") from None
    groups = tuple(
        GroupStatus(
            group_id=g.group_id,
            group_type=g.group_type,
            leader_id=g.leader_id,
            is_leader=g.is_leader,
            term=g.term,
            commit_index=g.commit_index,
            last_log_index=g.last_log_index,
            applied_index=g.applied_index,
            members=tuple(
                MemberStatus(
                    peer_id=m.peer_id,
                    server_id=m.server_id,
                    priority=m.priority,
                    learner=m.learner,
                    has_progress=m.has_progress,
                    last_log_idx=m.last_log_idx,
                    last_succ_resp_us=m.last_succ_resp_us,
                    is_new_joiner=m.is_new_joiner,
                )
                for m in g.members
            ),
        )
        for g in pb.groups
    )
    return NodeStatus(pb.server_uuid, pb.server_id, groups, pb.data_service)
