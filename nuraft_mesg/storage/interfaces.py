"""Persistence interfaces the application supplies for each group.

These are nuraft_mesg's ``mesg_state_mgr`` and NuRaft's ``log_store`` / ``state_machine``,
reshaped for trio: reads are synchronous (the core consults the log while deciding what to send,
so reads must come from memory or a cache), and every mutation is ``async`` so a store can await
an fsync in a worker thread without blocking the other groups on the event loop.

Rules shared by every interface here:

* **Durable on return.**  When an ``async`` mutation returns, its effect survives a crash.  The
  runtime sends votes and append acknowledgements only afterwards, so a store that returns early
  breaks Raft's safety, not just its own data.
* **Failures are fatal for the group.**  Any exception raised by a storage method stops the group
  on this node (the runtime does not retry: it cannot know what reached the disk).  Other groups
  keep running.  Raise rather than return bad data.
* **One caller at a time.**  The runtime never overlaps two mutations of the same object.
  Synchronous reads may run while a mutation is suspended at an ``await``; they must then see the
  content before or after the mutation, never a mix.
* **Cancellation is a crash.**  A mutation is cancelled only when the group is being stopped; the
  store must then be in a state it could also be in after a crash at that moment.

Everything is called from the trio thread that runs the group.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

from nuraft_mesg.errors import QueryNotSupported
from nuraft_mesg.raft.ready import Event
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, SnapshotMeta

__all__ = ["LogStore", "StateMachine", "StateManager"]


class LogStore(abc.ABC):
    """The durable Raft log of one group (NuRaft's ``log_store``).

    Indices start at 1.  After :meth:`compact` the store holds ``[start_index(), next_slot())``
    and remembers the index and term of the last compacted entry (the *boundary*), which the
    core needs to check that a follower's log matches the leader's just after the compaction
    point.  A store that was never compacted has boundary ``(0, 0)`` and ``start_index() == 1``.

    Reading outside the held range raises :class:`IndexError`: for the core that means "this part
    of the log is gone (or not there yet)" -- for instance a follower must get a snapshot
    instead -- so it must be a distinct, predictable error rather than an empty result.
    Malformed requests (reversed bounds, a write that would leave a gap) raise
    :class:`ValueError` and leave the store unchanged.

    :func:`nuraft_mesg.testing.check_log_store` checks an implementation against this contract.
    """

    group_commit: ClassVar[bool] = False
    """True for a store whose concurrent writes share one transaction and one fsync (the
    SQLite store): the runtime then issues a Ready's log write, hard state and configuration
    together.  Otherwise it awaits them one after another (no task per write)."""

    __slots__ = ()

    # -- reads (synchronous: keep them in memory) --------------------------------------------
    @abc.abstractmethod
    def start_index(self) -> int:
        """Index of the first entry held: 1 when never compacted, else the boundary + 1.

        When the store is empty, ``start_index() == next_slot()``.
        """

    @abc.abstractmethod
    def next_slot(self) -> int:
        """Index the next appended entry gets: the last index held + 1."""

    @abc.abstractmethod
    def entries(self, start: int, end: int) -> list[LogEntry]:
        """The entries at indices ``[start, end)``, in order.

        Requires ``start_index() <= start <= end <= next_slot()``; ``start == end`` gives ``[]``.
        Raises :class:`ValueError` if ``start > end`` and :class:`IndexError` if any index
        in the range is not held (compacted, or beyond the last entry).
        """

    @abc.abstractmethod
    def term_at(self, index: int) -> int:
        """The term of the entry at ``index``.

        Also answers for the compaction boundary ``start_index() - 1`` (the term given to
        :meth:`compact`), and for index 0, whose term is always 0.  Any other index not held
        raises :class:`IndexError`.
        """

    def last_index(self) -> int:
        """Index of the last entry (the boundary when the store is empty; 0 for a new log)."""
        return self.next_slot() - 1

    def last_term(self) -> int:
        """Term of the last entry, or of the boundary when the store is empty (what a
        candidate advertises in its vote request)."""
        return self.term_at(self.last_index())

    # -- mutations (async, durable on return) ------------------------------------------------
    @abc.abstractmethod
    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        """Truncate the uncommitted tail, then append ``entries``: the only way the log grows.

        If ``truncate_from > 0``, first delete every entry at index ``>= truncate_from``; it must
        satisfy ``start_index() <= truncate_from <= next_slot()`` (compacted entries are
        committed and can never be replaced).  Then append ``entries``, the first one at
        ``first_index``, which must equal ``next_slot()`` after the truncation: a gap or an
        overlap means the caller's idea of the log is wrong.  With no entries there is nothing
        to place, so ``first_index`` is not checked (a pure truncation).  Bad arguments raise
        :class:`ValueError` before anything changes.

        Called by the runtime with each batch the core emits (``Ready.truncate_from``,
        ``Ready.first_index``, ``Ready.entries``).  Durable when it returns.  A crash midway
        must leave a prefix of the old log that still holds every entry before
        ``truncate_from``, possibly followed by a prefix of ``entries`` -- never new entries
        followed by old ones, and never a torn entry.
        """

    @abc.abstractmethod
    async def compact(self, up_to_index: int, term: int) -> None:
        """Drop every entry at index ``<= up_to_index`` and remember ``(up_to_index, term)`` as
        the boundary, because a snapshot now covers them.

        ``term`` is the term of the entry at ``up_to_index``.  ``up_to_index`` may lie beyond the
        last entry (a follower that installed a snapshot ahead of its log): the store then
        becomes empty with ``start_index() == next_slot() == up_to_index + 1``.  Compacting at
        or behind the current boundary does nothing.

        Called by the runtime after the state machine's snapshot is durable.  Durable and
        atomic when it returns: after a crash the store has either the old start and boundary
        or the new ones, never the new start with the old boundary term.
        """

    async def flush(self) -> None:
        """Settle anything the store buffers; called before the group stops.

        Writes are already durable when they return, so correctness never depends on this; it
        is a hook for stores that batch metadata or keep files open.  The default does nothing.
        """
        return


class StateMachine(abc.ABC):
    """The application's replicated state (NuRaft's ``state_machine``).

    The runtime applies committed entries in index order, each exactly once per process; on
    restart it resumes after :meth:`last_commit_index`.  Application must be deterministic --
    every replica applies the same entries and must reach the same state.  An exception stops
    the group on this node (it cannot skip an entry and stay consistent with its peers).

    Methods are synchronous and run on the event loop: slow work should be handed off.

    Snapshots (NuRaft's logical snapshot objects) are optional: a state machine whose
    :attr:`supports_snapshots` is true implements the snapshot hooks, and the runtime then
    takes a snapshot every ``RaftParams.snapshot_distance`` applied entries, compacts the log
    behind it, and sends it to followers that are behind the log start.  With the defaults
    nothing is ever snapshotted and :meth:`LogStore.compact` is never called.
    """

    __slots__ = ()

    @abc.abstractmethod
    def commit(self, index: int, data: bytes) -> bytes:
        """Apply the committed APP entry at ``index`` carrying ``data``.

        The returned bytes are handed back to the proposer, if the proposal was made on this
        node (NuRaft's ``commit`` result buffer); other replicas' results are discarded.
        """

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        """Observe the committed CONFIG entry at ``index``.  The default does nothing.

        Membership itself is persisted through :meth:`StateManager.save_config`; this exists
        for state machines that keep membership in their own state.
        """
        return

    @abc.abstractmethod
    def last_commit_index(self) -> int:
        """Index of the last entry applied through :meth:`commit` or :meth:`commit_config`.

        0 when nothing was applied.  After a restart the runtime does not apply entries at or
        below it again, so a durable state machine must persist it atomically with the effects
        of that entry.  An in-memory one returns what it applied in this process.
        """

    def query(self, query: bytes) -> bytes:
        """Answer the read-only ``query`` from the current state, without changing it.

        The read path (linearizable, lease and stale reads) calls this once the state is
        known to be recent enough, so it must not mutate anything: a query is not in the log
        and runs on one replica only.  The encoding of queries and answers is the state
        machine's own.  Malformed queries raise :class:`~nuraft_mesg.errors.BadRequest`.
        The default raises :class:`~nuraft_mesg.errors.QueryNotSupported`.
        """
        raise QueryNotSupported(f"{type(self).__name__} answers no queries")

    # -- snapshots (optional) ----------------------------------------------------------------
    @property
    def supports_snapshots(self) -> bool:
        """Whether the snapshot hooks below are implemented.  The default is False."""
        return False

    def create_snapshot(self, meta: SnapshotMeta) -> None:
        """Capture the state as of ``meta.last_index``, which was just applied (the runtime
        calls this right after applying it).  Durable on return: the runtime then compacts
        the log behind it.  It becomes :meth:`last_snapshot`.

        (Strictly, the runtime needs it durable before the group's next log store or state
        manager mutation completes -- the compaction behind it is one, issued from a later
        Ready.  A store that queues the snapshot write in order with those mutations, as
        :class:`~nuraft_mesg.storage.sqlite.SqliteStateMachine` does, meets that without
        blocking here.)"""
        raise NotImplementedError("this state machine does not support snapshots")

    def last_snapshot(self) -> SnapshotMeta | None:
        """The latest snapshot created or applied (what lagging followers are sent), or
        None.  The default (no snapshot support) is None."""
        return None

    def read_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int) -> tuple[bytes, bool]:
        """Object ``obj_id`` (0, 1, ...) of the snapshot ``meta`` and whether it is the last
        one.  Only called for :meth:`last_snapshot`, with ids up to the last object."""
        raise NotImplementedError("this state machine does not support snapshots")

    def save_snapshot_chunk(self, meta: SnapshotMeta, obj_id: int, data: bytes,
                            is_first: bool, is_last: bool) -> None:
        """Stage object ``obj_id`` of a snapshot being received.  Objects arrive in order,
        from 0; ``is_first`` (object 0) discards whatever was staged before."""
        raise NotImplementedError("this state machine does not support snapshots")

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Replace the whole state with the staged (complete) snapshot ``meta``.  Afterwards
        :meth:`last_commit_index` is ``meta.last_index`` and :meth:`last_snapshot` is
        ``meta``; the next entry applied is ``meta.last_index + 1``.  Durable on return (or,
        as for :meth:`create_snapshot`, before the group's next store mutation completes: the
        runtime resets the log store behind it right away and acknowledges the snapshot only
        after that)."""
        raise NotImplementedError("this state machine does not support snapshots")


class StateManager(abc.ABC):
    """Per-group persistence and hooks (nuraft_mesg's ``mesg_state_mgr``).

    The application creates one for each group this node takes part in
    (``MessagingApplication.create_state_mgr``), or hands an existing one to ``join_group`` to
    restart a group with its persisted state.  The runtime calls :meth:`load_config`,
    :meth:`read_state`, :meth:`load_log_store` and :meth:`get_state_machine` once at group start,
    then the ``save_*`` methods as the group runs.  Durability and failure rules are in the
    module docstring; :func:`nuraft_mesg.testing.check_state_manager` checks them.
    """

    __slots__ = ()

    @property
    @abc.abstractmethod
    def server_id(self) -> int:
        """This node's server id in the group (the int32 derived from its peer UUID)."""

    # -- persisted configuration and hard state ----------------------------------------------
    @abc.abstractmethod
    def load_config(self) -> ClusterConfig:
        """The last configuration passed to :meth:`save_config`, or the initial one.

        The initial configuration of a new group should list only this server, so that the
        group elects it (``create_group`` waits for that).  Also read by ``append_peers``.
        """

    @abc.abstractmethod
    async def save_config(self, config: ClusterConfig) -> None:
        """Persist ``config``, a newly committed configuration.  Durable when it returns."""

    @abc.abstractmethod
    async def save_state(self, state: HardState) -> None:
        """Persist term, vote and commit index.  Durable when it returns.

        The runtime sends votes and acknowledgements that depend on ``state`` only after this
        returns; losing a saved vote lets this node vote twice in one term.
        """

    @abc.abstractmethod
    def read_state(self) -> HardState | None:
        """The last state passed to :meth:`save_state`, or ``None`` if none was ever saved."""

    # -- the group's other stores ------------------------------------------------------------
    @abc.abstractmethod
    def load_log_store(self) -> LogStore:
        """The group's log, with everything written to it before a restart."""

    @abc.abstractmethod
    def get_state_machine(self) -> StateMachine:
        """The group's state machine."""

    def get_logstore_id(self) -> int:
        """An application-chosen id of the group's log store, reported by
        ``Manager.logstore_id``.  The default is 0."""
        return 0

    # -- lifecycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def permanent_destroy(self) -> None:
        """Delete everything persisted for this group on this node.

        Called by ``leave_group`` after the group has stopped here.  Afterwards
        :meth:`read_state` returns ``None``, and saves must raise (a late save from a stopping
        task must not resurrect the group's files).
        """

    def leave(self) -> None:
        """This node was removed from the group (a committed config no longer lists it).

        Called once, on ``RemovedFromCluster``; typically the application then calls
        ``leave_group``.  The default does nothing.
        """
        return

    def become_ready(self) -> None:
        """Called each time the group starts on this node, after the stores are loaded.
        The default does nothing."""
        return

    def raft_event(self, event: Event) -> None:
        """Observe a Raft event of this group (leadership, membership), after the manager
        has handled it.  The default does nothing; exceptions are logged and ignored, since an
        observer must not be able to stop the group."""
        return

    def system_exit(self, error: BaseException) -> None:
        """The runtime stopped this group on this node because of ``error`` (usually raised by
        storage).  The group stays stopped; the default does nothing."""
        return
