"""RaftLog index arithmetic, including a log that does not start at index 1.

A log compacted up to index 100 (in a snapshot whose last entry has term 5) holds entries
101.. and remembers the *boundary* (100, 5), so that the consistency check of Raft §5.3 still
works for an append whose previous entry is the last one in the snapshot (Raft §7).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from nuraft_mesg.raft.log import RaftLog
from nuraft_mesg.raft.types import LogEntry

from .helpers import log_terms


def _log(*terms: int, start: int = 1, boundary_term: int = 0) -> RaftLog:
    return RaftLog(log_terms(*terms), start_index=start, boundary_term=boundary_term)


def test_empty_log_boundary_is_zero() -> None:
    """A fresh log has no entries: last index 0, last term 0, term_at(0) == 0 (the sentinel
    the paper's "prevLogIndex = 0" matches against, Raft §5.3)."""
    log = RaftLog()
    assert (log.start_index, log.last_index, log.last_term) == (1, 0, 0)
    assert log.term_at(0) == 0
    assert log.term_at(1) is None
    assert log.slice(1, 10) == []


def test_term_at_with_start_index_above_one() -> None:
    """Raft §7: after compaction the log keeps the last included index and term, so the
    boundary answers term_at; indices inside the snapshot are unknown (None)."""
    log = _log(5, 6, 6, start=101, boundary_term=5)
    assert log.start_index == 101
    assert log.last_index == 103
    assert log.last_term == 6
    assert log.term_at(100) == 5  # the boundary
    assert log.term_at(99) is None  # compacted away
    assert log.term_at(1) is None
    assert [log.term_at(i) for i in (101, 102, 103)] == [5, 6, 6]
    assert log.term_at(104) is None  # beyond the end


def test_empty_log_with_start_index_above_one_reports_boundary() -> None:
    """Raft §7: a log that is only a snapshot boundary reports the boundary as its last index
    and term (what §5.4.1's up-to-date check compares)."""
    log = _log(start=101, boundary_term=5)
    assert (log.last_index, log.last_term) == (100, 5)
    assert log.term_at(100) == 5
    assert log.slice(0, 1000) == []


def test_entry_outside_log_raises() -> None:
    """Raft §7: entries inside the snapshot (or beyond the end) are not in the log; asking for
    them is a programming error (IndexError)."""
    log = _log(5, 6, start=101, boundary_term=5)
    assert log.entry(101).buffer == b"e1"
    assert log.entry(102).buffer == b"e2"
    for bad in (100, 103, 1):
        with pytest.raises(IndexError):
            log.entry(bad)


def test_slice_is_half_open_and_clipped() -> None:
    """Ranges are half-open, [lo, hi), and clipped to what the log holds (as etcd's storage),
    also when the log starts at 101 (Raft §7)."""
    log = _log(5, 6, 6, 7, start=101, boundary_term=5)
    assert [e.buffer for e in log.slice(102, 104)] == [b"e2", b"e3"]
    assert [e.buffer for e in log.slice(1, 103)] == [b"e1", b"e2"]
    assert [e.buffer for e in log.slice(103, 1000)] == [b"e3", b"e4"]
    assert log.slice(104, 104) == []
    assert log.slice(105, 200) == []
    assert log.slice(103, 102) == []


def test_truncate_from_drops_suffix_and_rewinds_cursors() -> None:
    """Raft §5.3: a follower deletes a conflicting entry and all that follow it.  What was
    persisted beyond the cut is no longer durable log, and the runtime is told to truncate."""
    log = _log(5, 6, 6, 7, start=101, boundary_term=5)
    assert log.persisted == 104  # loaded from storage
    log.truncate_from(103)
    assert log.last_index == 102
    assert log.persisted == 102
    assert log.unstable_from == 103
    log.append(log_terms(8))
    truncate, first, entries = log.take_unstable()
    assert (truncate, first, [e.term for e in entries]) == (103, 103, [8])
    assert log.truncated_from == 0  # handed over once


def test_truncate_remembers_lowest_cut() -> None:
    """Raft §5.3 truncation across two appends before the runtime persists: it must be told to
    truncate from the lower cut."""
    log = _log(1, 1, 1, 1, 1)
    log.truncate_from(5)
    log.append(log_terms(2))
    log.truncate_from(3)
    truncate, first, _ = log.take_unstable()
    assert (truncate, first) == (3, 3)


def test_truncate_into_compacted_prefix_is_refused() -> None:
    """Raft §7: snapshotted entries are committed and can never conflict, so truncating into
    the compacted prefix is refused."""
    log = _log(5, 6, start=101, boundary_term=5)
    with pytest.raises(ValueError):
        log.truncate_from(100)
    assert log.last_index == 102


@pytest.mark.parametrize(
    ("term", "below_or_at", "expected"),
    [
        (3, 6, 5),  # index 6 has term 4 > 3; index 5 has term 3
        (4, 6, 6),
        (2, 6, 3),
        (1, 6, 1),
        (0, 6, 0),  # the boundary when nothing qualifies
        (9, 3, 3),
        (9, 50, 6),  # clipped to the last index
    ],
)
def test_last_index_with_term_at_most(term: int, below_or_at: int, expected: int) -> None:
    """Fast backtracking (Raft §5.3, last paragraph; etcd's findConflictByTerm): the largest
    index <= ``below_or_at`` whose term is <= ``term``.  Log terms: 1 2 2 3 3 4."""
    log = _log(1, 2, 2, 3, 3, 4)
    assert log.last_index_with_term_at_most(term, below_or_at) == expected


def test_last_index_with_term_at_most_stops_at_boundary() -> None:
    """Raft §5.3 fast backtracking with a log starting at 101 (Raft §7): the answer never goes
    below the boundary (100)."""
    log = _log(6, 6, 7, start=101, boundary_term=5)
    assert log.last_index_with_term_at_most(4, 103) == 100
    assert log.last_index_with_term_at_most(6, 103) == 102
    assert log.last_index_with_term_at_most(7, 500) == 103


@pytest.mark.parametrize(
    ("last_term", "last_index", "up_to_date"),
    [(1, 10, False), (2, 2, False), (2, 3, True), (2, 4, True), (3, 1, True)],
)
def test_is_up_to_date(last_term: int, last_index: int, up_to_date: bool) -> None:
    """Raft §5.4.1: the log with the later last term is more up to date; with equal last
    terms the longer log is.  Our log: terms 1 1 2 (last 3/2)."""
    assert _log(1, 1, 2).is_up_to_date(last_term, last_index) is up_to_date


def test_compact_moves_boundary() -> None:
    """Raft §7: compaction replaces a durable prefix by the boundary (index, term)."""
    log = _log(1, 2, 2, 3)
    log.compact(2)
    assert (log.start_index, log.boundary_index, log.boundary_term) == (3, 2, 2)
    assert log.term_at(2) == 2
    assert log.term_at(1) is None
    assert [e.term for e in log.slice(1, 10)] == [2, 3]
    log.compact(1)  # below the boundary: nothing to do
    assert log.start_index == 3


def test_compact_refuses_non_durable_entries() -> None:
    """Raft §7: only durable (hence possibly committed) entries can be compacted into a
    snapshot."""
    log = _log(1, 1)
    log.append(log_terms(2))
    assert log.persisted == 2
    with pytest.raises(ValueError):
        log.compact(3)
    log.take_unstable()
    log.mark_persisted(3, 2)
    log.compact(3)
    assert (log.boundary_index, log.boundary_term, log.last_index) == (3, 2, 3)


def test_mark_persisted_ignores_a_replaced_entry() -> None:
    """Thesis §3.8 (durability before acknowledging): a write acknowledgement for an entry
    since truncated and replaced (different term) must not mark the new entry durable."""
    log = _log(1)
    log.append(log_terms(1, 1)[1:])
    log.take_unstable()
    log.truncate_from(2)
    log.append([LogEntry(2)])
    log.mark_persisted(2, 1)  # the old entry at 2 had term 1
    assert log.persisted == 1
    log.take_unstable()
    log.mark_persisted(2, 2)
    assert log.persisted == 2


def test_mark_persisted_never_beyond_what_was_handed_out() -> None:
    """Thesis §3.8: entries appended after the Ready was taken are not durable yet, whatever
    index the acknowledgement names."""
    log = _log(1)
    log.append([LogEntry(1)])
    log.take_unstable()  # hands out index 2
    log.append([LogEntry(1)])  # index 3, not handed out
    log.mark_persisted(3, 1)
    assert log.persisted == 2


@given(
    start=st.integers(1, 300),
    terms=st.lists(st.integers(1, 5), max_size=30).map(sorted),
    lo=st.integers(0, 340),
    hi=st.integers(0, 340),
)
def test_slice_and_term_at_match_a_list_model(start: int, terms: list[int], lo: int,
                                              hi: int) -> None:
    """Raft §5.3/§7 index arithmetic agrees with a plain dict {index: entry} for any start
    index (property test)."""
    entries = log_terms(*terms)
    log = RaftLog(entries, start_index=start, boundary_term=terms[0] if terms else 0)
    model = {start + k: e for k, e in enumerate(entries)}
    assert log.slice(lo, hi) == [model[i] for i in range(lo, hi) if i in model]
    for i in (lo, hi):
        if i in model:
            assert log.term_at(i) == model[i].term
        elif i != start - 1:
            assert log.term_at(i) is None
    assert log.last_index == start + len(entries) - 1
