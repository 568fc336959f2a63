"""The application's view of one group (nuraft_mesg's ``repl_service_ctx``).

Separate from :mod:`nuraft_mesg.manager` because it is a thin, read-mostly façade over a
:class:`~nuraft_mesg.group.RaftGroup` plus the node's data service: the application holds
it, while the Manager's lifecycle and routing code never needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from nuraft_mesg.data_service import DataService, Destination
from nuraft_mesg.errors import ServerNotFound
from nuraft_mesg.group import RaftGroup
from nuraft_mesg.group_stats import GroupStatistics, PeerInfo, ReplicaConfig

__all__ = ["GroupContext"]


class DataServiceOwner(Protocol):
    """What a group context needs of its node (the Manager): the data service, and the
    default deadline of reads."""

    @property
    def data_service(self) -> DataService: ...

    @property
    def read_timeout(self) -> float: ...


class GroupContext:
    """Per-group view for the application (nuraft_mesg's ``repl_service_ctx``).

    Made by :meth:`Manager.group`; do not construct it yourself.  (Without a manager it has
    no data service: data requests raise ServerNotFound, like nuraft_mesg's repl ctx without
    a factory.)
    """

    __slots__ = ("_group", "_manager")

    def __init__(self, group: RaftGroup, manager: DataServiceOwner | None = None) -> None:
        self._group = group
        self._manager = manager

    @property
    def group_type(self) -> str:
        return self._group.group_type

    @property
    def group_id(self) -> str:
        return self._group.group_id

    @property
    def is_leader(self) -> bool:
        return self._group.is_leader

    @property
    def leader_id(self) -> str:
        """The leader's uuid, or "" when there is none."""
        return self._group.leader_id

    def raft_status(self) -> list[PeerInfo]:
        return self._group.raft_status()

    def cluster_config(self) -> list[ReplicaConfig]:
        return self._group.cluster_config()

    def statistics(self) -> GroupStatistics:
        """Counters and Raft state of this group on this node (an immutable snapshot)."""
        return self._group.statistics()

    async def read(self, query: bytes, *, mode: str = "linearizable",
                   timeout: float | None = None,  # noqa: ASYNC109 - one deadline per read
                   ) -> bytes:
        """:meth:`Manager.read <nuraft_mesg.manager.Manager.read>` for this group."""
        if timeout is None:
            timeout = self._manager.read_timeout if self._manager is not None else math.inf
        return await self._group.read(query, mode=mode, timeout=timeout)

    async def wait_leader(self) -> str:
        """Wait until the group knows a leader (bound it with a cancel scope); returns the
        leader's uuid."""
        await self._group.wait_for(lambda: bool(self._group.leader_id))
        return self._group.leader_id

    # -- data service (nuraft_mesg/data_service.py has the destination rules) ----------------
    def _data_service(self) -> DataService:
        if self._manager is None:
            raise ServerNotFound("this group context has no data service")
        return self._manager.data_service

    async def data_service_request_unidirectional(
        self, dest: Destination, name: str, payload: bytes | Sequence[bytes]
    ) -> None:
        """Send ``payload`` to the handler bound as ``name`` on ``dest`` (a peer uuid, a
        server id, LEADER or ALL) and wait until it has run.  ALL ignores per-peer errors.

        Raises:
            BadRequest (LEADER from the leader, FOLLOWER/ANY, name not bound on the peer),
            ServerNotFound (unknown peer or server id, no leader, group not running), and
            the mapped error of a failed call.
        """
        await self._data_service().unidirectional(self._group, dest, name, payload)

    async def data_service_request_bidirectional(
        self, dest: Destination, name: str, payload: bytes | Sequence[bytes]
    ) -> bytes:
        """Like the unidirectional call (but ALL is BadRequest); returns the handler's
        response bytes."""
        return await self._data_service().bidirectional(self._group, dest, name, payload)
