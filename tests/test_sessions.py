"""Exactly-once client sessions (nuraft_mesg.sessions): the state machine wrapper (dups,
out-of-order seqs, acknowledgements, expiry, epochs, snapshots) and the client's retries;
then real Managers on loopback, writing through followers and an ExternalClient."""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from nuraft_mesg import BadRequest, RaftTimeout, SessionExpired
from nuraft_mesg.client import ExternalClient
from nuraft_mesg.raft.types import ClusterConfig, SnapshotMeta
from nuraft_mesg.sessions import (
    ClientSession,
    Kind,
    SessionStateMachine,
    Status,
    decode_result,
    encode_request,
)
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing.local import LocalCluster
from tests.test_forwarding import GROUP_TYPE, PARAMS, Counter, three_node_group

A = b"A" * 16
B = b"B" * 16
C = b"C" * 16


class Replica:
    """A SessionStateMachine over a KVStateMachine, fed with consecutive log indices."""

    def __init__(self, **limits: int) -> None:
        self.kv = KVStateMachine()
        self.sm = SessionStateMachine(self.kv, **limits)
        self.index = 0

    def apply(self, data: bytes) -> bytes:
        self.index += 1
        return self.sm.commit(self.index, data)

    def register(self, cid: bytes) -> int:
        status, payload = decode_result(self.apply(encode_request(Kind.REGISTER, cid)))
        assert status == Status.OK
        return int.from_bytes(payload, "big")

    def write(self, cid: bytes, epoch: int, seq: int, data: bytes, acked: int = 0
              ) -> tuple[Status, bytes]:
        return decode_result(self.apply(encode_request(Kind.WRITE, cid, epoch, seq, acked, data)))

    def applied(self) -> list[bytes]:
        return [d for _, d in self.kv.applied]


def test_a_retried_write_is_applied_once_and_answered_with_its_first_result() -> None:
    r = Replica()
    epoch = r.register(A)
    assert r.write(A, epoch, 1, b"first") == (Status.OK, b"first")
    assert r.write(A, epoch, 1, b"first") == (Status.OK, b"first")
    assert r.write(A, epoch, 1, b"changed payload, same seq") == (Status.OK, b"first")
    assert r.write(A, epoch, 2, b"set k v") == (Status.OK, b"OK")
    assert r.applied() == [b"first", b"set k v"]
    assert r.sm.last_commit_index() == r.index


def test_out_of_order_seqs_are_each_applied_once() -> None:
    r = Replica()
    epoch = r.register(A)
    assert r.write(A, epoch, 3, b"c") == (Status.OK, b"c")
    assert r.write(A, epoch, 1, b"a") == (Status.OK, b"a")
    assert r.write(A, epoch, 3, b"c") == (Status.OK, b"c")
    assert r.write(A, epoch, 2, b"b") == (Status.OK, b"b")
    assert r.write(A, epoch, 1, b"a") == (Status.OK, b"a")
    assert r.applied() == [b"c", b"a", b"b"]


def test_acknowledged_results_are_dropped_and_their_seqs_refused() -> None:
    r = Replica()
    epoch = r.register(A)
    r.write(A, epoch, 1, b"a")
    r.write(A, epoch, 2, b"b", acked=1)
    assert sorted(r.sm.sessions[A].results) == [2]
    assert r.write(A, epoch, 1, b"a") == (Status.STALE, b"")
    assert r.applied() == [b"a", b"b"]


def test_the_results_kept_per_session_are_bounded_without_a_second_apply() -> None:
    r = Replica(max_results_per_session=2)
    epoch = r.register(A)
    for seq in (1, 2, 3):
        r.write(A, epoch, seq, b"w%d" % seq)
    assert sorted(r.sm.sessions[A].results) == [2, 3]
    assert r.write(A, epoch, 1, b"w1") == (Status.STALE, b"")
    assert r.write(A, epoch, 2, b"w2") == (Status.OK, b"w2")
    assert r.applied() == [b"w1", b"w2", b"w3"]


