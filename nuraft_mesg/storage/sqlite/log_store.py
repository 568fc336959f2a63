"""The log of one group (:class:`SqliteLogStore`): reads from the in-memory cache, writes
and compactions through the store's commit queue.

Separate from the store because it is the :class:`~nuraft_mesg.storage.interfaces.LogStore`
the runtime sees for one group, with that interface's ordering rules.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import trio

from nuraft_mesg.raft.types import LogEntry
from nuraft_mesg.storage.interfaces import LogStore
from nuraft_mesg.storage.sqlite.commit_queue import CommitQueue
from nuraft_mesg.storage.sqlite.records import GroupData
from nuraft_mesg.storage.sqlite.schema import boundary_crc, entry_crc

__all__ = ["SqliteLogStore"]


class SqliteLogStore(LogStore):
    """The log of one group in a :class:`SqliteStore` (reads from the in-memory cache)."""

    group_commit = True
    """Writes issued together (the runtime's log write, hard state and config of one Ready)
    share one transaction and one fsync, so the runtime issues them concurrently."""

    __slots__ = ("_store", "_data")

    def __init__(self, store: CommitQueue, data: GroupData) -> None:
        self._store = store
        self._data = data

    def __repr__(self) -> str:
        return f"<SqliteLogStore {self._data.group_id} [{self.start_index()}, {self.next_slot()})>"

    @property
    def group_id(self) -> str:
        return self._data.group_id

    # -- reads -----------------------------------------------------------------------------
    def start_index(self) -> int:
        return self._data.start

    def next_slot(self) -> int:
        return self._data.next_slot

    def entries(self, start: int, end: int) -> list[LogEntry]:
        d = self._data
        if start > end:
            raise ValueError(f"reversed range [{start}, {end})")
        if start < d.start or end > d.next_slot:
            raise IndexError(f"range [{start}, {end}) not within held [{d.start}, {d.next_slot})")
        return d.entries[start - d.start : end - d.start]

    def term_at(self, index: int) -> int:
        d = self._data
        if index == 0:
            return 0
        if index == d.start - 1:
            return d.boundary_term
        if d.start <= index < d.next_slot:
            return d.entries[index - d.start].term
        raise IndexError(
            f"index {index} not held (boundary {d.start - 1}, next slot {d.next_slot})"
        )

    # -- mutations -------------------------------------------------------------------------
    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        d, store = self._data, self._store
        await store._settle(d, "a log write")
        keep = d.next_slot
        if truncate_from > 0:
            if not d.start <= truncate_from <= keep:
                raise ValueError(f"truncate_from {truncate_from} outside [{d.start}, {keep}]")
            keep = truncate_from
        new = list(entries)
        if new:
            if first_index != keep:
                raise ValueError(f"first_index {first_index} != next slot {keep}")
            prev_term = self.term_at(keep - 1)
            for offset, entry in enumerate(new):
                if entry.term < prev_term:
                    raise ValueError(
                        f"term {entry.term} at index {first_index + offset} follows term "
                        f"{prev_term}"
                    )
                prev_term = entry.term
        if not new and keep == d.next_slot:
            await trio.lowlevel.checkpoint()
            return
        gkey, seed, truncate = d.gkey, d.seed, keep < d.next_slot

        def statements(conn: sqlite3.Connection) -> None:
            if truncate:
                conn.execute("DELETE FROM log WHERE gkey=? AND idx>=?", (gkey, keep))
            if new:
                conn.executemany(
                    "INSERT INTO log(gkey, idx, term, type, buffer, ts, crc) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            gkey,
                            keep + i,
                            e.term,
                            int(e.type),
                            e.buffer,
                            e.timestamp,
                            entry_crc(seed, keep + i, e.term, int(e.type), e.timestamp, e.buffer),
                        )
                        for i, e in enumerate(new)
                    ],
                )

        def on_commit() -> None:
            del d.entries[keep - d.start :]
            d.entries.extend(new)

        size = sum(len(e.buffer) + 48 for e in new)
        what = f"writing {len(new)} entries at {keep}" if new else f"truncating at {keep}"
        await store._mutate(d, what, statements, on_commit, size)

    async def compact(self, up_to_index: int, term: int) -> None:
        d, store = self._data, self._store
        await store._settle(d, "a compaction")
        if up_to_index < d.start:
            await trio.lowlevel.checkpoint()
            return
        if up_to_index < d.next_slot:
            held = d.entries[up_to_index - d.start].term
            if held != term:
                raise ValueError(f"compact({up_to_index}, {term}): entry has term {held}")
        gkey, start = d.gkey, up_to_index + 1
        crc = boundary_crc(d.seed, start, term)

        def statements(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM log WHERE gkey=? AND idx<?", (gkey, start))
            conn.execute(
                "INSERT OR REPLACE INTO log_boundary(gkey, start_index, boundary_term, crc) "
                "VALUES (?, ?, ?, ?)",
                (gkey, start, term, crc),
            )

        def on_commit() -> None:
            if start < d.next_slot:
                del d.entries[: start - d.start]
            else:
                d.entries.clear()
            d.start = start
            d.boundary_term = term

        await store._mutate(d, f"compacting up to {up_to_index}", statements, on_commit, 32)
