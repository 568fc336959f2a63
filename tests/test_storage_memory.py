"""The in-memory storage passes the conformance suites, and the suites catch broken stores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trio.testing

from nuraft_mesg.errors import BadRequest, QueryNotSupported
from nuraft_mesg.raft.ready import BecomeLeader, RemovedFromCluster
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, ServerConfig
from nuraft_mesg.storage import (
    KVStateMachine,
    LogStore,
    MemoryLogStore,
    MemoryStateManager,
    StateManager,
)
from nuraft_mesg.testing import check_log_store, check_state_manager


def _same(obj: LogStore) -> LogStore:
    return obj


def _same_smgr(obj: StateManager) -> StateManager:
    return obj


# -- the memory implementations conform ------------------------------------------------------
async def test_memory_log_store_conforms() -> None:
    await check_log_store(MemoryLogStore, reopen=_same)


async def test_memory_state_manager_conforms() -> None:
    counter = iter(range(1, 1000))

    def factory() -> StateManager:
        sid = next(counter)
        return MemoryStateManager(sid, f"peer-{sid}")

    await check_state_manager(factory, reopen=_same_smgr)


# -- the suites catch broken implementations -------------------------------------------------
class _IgnoresTruncate(MemoryLogStore):
    """Appends but never deletes the conflicting tail."""

    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        await super().write(first_index if entries else self.next_slot(), entries)


class _KeepsStaleTail(MemoryLogStore):
    """Overwrites conflicting entries in place but leaves the old entries after them."""

    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        stale_from = first_index + len(entries)
        stale = self.entries(stale_from, self.next_slot()) if stale_from < self.next_slot() else []
        await super().write(first_index, entries, truncate_from=truncate_from)
        if truncate_from > 0 and entries:
            self._entries.extend(stale)


class _TermOffByOne(MemoryLogStore):
    def term_at(self, index: int) -> int:
        return super().term_at(index - 1) if index > 0 else 0


class _ForgetsBoundaryTerm(MemoryLogStore):
    def term_at(self, index: int) -> int:
        return 0 if index == self.start_index() - 1 else super().term_at(index)


class _InclusiveEnd(MemoryLogStore):
    def entries(self, start: int, end: int) -> list[LogEntry]:
        return super().entries(start, min(end + 1, self.next_slot()))


class _AcceptsGaps(MemoryLogStore):
    """Fills a gap by silently moving the entries down (a classic off-by-N bug)."""

    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        if not truncate_from:
            first_index = self.next_slot()
        await super().write(first_index, entries, truncate_from=truncate_from)


class _EmptyReadsInsteadOfIndexError(MemoryLogStore):
    def entries(self, start: int, end: int) -> list[LogEntry]:
        try:
            return super().entries(start, end)
        except IndexError:
            return []


@pytest.mark.parametrize(
    "broken",
    [
        _IgnoresTruncate,
        _KeepsStaleTail,
        _TermOffByOne,
        _ForgetsBoundaryTerm,
        _InclusiveEnd,
        _AcceptsGaps,
        _EmptyReadsInsteadOfIndexError,
    ],
)
async def test_conformance_catches_broken_log_store(broken: Callable[[], LogStore]) -> None:
    with pytest.raises(AssertionError):
        await check_log_store(broken)


async def test_conformance_catches_a_store_that_forgets_across_reopen() -> None:
    def reopen(store: LogStore) -> LogStore:
        return MemoryLogStore()  # everything lost

    with pytest.raises(AssertionError, match="reopen"):
        await check_log_store(MemoryLogStore, reopen=reopen)


async def test_conformance_failure_names_the_check() -> None:
    with pytest.raises(AssertionError, match=r"^\[truncate then append\] .*next_slot\(\)"):
        await check_log_store(_KeepsStaleTail)


class _ForgetfulConfig(MemoryStateManager):
    async def save_config(self, config: ClusterConfig) -> None:
        return


class _DestroyKeepsState(MemoryStateManager):
    def permanent_destroy(self) -> None:
        self.destroyed = True


class _SavesAfterDestroy(MemoryStateManager):
    async def save_state(self, state: HardState) -> None:
        self.destroyed = False
        await super().save_state(state)


@pytest.mark.parametrize("broken", [_ForgetfulConfig, _DestroyKeepsState, _SavesAfterDestroy])
async def test_conformance_catches_broken_state_manager(
    broken: type[MemoryStateManager],
) -> None:
    with pytest.raises(AssertionError):
        await check_state_manager(lambda: broken(1, "me"))


async def test_conformance_catches_a_state_manager_that_forgets_across_reopen() -> None:
    with pytest.raises(AssertionError, match="reopen"):
        await check_state_manager(
            lambda: MemoryStateManager(1, "me"),
            reopen=lambda smgr: MemoryStateManager(smgr.server_id, "me"),
        )


# -- MemoryLogStore extras ---------------------------------------------------------------------
async def test_memory_log_store_rejects_decreasing_terms() -> None:
    store = MemoryLogStore()
    await store.write(1, [LogEntry(term=2), LogEntry(term=3)])
    with pytest.raises(ValueError, match="follows term"):
        await store.write(3, [LogEntry(term=2)])
    with pytest.raises(ValueError, match="follows term"):
        await store.write(2, [LogEntry(term=1)], truncate_from=2)
    assert store.next_slot() == 3


async def test_memory_log_store_rejects_compaction_with_wrong_term() -> None:
    store = MemoryLogStore()
    await store.write(1, [LogEntry(term=1), LogEntry(term=2)])
    with pytest.raises(ValueError, match="has term 2"):
        await store.compact(2, 1)
    assert store.start_index() == 1


async def test_memory_writes_complete_without_yielding() -> None:
    """An in-memory write completes at once: a yield would cost every Ready of every group a
    scheduler round (the latency of every commit); slow disks are the harness's SimDisk."""
    store = MemoryLogStore()
    smgr = MemoryStateManager(1, "uuid-1")
    with trio.testing.assert_no_checkpoints():
        await store.write(1, [LogEntry(term=1)])
        await smgr.save_state(HardState(term=1, vote=1, commit=0))
        await smgr.save_config(ClusterConfig(servers=(ServerConfig(id=1, endpoint="uuid-1"),)))
    assert store.next_slot() == 2
    assert smgr.read_state() == HardState(term=1, vote=1, commit=0)