def test_the_least_recently_used_session_expires_and_is_never_applied_again() -> None:
    r = Replica(max_sessions=2)
    ea, eb = r.register(A), r.register(B)
    r.write(A, ea, 1, b"a1")  # A is now more recent than B
    ec = r.register(C)  # evicts B
    assert list(r.sm.sessions) == [A, C]
    assert r.write(B, eb, 1, b"b1") == (Status.EXPIRED, b"")
    assert r.write(C, ec, 1, b"c1") == (Status.OK, b"c1")
    r.register(B)  # evicts A (B's old epoch stays refused: a new incarnation)
    assert r.write(A, ea, 1, b"a1") == (Status.EXPIRED, b"")
    assert r.applied() == [b"a1", b"c1"]


def test_a_late_register_copy_does_not_revive_an_expired_session() -> None:
    """A REGISTER copy committed after its session expired makes a new incarnation (a new
    epoch); the old writes name the old epoch and stay refused."""
    r = Replica(max_sessions=1)
    epoch = r.register(A)
    r.write(A, epoch, 1, b"once")
    r.register(B)  # A expires
    late = r.register(A)  # the late copy
    assert late != epoch
    assert r.write(A, epoch, 1, b"once") == (Status.EXPIRED, b"")
    assert r.applied() == [b"once"]


def test_close_forgets_the_session() -> None:
    r = Replica()
    epoch = r.register(A)
    r.write(A, epoch, 1, b"a")
    assert decode_result(r.apply(encode_request(Kind.CLOSE, A, epoch))) == (Status.OK, b"")
    assert not r.sm.sessions
    assert r.write(A, epoch, 2, b"b") == (Status.EXPIRED, b"")


def test_plain_entries_pass_through_and_malformed_headers_are_refused() -> None:
    r = Replica()
    assert r.apply(b"set x 1") == b"OK"
    assert r.apply(b"opaque") == b"opaque"
    header = encode_request(Kind.WRITE, A, 1, 1, 0, b"p")
    for bad in (header[:10], header[:4] + b"\x09" + header[5:],  # truncated; unknown version
                encode_request(Kind.WRITE, A, 1, 0, 0, b"p")):  # seq 0
        assert decode_result(r.apply(bad)) == (Status.BAD, b"")
    assert r.applied() == [b"set x 1", b"opaque"]
    assert r.kv.data == {"x": "1"}


def test_queries_go_to_the_inner_machine() -> None:
    r = Replica()
    epoch = r.register(A)
    assert r.write(A, epoch, 1, b"set k v") == (Status.OK, b"OK")
    assert r.sm.query(b"get k") == b"=v"
    assert r.sm.query(b"get other") == b"-"
    with pytest.raises(BadRequest):
        r.sm.query(b"bogus")
    assert r.applied() == [b"set k v"]


def test_a_result_that_is_not_a_session_result_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        decode_result(b"OK")


def snapshot_transfer(src: SessionStateMachine, dst: SessionStateMachine,
                      meta: SnapshotMeta) -> int:
    """Send ``src``'s snapshot ``meta`` to ``dst`` object by object; returns the count."""
    obj_id, is_last = 0, False
    while not is_last:
        data, is_last = src.read_snapshot_chunk(meta, obj_id)
        dst.save_snapshot_chunk(meta, obj_id, data, obj_id == 0, is_last)
        obj_id += 1
    dst.apply_snapshot(meta)
    return obj_id


