"""Conformance suites for application-supplied storage.

Run them against your own :class:`~nuraft_mesg.storage.LogStore` and
:class:`~nuraft_mesg.storage.StateManager` from any trio test, like
``trio.testing.check_two_way_stream``::

    async def test_my_log_store(tmp_path):
        counter = itertools.count()
        await check_log_store(lambda: MyLogStore(tmp_path / str(next(counter))))

Each ``factory()`` call must return a new, empty object with storage of its own.  Pass
``reopen`` to also check that data survives a restart: given an object, it returns a new
object over the same persisted storage (for an in-memory store, the object itself).

A violation raises :class:`AssertionError` naming the check and what differed; so does any
unexpected exception from the implementation (chained as the cause).  The checks use explicit
``raise`` rather than ``assert`` statements, so they also work under ``python -O``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    LogType,
    ServerConfig,
)
from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager

__all__ = ["check_log_store", "check_state_manager"]

LogStoreFactory = Callable[[], LogStore]
LogStoreReopen = Callable[[LogStore], LogStore]
StateManagerFactory = Callable[[], StateManager]
StateManagerReopen = Callable[[StateManager], StateManager]


# -- helpers -----------------------------------------------------------------------------------
def _fail(message: str) -> AssertionError:
    return AssertionError(message)


def _expect_equal(what: str, actual: object, expected: object) -> None:
    if actual != expected:
        raise _fail(f"{what}: expected {expected!r}, got {actual!r}")


@contextmanager
def _raises(what: str, exc_type: type[Exception]) -> Iterator[None]:
    """Require the block to raise ``exc_type``; anything else is a violation."""
    try:
        yield
    except exc_type:
        return
    except AssertionError:
        raise
    except Exception as exc:
        raise _fail(f"{what}: expected {exc_type.__name__}, got {exc!r}") from exc
    raise _fail(f"{what}: expected {exc_type.__name__}, nothing was raised")


async def _run(name: str, check: Callable[[], Awaitable[None]]) -> None:
    """Run one check, naming it in failures and turning stray exceptions into failures."""
    try:
        await check()
    except AssertionError as exc:
        raise _fail(f"[{name}] {exc}") from exc
    except Exception as exc:
        raise _fail(f"[{name}] unexpected {exc!r}") from exc


def _entry(term: int, n: int) -> LogEntry:
    """Distinct entries that exercise every field, so a store that drops one is caught."""
    kind = LogType.CONFIG if n % 3 == 0 else LogType.APP
    return LogEntry(term=term, type=kind, buffer=b"entry-%d\x00\xff" % n, timestamp=1000 + n)


def _log(terms: Sequence[int], first: int = 1) -> list[LogEntry]:
    return [_entry(term, first + i) for i, term in enumerate(terms)]


def _expect_log(
    what: str, store: LogStore, start: int, entries: list[LogEntry], boundary_term: int
) -> None:
    """Check every read of ``store`` against the expected content."""
    nxt = start + len(entries)
    _expect_equal(f"{what}: start_index()", store.start_index(), start)
    _expect_equal(f"{what}: next_slot()", store.next_slot(), nxt)
    _expect_equal(f"{what}: entries({start}, {nxt})", store.entries(start, nxt), entries)
    for i, entry in enumerate(entries):
        _expect_equal(f"{what}: term_at({start + i})", store.term_at(start + i), entry.term)
        _expect_equal(
            f"{what}: entries({start + i}, {start + i + 1})",
            store.entries(start + i, start + i + 1),
            [entry],
        )
    _expect_equal(
        f"{what}: term_at({start - 1}) (boundary)", store.term_at(start - 1), boundary_term
    )
    _expect_equal(f"{what}: term_at(0)", store.term_at(0), 0)
    _expect_equal(f"{what}: entries({nxt}, {nxt})", store.entries(nxt, nxt), [])
    with _raises(f"{what}: term_at({nxt}) (next slot)", IndexError):
        store.term_at(nxt)
    with _raises(f"{what}: entries({start}, {nxt + 1}) (past the end)", IndexError):
        store.entries(start, nxt + 1)
    if start > 1:
        with _raises(f"{what}: entries({start - 1}, {nxt}) (compacted)", IndexError):
            store.entries(start - 1, nxt)
    if start > 2:
        with _raises(f"{what}: term_at({start - 2}) (compacted)", IndexError):
            store.term_at(start - 2)


# -- log store ---------------------------------------------------------------------------------
async def check_log_store(
    factory: LogStoreFactory, *, reopen: LogStoreReopen | None = None
) -> None:
    """Check that the stores ``factory`` makes follow the :class:`LogStore` contract."""

    def fresh() -> LogStore:
        store = factory()
        if not isinstance(store, LogStore):
            raise _fail(f"factory returned {store!r}, not a LogStore")
        return store

    async def empty() -> None:
        store = fresh()
        _expect_log("new store", store, 1, [], 0)
        with _raises("new store: entries(0, 1)", IndexError):
            store.entries(0, 1)
        with _raises("new store: term_at(-1)", IndexError):
            store.term_at(-1)
        _expect_equal("new store: last_index()", store.last_index(), 0)
        _expect_equal("new store: last_term()", store.last_term(), 0)

    async def append_and_read() -> None:
        store = fresh()
        log = _log([1, 1, 2])
        await store.write(1, log)
        _expect_log("after write(1, 3 entries)", store, 1, log, 0)
        more = _log([2, 3], first=4)
        await store.write(4, more)
        log += more
        _expect_log("after write(4, 2 entries)", store, 1, log, 0)
        _expect_equal("entries(2, 4)", store.entries(2, 4), log[1:3])
        _expect_equal("last_index()", store.last_index(), 5)
        _expect_equal("last_term()", store.last_term(), 3)
        await store.write(6, [])
        _expect_log("after writing no entries", store, 1, log, 0)
        with _raises("entries(4, 3) (reversed)", ValueError):
            store.entries(4, 3)
        await store.flush()
        _expect_log("after flush()", store, 1, log, 0)

    async def bad_writes() -> None:
        store = fresh()
        log = _log([1, 1, 2])
        await store.write(1, log)
        with _raises("write(5, ...) leaving a gap after index 3", ValueError):
            await store.write(5, _log([2], first=5))
        with _raises("write(3, ...) overlapping without truncate_from", ValueError):
            await store.write(3, _log([2], first=3))
        with _raises("write(0, ...)", ValueError):
            await store.write(0, _log([2], first=0))
        with _raises(
            "write(4, ..., truncate_from=2) (first index after truncation is 2)", ValueError
        ):
            await store.write(4, _log([3], first=4), truncate_from=2)
        with _raises("write(..., truncate_from=5) beyond next slot 4", ValueError):
            await store.write(5, _log([3], first=5), truncate_from=5)
        _expect_log("after rejected writes (must leave the store unchanged)", store, 1, log, 0)

    async def truncate_then_append() -> None:
        store = fresh()
        log = _log([1, 1, 2, 2, 2])
        await store.write(1, log)
        replacement = _log([3, 3], first=30)
        await store.write(3, replacement, truncate_from=3)
        log = log[:2] + replacement
        _expect_log("after write(3, 2 entries, truncate_from=3) over 5 entries", store, 1, log, 0)
        await store.write(3, [], truncate_from=3)
        log = log[:2]
        _expect_log("after a pure truncation write(3, [], truncate_from=3)", store, 1, log, 0)
        await store.write(0, [], truncate_from=2)
        log = log[:1]
        _expect_log("after write(0, [], truncate_from=2) (first_index unchecked)", store, 1, log, 0)
        tail = _log([4], first=40)
        await store.write(2, tail, truncate_from=2)
        log += tail
        _expect_log(
            "after write(2, 1 entry, truncate_from=2) (nothing to delete)", store, 1, log, 0
        )
        await store.write(1, _log([5, 5], first=50), truncate_from=1)
        log = _log([5, 5], first=50)
        _expect_log("after replacing the whole log (truncate_from=1)", store, 1, log, 0)

    async def compaction() -> None:
        store = fresh()
        log = _log([1, 1, 2, 2, 3])
        await store.write(1, log)
        await store.compact(3, 2)
        _expect_log("after compact(3, 2) of 5 entries", store, 4, log[3:], 2)
        await store.compact(2, 1)
        _expect_log("after compact(2, 1) behind the boundary (no-op)", store, 4, log[3:], 2)
        await store.compact(3, 2)
        _expect_log("after compact(3, 2) again (no-op)", store, 4, log[3:], 2)
        with _raises("write(..., truncate_from=3) into compacted entries", ValueError):
            await store.write(3, _log([4], first=3), truncate_from=3)
        more = _log([3, 4], first=6)
        await store.write(6, more)
        log += more
        _expect_log("after appending past a compaction", store, 4, log[3:], 2)
        replacement = _log([5], first=60)
        await store.write(4, replacement, truncate_from=4)
        log = log[:3] + replacement
        _expect_log("after truncating at the start index", store, 4, log[3:], 2)
        await store.compact(4, 5)
        _expect_log("after compacting up to the last entry", store, 5, [], 5)
        _expect_equal("empty compacted store: last_index()", store.last_index(), 4)
        _expect_equal("empty compacted store: last_term()", store.last_term(), 5)
        with _raises("write(6, ...) with a gap after a compacted-empty store", ValueError):
            await store.write(6, _log([5], first=6))
        tail = _log([5, 6], first=5)
        await store.write(5, tail)
        _expect_log("after appending to a compacted-empty store", store, 5, tail, 5)

    async def compact_beyond_log() -> None:
        store = fresh()
        await store.write(1, _log([1, 1]))
        await store.compact(10, 4)
        _expect_log("after compact(10, 4) beyond the last index 2", store, 11, [], 4)
        with _raises("write(10, ...) into compacted entries", ValueError):
            await store.write(10, _log([4], first=10))
        tail = _log([4, 5], first=11)
        await store.write(11, tail)
        _expect_log("after appending at 11", store, 11, tail, 4)

    async def survives_reopen() -> None:
        if reopen is None:
            return
        store = fresh()
        log = _log([1, 1, 2, 2, 3, 3])
        await store.write(1, log)
        await store.write(5, _log([4], first=70), truncate_from=5)
        log = log[:4] + _log([4], first=70)
        await store.compact(2, 1)
        await store.flush()
        reopened = reopen(store)
        _expect_log("after reopen", reopened, 3, log[2:], 1)
        await reopened.write(6, _log([4], first=6))
        _expect_log(
            "after writing to the reopened store", reopened, 3, log[2:] + _log([4], first=6), 1
        )

    await _run("empty store", empty)
    await _run("append and read back", append_and_read)
    await _run("rejected writes", bad_writes)
    await _run("truncate then append", truncate_then_append)
    await _run("compaction", compaction)
    await _run("compaction beyond the log", compact_beyond_log)
    await _run("reopen", survives_reopen)


# -- state manager -----------------------------------------------------------------------------
async def check_state_manager(
    factory: StateManagerFactory, *, reopen: StateManagerReopen | None = None
) -> None:
    """Check that the state managers ``factory`` makes follow the :class:`StateManager`
    contract.  Each must be new: nothing saved, an empty log."""

    def fresh() -> StateManager:
        smgr = factory()
        if not isinstance(smgr, StateManager):
            raise _fail(f"factory returned {smgr!r}, not a StateManager")
        return smgr

    def configs(server_id: int) -> tuple[ClusterConfig, ClusterConfig]:
        first = ClusterConfig(
            servers=(
                ServerConfig(id=server_id, endpoint="self", priority=100),
                ServerConfig(id=server_id + 1, endpoint="peer-a", learner=True, aux="x", dc_id=2),
                ServerConfig(id=server_id + 2, endpoint="peer-b", priority=0),
            ),
            log_idx=7,
            prev_log_idx=3,
            user_ctx="ctx",
        )
        second = first.with_servers(first.servers[:2]).at_index(12)
        return first, second

    async def new_manager() -> None:
        smgr = fresh()
        if not isinstance(smgr.server_id, int):
            raise _fail(f"server_id is {smgr.server_id!r}, not an int")
        _expect_equal("new manager: read_state()", smgr.read_state(), None)
        config = smgr.load_config()
        if not isinstance(config, ClusterConfig):
            raise _fail(f"new manager: load_config() returned {config!r}")
        store = smgr.load_log_store()
        if not isinstance(store, LogStore):
            raise _fail(f"new manager: load_log_store() returned {store!r}")
        _expect_equal("new manager: log start_index()", store.start_index(), 1)
        _expect_equal("new manager: log next_slot()", store.next_slot(), 1)
        machine = smgr.get_state_machine()
        if not isinstance(machine, StateMachine):
            raise _fail(f"new manager: get_state_machine() returned {machine!r}")
        _expect_equal("new manager: last_commit_index()", machine.last_commit_index(), 0)

    async def state_round_trip() -> None:
        smgr = fresh()
        for state in (
            HardState(term=1, vote=smgr.server_id, commit=0),
            HardState(term=3, vote=-1, commit=5),
            HardState(term=3, vote=9, commit=6),
        ):
            await smgr.save_state(state)
            _expect_equal(f"read_state() after save_state({state})", smgr.read_state(), state)

    async def config_round_trip() -> None:
        smgr = fresh()
        for config in configs(smgr.server_id):
            await smgr.save_config(config)
            _expect_equal("load_config() after save_config()", smgr.load_config(), config)

    async def survives_reopen() -> None:
        if reopen is None:
            return
        smgr = fresh()
        state = HardState(term=4, vote=smgr.server_id, commit=2)
        config = configs(smgr.server_id)[1]
        await smgr.save_state(state)
        await smgr.save_config(config)
        log = _log([1, 4])
        await smgr.load_log_store().write(1, log)
        again = reopen(smgr)
        _expect_equal("after reopen: server_id", again.server_id, smgr.server_id)
        _expect_equal("after reopen: read_state()", again.read_state(), state)
        _expect_equal("after reopen: load_config()", again.load_config(), config)
        _expect_log("after reopen: the log", again.load_log_store(), 1, log, 0)

    async def destroy() -> None:
        smgr = fresh()
        await smgr.save_state(HardState(term=2, vote=smgr.server_id, commit=1))
        await smgr.save_config(configs(smgr.server_id)[0])
        smgr.permanent_destroy()
        _expect_equal("read_state() after permanent_destroy()", smgr.read_state(), None)
        with _raises("save_state() after permanent_destroy()", Exception):
            await smgr.save_state(HardState(term=3, vote=-1, commit=1))
        with _raises("save_config() after permanent_destroy()", Exception):
            await smgr.save_config(configs(smgr.server_id)[1])
        _expect_equal("read_state() after a refused save", smgr.read_state(), None)

    await _run("new state manager", new_manager)
    await _run("hard state round trip", state_round_trip)
    await _run("config round trip", config_round_trip)
    await _run("reopen", survives_reopen)
    await _run("permanent_destroy", destroy)
