"""Snapshots in one group's runtime: persisting received and installed snapshots, taking one
every ``snapshot_distance`` applied entries, compacting the log store behind it, and settling
the writers whose entries arrived inside a snapshot.

A mixin of :class:`~nuraft_mesg.group.RaftGroup`, separate because it is the one path where
the state machine's state moves in bulk instead of entry by entry (docs/raft-core.md,
"Snapshots"); everything runs in the group's task, from ``_process_ready``.
"""

from __future__ import annotations

import logging

from nuraft_mesg.errors import Cancelled, ResultUnknown
from nuraft_mesg.group_inbox import ApplyWaiter
from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import Ready, SnapshotRead
from nuraft_mesg.raft.types import SnapshotMeta
from nuraft_mesg.storage.interfaces import LogStore, StateMachine

__all__ = ["GroupSnapshots"]


class GroupSnapshots:
    """Snapshot handling of a RaftGroup (state initialised by its ``__init__``)."""

    core: RaftNode
    params: RaftParams
    log: logging.LoggerAdapter[logging.Logger]
    log_store: LogStore
    state_machine: StateMachine
    applied_index: int
    _apply_waiters: dict[int, ApplyWaiter]

    async def _persist_snapshots(self, rd: Ready) -> None:
        """Staged objects, then the installed snapshot (the state machine, then the log store
        starting after it), then a compaction, in that order."""
        for chunk in rd.snapshot_chunks:
            self.state_machine.save_snapshot_chunk(chunk.meta, chunk.obj_id, chunk.data,
                                                   chunk.is_first, chunk.is_last)
        if rd.snapshot_to_install is not None:
            meta = rd.snapshot_to_install
            self.state_machine.apply_snapshot(meta)
            self.applied_index = meta.last_index
            self._settle_snapshotted_waiters(meta)
            await self._compact_log_store(meta.last_index, meta.last_term)
            self.log.info("installed snapshot %d/%d", meta.last_index, meta.last_term)
        if rd.compact_to:
            await self._compact_log_store(rd.compact_to, rd.compact_term)

    async def _compact_log_store(self, index: int, term: int) -> None:
        """Make the log store start after ``(index, term)``: drop a held entry at ``index``
        of another term (and everything after it), then compact."""
        store = self.log_store
        if store.start_index() <= index < store.next_slot() and store.term_at(index) != term:
            await store.write(index, [], truncate_from=index)
        await store.compact(index, term)

    def _read_snapshot_chunk(self, r: SnapshotRead) -> tuple[SnapshotRead, bytes, bool]:
        data, is_last = self.state_machine.read_snapshot_chunk(r.meta, r.obj_id)
        return r, data, is_last

    def _maybe_create_snapshot(self) -> SnapshotMeta | None:
        """Every ``snapshot_distance`` applied entries, snapshot the state machine at the
        applied index (the core then compacts the log behind it)."""
        distance = self.params.snapshot_distance
        if distance <= 0 or not self.state_machine.supports_snapshots:
            return None
        last = self.core.snapshot
        if self.applied_index - (last.last_index if last is not None else 0) < distance:
            return None
        meta = self.core.snapshot_meta(self.applied_index)
        self.state_machine.create_snapshot(meta)
        return meta

    def _settle_snapshotted_waiters(self, meta: SnapshotMeta) -> None:
        """Entries up to ``meta.last_index`` will not be applied one by one here.  If the
        snapshot ends in a waiter's term, its entries are in it (the leader of that term
        created both, and a leader never rewrites its log): committed, with results this node
        never computed (:class:`ResultUnknown`, never invented empty results).  Otherwise
        this node cannot tell whether they survived (:class:`Cancelled`)."""
        for index in sorted(i for i in self._apply_waiters if i <= meta.last_index):
            w = self._apply_waiters.pop(index, None)
            if w is None:
                continue
            if w.term != meta.last_term:
                w.slot.fail(Cancelled(f"entries {w.first}..{w.last} arrived in a snapshot; "
                                      "their outcome is unknown here"))
            else:
                w.slot.fail(ResultUnknown(f"entries {w.first}..{w.last} are committed (in "
                                          f"snapshot {meta.last_index}/{meta.last_term}) but "
                                          "their results were not computed on this node"))
            for i in range(index + 1, w.last + 1):
                self._apply_waiters.pop(i, None)
