"""The core's in-memory view of one replica's log.

The log is a list of entries that starts after a *boundary* ``(start_index - 1, boundary_term)``
(0/0 for a log never compacted), so every piece of index arithmetic works when the log does
not start at 1.  Two cursors track durability:

* ``persisted``: highest index the runtime has acknowledged as durable.
  Invariant: ``boundary_index <= persisted <= last_index``.
* ``unstable_from``: first index not yet handed to the runtime for persisting.
  Invariant: ``persisted < unstable_from <= last_index + 1`` once a Ready is acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence

from nuraft_mesg.raft.types import LogEntry

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = ("_entries", "boundary_index", "boundary_term", "persisted", "truncated_from",
                 "unstable_from")

    def __init__(
        self,
        entries: Sequence[LogEntry] = (),
        *,
        start_index: int = 1,
        boundary_term: int = 0,
    ) -> None:
        if start_index < 1:
            raise ValueError("start_index must be >= 1")
        self._entries: list[LogEntry] = list(entries)
        self.boundary_index = start_index - 1
        self.boundary_term = boundary_term
        # Everything we were constructed with came from durable storage.
        self.persisted = self.last_index
        self.unstable_from = self.last_index + 1
        self.truncated_from = 0

    # -- queries -----------------------------------------------------------------------------
    @property
    def start_index(self) -> int:
        return self.boundary_index + 1

    @property
    def last_index(self) -> int:
        return self.boundary_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.boundary_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; the boundary's term at the boundary; None when the
        index is compacted away or beyond the end."""
        if index == self.boundary_index:
            return self.boundary_term
        if index < self.boundary_index or index > self.last_index:
            return None
        return self._entries[index - self.boundary_index - 1].term

    def entry(self, index: int) -> LogEntry:
        if not self.start_index <= index <= self.last_index:
            raise IndexError(f"log index {index} outside [{self.start_index}, {self.last_index}]")
        return self._entries[index - self.boundary_index - 1]

    def slice(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries in ``[lo, hi)``, clipped to what the log holds."""
        lo = max(lo, self.start_index)
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        off = self.boundary_index + 1
        return self._entries[lo - off : hi - off]

    def is_up_to_date(self, last_term: int, last_index: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def last_index_with_term_at_most(self, term: int, below_or_at: int) -> int:
        """Largest index <= ``below_or_at`` whose term is <= ``term`` (the boundary if none).

        Used for fast backtracking: entries after that index cannot match a leader whose
        entry at ``below_or_at`` has ``term``, because terms never decrease along a log.
        """
        idx = min(below_or_at, self.last_index)
        while idx > self.boundary_index:
            if self._entries[idx - self.boundary_index - 1].term <= term:
                return idx
            idx -= 1
        return self.boundary_index

    # -- mutation ----------------------------------------------------------------------------
    def append(self, entries: Sequence[LogEntry]) -> None:
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop every entry at ``index`` and after (a follower resolving a conflict)."""
        if index <= self.boundary_index:
            raise ValueError("cannot truncate into the compacted prefix")
        del self._entries[index - self.boundary_index - 1 :]
        if self.persisted >= index:
            self.persisted = index - 1
        if self.unstable_from > index:
            self.unstable_from = index
        if self.truncated_from == 0 or index < self.truncated_from:
            self.truncated_from = index

    def take_unstable(self) -> tuple[int, int, list[LogEntry]]:
        """(truncate_from, first_index, entries) to hand to the runtime, marking them handed."""
        first = self.unstable_from
        entries = self.slice(first, self.last_index + 1)
        truncate = self.truncated_from
        self.truncated_from = 0
        self.unstable_from = self.last_index + 1
        return truncate, first, entries

    def mark_persisted(self, index: int, term: int) -> None:
        """The runtime made everything up to ``index`` durable (with ``index`` at ``term``).

        Ignored if the log changed underneath (the entry at ``index`` no longer has ``term``),
        which can only happen if acknowledgements arrive out of order.
        """
        if index > self.persisted and self.term_at(index) == term:
            self.persisted = min(index, self.unstable_from - 1)

    def restore(self, index: int, term: int) -> bool:
        """Make the log start after an installed snapshot ending at ``(index, term)``.

        Raft §7: if the log holds that entry, the entries after it are kept; otherwise the
        whole log is discarded.  Returns whether entries were kept.  Everything up to
        ``index`` counts as durable (the snapshot is).  ``truncated_from`` then tells the
        runtime to drop what its store holds after ``index`` that this log no longer has.
        """
        if index <= self.boundary_index:
            raise ValueError("a snapshot must end beyond the log boundary")
        keep = self.term_at(index) == term
        if keep:
            del self._entries[: index - self.boundary_index]
        else:
            self._entries = []
        self.boundary_index = index
        self.boundary_term = term
        if not keep or 0 < self.truncated_from <= index:
            self.truncated_from = index + 1
        if keep:
            self.persisted = max(self.persisted, index)
            self.unstable_from = max(self.unstable_from, index + 1)
        else:
            self.persisted = index
            self.unstable_from = index + 1
        return keep

    def compact(self, up_to: int) -> None:
        """Forget entries <= ``up_to`` (they are in a snapshot)."""
        if up_to <= self.boundary_index:
            return
        if up_to > self.persisted:
            raise ValueError("cannot compact entries that are not durable")
        term = self.term_at(up_to)
        assert term is not None
        del self._entries[: up_to - self.boundary_index]
        self.boundary_index = up_to
        self.boundary_term = term
