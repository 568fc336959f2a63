"""What a group answers about itself: leadership, membership, ``raft_status`` rows and
statistics.

A mixin of :class:`~nuraft_mesg.group.RaftGroup`, separate because these are read-only views
that any task may call (the status service, metrics, the application): they read state the
group's task writes between checkpoints, and change nothing.
"""

from __future__ import annotations

import trio

from nuraft_mesg.group_stats import GroupStatistics, PeerInfo, ReplicaConfig
from nuraft_mesg.raft.node import NO_LEADER, RaftNode
from nuraft_mesg.reads import GroupReads

__all__ = ["GroupQueries"]


class GroupQueries:
    """Read-only views of a RaftGroup (state initialised by its ``__init__``)."""

    core: RaftNode
    group_id: str
    server_id: int
    stopped: bool
    quiet: bool
    applied_index: int
    _endpoints: dict[int, str]
    _last_response: dict[int, float]
    _leader_changes: int
    _received: int
    _sent: int
    _dropped: int
    _append_latency_us: int
    _append_requests: int
    _reads: GroupReads

    @property
    def is_leader(self) -> bool:
        return self.core.is_leader and not self.stopped

    @property
    def leader_id(self) -> str:
        """The leader's uuid, or "" when unknown."""
        lid = self.core.leader_id
        if lid == NO_LEADER:
            return ""
        return self._endpoints.get(lid, "")

    def endpoint_of(self, server_id: int) -> str:
        return self._endpoints.get(server_id, "")

    def cluster_config(self) -> list[ReplicaConfig]:
        return [ReplicaConfig(s.endpoint, s.aux) for s in self.core.config.servers]

    def raft_status(self) -> list[PeerInfo]:
        """nuraft_mesg's ``get_raft_status``: every peer on the leader, then ourselves."""
        now = trio.current_time()
        cfg = self.core.config
        rows: list[PeerInfo] = []
        if self.core.is_leader:
            for peer, pr in sorted(self.core.progress.items()):
                srv = cfg.get(peer)
                joiner = self.core.joining_server
                if srv is None and joiner is not None and joiner.id == peer:
                    srv = joiner
                if srv is None:
                    continue
                seen = self._last_response.get(peer)
                age_us = int((now - seen) * 1e6) if seen is not None else 0
                rows.append(PeerInfo(srv.endpoint, pr.match, max(age_us, 1) if seen else 0,
                                     srv.priority, srv.learner, pr.joining))
        me = cfg.get(self.server_id)
        if me is not None:
            rows.append(PeerInfo(me.endpoint, self.core.log.last_index, 0, me.priority,
                                 me.learner, False))
        return rows

    def statistics(self) -> GroupStatistics:
        return GroupStatistics(
            group_id=self.group_id,
            term=self.core.term,
            commit_index=self.core.commit,
            last_log_index=self.core.log.last_index,
            applied_index=self.applied_index,
            leader_id=self.leader_id,
            is_leader=self.is_leader,
            leader_changes=self._leader_changes,
            messages_received=self._received,
            messages_sent=self._sent,
            messages_dropped=self._dropped,
            append_latency_us_total=self._append_latency_us,
            append_requests=self._append_requests,
            quiet=self.quiet,
            reads_linearizable=self._reads.counts["linearizable"],
            reads_lease=self._reads.counts["lease"],
            reads_stale=self._reads.counts["stale"],
            reads_failed=self._reads.counts["failed"],
        )
