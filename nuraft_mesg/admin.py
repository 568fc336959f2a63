"""The node status report that ``Admin/Status`` serves (and ``nuraft-mesg status`` prints,
formatted by :mod:`nuraft_mesg.cli.status_format`).

:func:`collect_status` builds a :class:`~nuraft_mesg.transport.status.NodeStatus` from a
running node through its public API.  It takes a :class:`StatusSource` (what a
:class:`~nuraft_mesg.manager.Manager` offers) rather than the Manager itself, so that this
module sits below the manager, which calls it, without importing it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from nuraft_mesg.errors import ServerNotFound
from nuraft_mesg.group import GroupStatistics, PeerInfo
from nuraft_mesg.raft.types import ServerConfig
from nuraft_mesg.transport.status import GroupStatus, MemberStatus, NodeStatus

__all__ = ["StatusSource", "collect_status"]


class _StatusGroup(Protocol):
    """A hosted group (``GroupContext``)."""

    @property
    def group_type(self) -> str: ...
    def statistics(self) -> GroupStatistics: ...
    def raft_status(self) -> Sequence[PeerInfo]: ...


class _DataServiceState(Protocol):
    @property
    def enabled(self) -> bool: ...


class StatusSource(Protocol):
    """What :func:`collect_status` reads from a node (a Manager satisfies it)."""

    @property
    def server_uuid(self) -> str: ...
    @property
    def server_id(self) -> int: ...
    @property
    def group_ids(self) -> Sequence[str]: ...
    @property
    def data_service(self) -> _DataServiceState: ...
    def group(self, group_id: str) -> _StatusGroup: ...
    def get_srv_config_all(self, group_id: str) -> Sequence[ServerConfig]: ...


def collect_status(mgr: StatusSource, group_ids: Sequence[str] = ()) -> NodeStatus:
    """The status of ``group_ids`` (every hosted group when empty; unknown ones are
    skipped)."""
    groups: list[GroupStatus] = []
    for gid in group_ids or sorted(mgr.group_ids):
        try:
            ctx = mgr.group(gid)
        except ServerNotFound:
            continue
        stats = ctx.statistics()
        rows = {p.id: p for p in ctx.raft_status()}
        members: list[MemberStatus] = []
        for srv in mgr.get_srv_config_all(gid):
            row = rows.pop(srv.endpoint, None)
            members.append(
                MemberStatus(
                    peer_id=srv.endpoint,
                    server_id=srv.id,
                    priority=srv.priority,
                    learner=srv.learner,
                    has_progress=row is not None,
                    last_log_idx=row.last_log_idx if row is not None else 0,
                    last_succ_resp_us=row.last_succ_resp_us if row is not None else 0,
                    is_new_joiner=row.is_new_joiner if row is not None else False,
                )
            )
        for row in rows.values():  # a server still joining: not in the config yet
            members.append(
                MemberStatus(
                    peer_id=row.id,
                    server_id=-1,
                    priority=row.priority,
                    learner=row.is_learner,
                    has_progress=True,
                    last_log_idx=row.last_log_idx,
                    last_succ_resp_us=row.last_succ_resp_us,
                    is_new_joiner=True,
                )
            )
        groups.append(
            GroupStatus(
                group_id=gid,
                group_type=ctx.group_type,
                leader_id=stats.leader_id,
                is_leader=stats.is_leader,
                term=stats.term,
                commit_index=stats.commit_index,
                last_log_index=stats.last_log_index,
                applied_index=stats.applied_index,
                members=tuple(members),
            )
        )
    return NodeStatus(mgr.server_uuid, mgr.server_id, tuple(groups),
                      mgr.data_service.enabled)