# -- MemoryStateManager ------------------------------------------------------------------------
async def test_memory_state_manager_defaults() -> None:
    smgr = MemoryStateManager(7, "uuid-7")
    assert smgr.server_id == 7
    assert smgr.load_config() == ClusterConfig(servers=(ServerConfig(id=7, endpoint="uuid-7"),))
    assert smgr.read_state() is None
    assert smgr.load_log_store() is smgr.load_log_store()
    assert isinstance(smgr.get_state_machine(), KVStateMachine)
    assert smgr.get_logstore_id() == 0


async def test_memory_state_manager_keeps_supplied_parts() -> None:
    config = ClusterConfig(servers=(ServerConfig(id=1), ServerConfig(id=2)))
    machine = KVStateMachine()
    store = MemoryLogStore()
    smgr = MemoryStateManager(1, "a", initial_config=config, state_machine=machine, log_store=store)
    assert smgr.load_config() is config
    assert smgr.get_state_machine() is machine
    assert smgr.load_log_store() is store


async def test_memory_state_manager_hooks_and_destroy() -> None:
    smgr = MemoryStateManager(1, "a")
    smgr.raft_event(BecomeLeader(term=2))
    smgr.raft_event(RemovedFromCluster(term=3))
    smgr.leave()
    smgr.become_ready()
    assert smgr.events == [BecomeLeader(term=2), RemovedFromCluster(term=3)]
    assert smgr.left
    assert smgr.ready_count == 1

    await smgr.save_state(HardState(term=3, vote=1))
    await smgr.load_log_store().write(1, [LogEntry(term=1)])
    smgr.permanent_destroy()
    assert smgr.destroyed
    assert smgr.read_state() is None
    assert smgr.load_config() == ClusterConfig(servers=(ServerConfig(id=1, endpoint="a"),))
    with pytest.raises(RuntimeError):
        await smgr.save_state(HardState(term=4))
    with pytest.raises(RuntimeError):
        await smgr.save_config(smgr.load_config())
    with pytest.raises(RuntimeError):
        smgr.load_log_store()


# -- KVStateMachine ----------------------------------------------------------------------------
def test_kv_set_del_and_echo() -> None:
    sm = KVStateMachine()
    assert sm.last_commit_index() == 0
    assert sm.commit(1, b"set a 1") == b"OK"
    assert sm.commit(2, b"set b hello world") == b"OK"
    assert sm.commit(3, b"del a") == b"OK"
    assert sm.commit(4, b"del missing") == b"OK"
    assert sm.commit(5, b"hello") == b"hello"
    assert sm.data == {"b": "hello world"}
    assert sm.applied == [
        (1, b"set a 1"),
        (2, b"set b hello world"),
        (3, b"del a"),
        (4, b"del missing"),
        (5, b"hello"),
    ]
    assert sm.last_commit_index() == 5


@pytest.mark.parametrize(
    "data",
    [
        b"set",
        b"set a",
        b"set  v",
        b"del",
        b"del a b",
        b"del ",
        b"SET a 1",
        b"\xff set a 1",
        b"set\xff a 1",
        b"",
    ],
)
def test_kv_non_commands_are_echoed(data: bytes) -> None:
    sm = KVStateMachine()
    assert sm.commit(1, data) == data
    assert sm.data == {}
    assert sm.applied == [(1, data)]