def test_snapshot_round_trip_keeps_sessions_results_and_their_order() -> None:
    r = Replica(max_sessions=3)
    r.sm.snapshot_chunk_size = 7  # several session objects
    ea, eb = r.register(A), r.register(B)
    r.write(A, ea, 1, b"set k 1")
    r.write(B, eb, 2, b"b2")
    r.write(A, ea, 2, b"a2", acked=1)
    meta = SnapshotMeta(r.index, 1, ClusterConfig())
    r.sm.create_snapshot(meta)

    restored = Replica(max_sessions=3)
    objects = snapshot_transfer(r.sm, restored.sm, meta)
    assert objects > 2
    restored.index = r.index
    assert restored.sm.last_commit_index() == r.index
    assert restored.kv.data == {"k": "1"}
    assert list(restored.sm.sessions) == list(r.sm.sessions) == [B, A]
    assert restored.sm.sessions == r.sm.sessions
    # Dedup works on the restored replica; expiry picks the same victim as the original.
    for rep in (r, restored):
        assert rep.write(B, eb, 2, b"b2") == (Status.OK, b"b2")
        assert rep.write(A, ea, 1, b"set k 1") == (Status.STALE, b"")
        rep.register(C)
        rep.register(b"D" * 16)
        assert list(rep.sm.sessions) == [A, C, b"D" * 16]  # B was least recent
    assert [d for _, d in restored.kv.applied] == [d for _, d in r.kv.applied]


_ops = st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from(list(Kind)),
                          st.integers(1, 6), st.integers(0, 6)), max_size=60)


@given(_ops, st.integers(0, 60))
def test_replicas_agree_and_never_apply_a_seq_twice(ops: list[tuple[bytes, Kind, int, int]],
                                                    cut: int) -> None:
    """Two replicas apply the same entries, the second restarted from the first's snapshot
    at ``cut``: same results, same table, and each (client, epoch, seq) reaches the inner
    state machine at most once."""
    first, second = Replica(max_sessions=2, max_results_per_session=3), None
    epochs: dict[bytes, int] = {}
    seen: set[bytes] = set()
    for i, (cid, kind, seq, acked) in enumerate(ops):
        if i == cut:
            second = Replica(max_sessions=2, max_results_per_session=3)
            meta = SnapshotMeta(first.index, 1, ClusterConfig())
            first.sm.create_snapshot(meta)
            snapshot_transfer(first.sm, second.sm, meta)
            second.index = first.index
        payload = b"%s/%d/%d" % (cid[:1], epochs.get(cid, 0), seq)
        entry = encode_request(kind, cid, epochs.get(cid, 0), seq, acked, payload)
        before = len(first.kv.applied)
        result = first.apply(entry)
        if second is not None:
            assert second.apply(entry) == result
        _, out = decode_result(result)
        if kind == Kind.REGISTER:
            epochs[cid] = int.from_bytes(out, "big")
        if len(first.kv.applied) > before:
            assert payload not in seen
            seen.add(payload)
    if second is not None:
        assert second.sm.sessions == first.sm.sessions
        assert list(second.sm.sessions) == list(first.sm.sessions)
        assert second.kv.applied == first.kv.applied
        assert second.sm.last_commit_index() == first.sm.last_commit_index()


def test_a_snapshot_at_an_entry_the_inner_machine_never_saw() -> None:
    """Registrations and answered retries do not reach the inner machine, which may insist
    on snapshots of what it applied: its part is taken at its own last index."""
    r = Replica()
    epoch = r.register(A)
    r.write(A, epoch, 1, b"set k 1")
    r.write(A, epoch, 1, b"set k 1")  # a retry: the last index, unseen by the KV
    meta = SnapshotMeta(r.index, 2, ClusterConfig())
    r.sm.create_snapshot(meta)
    assert r.sm.last_snapshot() == meta
    assert r.kv.last_snapshot() == SnapshotMeta(2, 2, ClusterConfig())
    restored = Replica()
    snapshot_transfer(r.sm, restored.sm, meta)
    assert restored.sm.last_commit_index() == 3 and restored.kv.last_commit_index() == 2
    assert restored.sm.last_snapshot() == meta
    assert restored.kv.data == {"k": "1"}
    restored.index = r.index
    assert restored.write(A, epoch, 1, b"set k 1") == (Status.OK, b"OK")
    assert restored.applied() == [b"set k 1"]


# -- the client's retries --------------------------------------------------------------------
class FlakyGroup:
    """A group of one SessionStateMachine: the attempts numbered in ``lose`` are applied
    and then answered with RaftTimeout (the answer was lost)."""

    def __init__(self, lose: set[int]) -> None:
        self.replica = Replica()
        self.lose = lose
        self.attempts = 0

    async def send(self, group_id: str, entries: list[bytes]) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        self.attempts += 1
        results = [self.replica.apply(e) for e in entries]
        if self.attempts in self.lose:
            raise RaftTimeout("the answer was lost")
        return results


async def test_the_client_resends_with_the_same_seq_until_answered(
        autojump_clock: trio.abc.Clock) -> None:
    group = FlakyGroup(lose={2, 3, 5})
    async with ClientSession(group.send) as s:
        assert await s.append_entry("g", b"one") == b"one"       # attempts 2, 3 lost
        assert await s.append_entries("g", [b"set a 1", b"two"]) == [b"OK", b"two"]  # 5 lost
        assert s.retries == 3
    assert group.replica.applied() == [b"one", b"set a 1", b"two"]
    assert not group.replica.sm.sessions  # closed


async def test_the_client_raises_session_expired_not_a_second_apply(
        autojump_clock: trio.abc.Clock) -> None:
    group = FlakyGroup(lose=set())
    group.replica.sm.max_sessions = 1
    s = ClientSession(group.send)
    await s.append_entry("g", b"x")
    group.replica.register(B)  # someone else's session evicts ours
    with pytest.raises(SessionExpired):
        await s.append_entry("g", b"y")
    with pytest.raises(SessionExpired):  # and stays expired
        await s.append_entry("g", b"z")
    assert group.replica.applied() == [b"x"]


async def test_a_group_without_sessions_is_a_bad_request() -> None:
    kv = KVStateMachine()
    index = itertools.count(1)

    async def send(group_id: str, entries: list[bytes]) -> list[bytes]:
        await trio.lowlevel.checkpoint()
        return [kv.commit(next(index), e) for e in entries]

    with pytest.raises(BadRequest):
        await ClientSession(send).append_entry("g", b"x")


# -- real Managers on loopback ---------------------------------------------------------------
def session_counter() -> SessionStateMachine:
    return SessionStateMachine(Counter())


async def test_sessions_through_followers_and_an_external_client() -> None:
    """mgr.session() on every node (followers forward) and ExternalClient.session(): every
    write is answered with its own result; resending a write's exact entry bytes later (a
    retry after a lost answer) returns the first result and changes nothing."""
    with trio.fail_after(60):
        async with LocalCluster.open(3, group_types={GROUP_TYPE: PARAMS},
                                     default_group_type=GROUP_TYPE,
                                     state_machine_factory=session_counter) as cluster:
            gid, leader = await three_node_group(cluster)
            for node in cluster.nodes:
                async with node.mgr.session() as s:
                    results = await s.append_entries(gid, [b"a", b"b"])
                    assert [r.split(b":")[1] for r in results] == [b"a", b"b"]
            async with ExternalClient(cluster.directory) as client, client.session() as s:
                (result,) = await s.append_entries(gid, [b"ext"])
                assert result.endswith(b":ext")
                epoch = s._epochs[gid]
                entry = encode_request(Kind.WRITE, s.client_id, epoch, 1, 0, b"ext")
                for node in cluster.nodes:
                    (again,) = await client.append_entries(gid, [entry], dest=node.uuid)
                    assert decode_result(again) == (Status.OK, result)
            commit = leader.mgr.group(gid).statistics().commit_index
            await cluster.wait_applied(gid, commit)
            for node in cluster.nodes:
                sm = node.app.state_managers[gid].get_state_machine()
                assert isinstance(sm, SessionStateMachine) and isinstance(sm.inner, Counter)
                assert sm.inner.applied == [b"a", b"b"] * 3 + [b"ext"]
                assert not sm.sessions  # every session was closed


async def test_an_external_session_in_a_group_without_sessions_is_refused() -> None:
    with trio.fail_after(30):
        async with LocalCluster.open(3, group_types={GROUP_TYPE: PARAMS},
                                     default_group_type=GROUP_TYPE) as cluster:
            gid, _ = await three_node_group(cluster)
            async with ExternalClient(cluster.directory) as client:
                with pytest.raises(BadRequest):
                    async with client.session() as s:
                        await s.append_entry(gid, b"x")