def test_kv_empty_value_and_overwrite() -> None:
    sm = KVStateMachine()
    sm.commit(1, b"set k ")
    assert sm.data == {"k": ""}
    sm.commit(2, b"set k v2")
    assert sm.data == {"k": "v2"}


def test_kv_query_reads_values_and_tells_a_missing_key_from_an_empty_value() -> None:
    sm = KVStateMachine()
    get = KVStateMachine.get_query
    assert sm.query(get("k")) == b"-"
    sm.commit(1, b"set k ")
    sm.commit(2, b"set v hello world")
    assert sm.query(get("k")) == b"="
    assert sm.query(b"get v") == b"=hello world"
    assert KVStateMachine.decode_get(sm.query(get("k"))) == ""
    assert KVStateMachine.decode_get(sm.query(get("v"))) == "hello world"
    sm.commit(3, b"del k")
    assert KVStateMachine.decode_get(sm.query(get("k"))) is None
    assert KVStateMachine.decode_get(sm.query(get("never"))) is None
    assert sm.data == {"v": "hello world"}  # queries change nothing
    assert sm.last_commit_index() == 3
    assert [i for i, _ in sm.applied] == [1, 2, 3]


@pytest.mark.parametrize(
    "query", [b"", b"get", b"get ", b"get a b", b"GET a", b"set a 1", b"\xff", b"get \xff"]
)
def test_kv_malformed_queries_are_bad_requests(query: bytes) -> None:
    sm = KVStateMachine()
    sm.commit(1, b"set a 1")
    with pytest.raises(BadRequest):
        sm.query(query)
    assert sm.data == {"a": "1"}


@pytest.mark.parametrize("answer", [b"", b"OK", b"+x", b"=\xff", b"--"])
def test_kv_decode_get_refuses_what_query_never_answers(answer: bytes) -> None:
    with pytest.raises(BadRequest):
        KVStateMachine.decode_get(answer)


def test_the_default_query_hook_is_a_typed_refusal() -> None:
    from nuraft_mesg.storage.interfaces import StateMachine

    class Opaque(StateMachine):
        def commit(self, index: int, data: bytes) -> bytes:
            return data

        def last_commit_index(self) -> int:
            return 0

    with pytest.raises(QueryNotSupported) as info:
        Opaque().query(b"get a")
    assert isinstance(info.value, BadRequest)  # mapped like any bad request on the wire


def test_kv_config_entries_advance_the_index() -> None:
    sm = KVStateMachine()
    config = ClusterConfig(servers=(ServerConfig(id=1),)).at_index(2)
    sm.commit(1, b"x")
    sm.commit_config(2, config)
    sm.commit(4, b"y")  # gaps are fine: index 3 may be an entry the state machine never sees
    assert sm.configs == [(2, config)]
    assert sm.applied == [(1, b"x"), (4, b"y")]
    assert sm.last_commit_index() == 4


def test_kv_refuses_to_apply_twice_or_backwards() -> None:
    sm = KVStateMachine()
    sm.commit(3, b"set a 1")
    with pytest.raises(ValueError):
        sm.commit(3, b"set a 2")
    with pytest.raises(ValueError):
        sm.commit_config(2, ClusterConfig())
    assert sm.data == {"a": "1"}
    assert sm.applied == [(3, b"set a 1")]


# -- MemoryLogStore against a model --------------------------------------------------------------
_OPS = st.lists(
    st.tuples(st.sampled_from(["append", "truncate", "compact"]), st.integers(0, 6)),
    max_size=30,
)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(ops=_OPS)
def test_memory_log_store_matches_a_model(ops: list[tuple[str, int]]) -> None:
    """Random appends, truncations and compactions read back like a plain dict of terms."""

    async def run() -> None:
        store = MemoryLogStore()
        model: dict[int, int] = {}  # index -> term, for indices held
        start, boundary = 1, 0
        for op, n in ops:
            nxt = start + len(model)
            last = model.get(nxt - 1, boundary)
            if op == "append":
                await store.write(nxt, [LogEntry(term=last + i // 2) for i in range(n)])
                model.update({nxt + i: last + i // 2 for i in range(n)})
            elif op == "truncate":
                cut = max(start, nxt - n)
                await store.write(cut, [LogEntry(term=last + 1)], truncate_from=cut)
                model = {i: t for i, t in model.items() if i < cut}
                model[cut] = last + 1
            else:
                up_to = start - 1 + n
                term = model.get(up_to, last)
                await store.compact(up_to, term)
                if up_to >= start:
                    model = {i: t for i, t in model.items() if i > up_to}
                    start, boundary = up_to + 1, term
            nxt = start + len(model)
            assert (store.start_index(), store.next_slot()) == (start, nxt)
            assert [e.term for e in store.entries(start, nxt)] == [
                model[i] for i in range(start, nxt)
            ]
            assert store.term_at(start - 1) == (boundary if start > 1 else 0)
            assert store.last_term() == model.get(nxt - 1, boundary)

    trio.run(run)
