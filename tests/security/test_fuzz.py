"""Hostile bodies, by the thousand: random bytes, mutated valid encodings (a seeded byte-level
mutational fuzzer: bit flips, byte swaps, truncations, insertions, splices, duplicated
slices, overlong varints) and Hypothesis-generated RaftGroupMsg structures with impossible
field values - all sent as RaftStep, DataService/Call and Admin/Status bodies to a live
three-node cluster hosting two groups.

For every input: a clear gRPC status from an allowed set (never INTERNAL, UNKNOWN, a dropped
connection or a timeout).  After the storm: every node still hosts its groups, both groups
commit a new write, the data service answers, no handler crashed (no exception logged), and
the harness's ClusterChecker, which watched every core throughout, found no violation.

Forged leadership is out of scope (see test_impossible.py): generated leader requests
(append, join, leave, install snapshot) with a term at or above the target's either cannot
fit its log (an append whose previous index lies beyond it) or are sent with a stale term.
Budget: ``budget(n)`` inputs per loop, scaled by the Hypothesis profile (conftest.py)."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.types import ClusterConfig, LogType, MsgType, ServerConfig
from nuraft_mesg.testing.cluster import GROUP_TYPE
from nuraft_mesg.transport._proto.data_service_pb2 import DataServiceRequest
from nuraft_mesg.transport._proto.messaging_service_pb2 import RaftGroupMsg
from nuraft_mesg.transport.base import Status
from nuraft_mesg.transport.codec import decode_group_msg
from nuraft_mesg.transport.grpc import GrpcTransport
from nuraft_mesg.transport.status import encode_status_request

from . import DATA_PATH, RAFT_PATH, STATUS_PATH, LiveCluster, LiveNode, count_input, raw_call
from .conftest import budget

UNKNOWN_PATH = ("nuraft_mesg.Messaging", "Nope", "")
ALLOWED = {
    RAFT_PATH: {Status.OK, Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.CANCELLED},
    DATA_PATH: {Status.OK, Status.INVALID_ARGUMENT, Status.UNIMPLEMENTED},
    STATUS_PATH: {Status.OK, Status.INVALID_ARGUMENT},
    UNKNOWN_PATH: {Status.UNIMPLEMENTED},
}
IN_FLIGHT = 16
STRANGER = 4242
U64 = (1 << 64) - 1
I32 = (-(1 << 31), (1 << 31) - 1)

LEADER_REQUESTS = {MsgType.APPEND_ENTRIES_REQUEST, MsgType.JOIN_CLUSTER_REQUEST,
                   MsgType.LEAVE_CLUSTER_REQUEST, MsgType.INSTALL_SNAPSHOT_REQUEST}


async def echo(request: bytes) -> bytes:
    return request


@dataclass
class Arena:
    cluster: LiveCluster
    groups: list[str]
    attacker: GrpcTransport
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    _next: int = 0

    @property
    def target(self) -> LiveNode:
        return self.cluster.nodes[0]

    async def send(self, payload: bytes, path: tuple[str, str, str], kind: str,
                   target: LiveNode | None = None) -> None:
        node = target or self.target
        # One channel per alias of the node: an INVALID_ARGUMENT retires the channel it came
        # on (nuraft_mesg's bad_service), so several let reconnections overlap.
        self._next += 1
        alias = f"{node.uuid}#{self._next % IN_FLIGHT}"
        with trio.move_on_after(10) as scope:
            status, reply = await raw_call(self.attacker, alias, payload, path, timeout=8)
        count_input(kind)
        if scope.cancelled_caught:
            self.failures.append(f"{kind}: no answer in 10 s to {payload.hex()}")
            return
        self.statuses[status.name] = self.statuses.get(status.name, 0) + 1
        if status not in ALLOWED[path]:
            self.failures.append(f"{kind}: {status.name} on {path[1]} for {payload.hex()}")
        elif status == Status.OK and path == RAFT_PATH:
            decode_group_msg(reply)  # a reply that does not decode would be a bug

    async def storm(self, inputs: list[tuple[bytes, tuple[str, str, str]]], kind: str) -> None:
        limiter = trio.CapacityLimiter(IN_FLIGHT)

        async def one(payload: bytes, path: tuple[str, str, str]) -> None:
            async with limiter:
                await self.send(payload, path, kind)

        async with trio.open_nursery() as nursery:
            for payload, path in inputs:
                nursery.start_soon(one, payload, path)

    async def verify(self, caplog: pytest.LogCaptureFixture) -> None:
        """The server kept serving and the groups kept their invariants."""
        assert not self.failures, self.failures[:10]
        for n in self.cluster.nodes:
            assert set(self.groups) <= set(n.mgr.group_ids), n.name
        for k, gid in enumerate(self.groups):
            await self.cluster.commit(gid, b"set after-storm %d" % k)
            ctx = self.cluster.nodes[1].mgr.group(gid)
            assert await ctx.data_service_request_bidirectional(
                self.target.uuid, "echo", b"still here") == b"still here"
        self.cluster.check()
        crashed = [r.getMessage() for r in caplog.records
                   if r.exc_info is not None and r.name.startswith("nuraft_mesg")]
        assert not crashed, crashed[:5]


@pytest.fixture
async def arena(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Arena]:
    caplog.set_level(logging.WARNING, logger="nuraft_mesg")
    async with LiveCluster.open(3) as cluster:
        groups = [await cluster.create_group() for _ in range(2)]
        for gid in groups:
            for n in cluster.nodes:
                assert n.mgr.bind_data_service_request("echo", gid, echo)
            await cluster.commit(gid, b"set before 1")
        async with GrpcTransport(
            server_uuid=str(uuid.uuid4()),
            lookup_peer=lambda alias: cluster.directory.get(alias.split("#")[0], ""),
            max_send_message_size=256 << 10,
        ) as attacker:
            yield Arena(cluster, groups, attacker)


# -- random bytes -------------------------------------------------------------------------------
async def test_random_bytes(arena: Arena, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(0xB17E5)
    paths = list(ALLOWED)
    inputs = []
    for _ in range(budget(400)):
        size = rng.choice([0, 1, 2, 5, rng.randrange(64), rng.randrange(4096)])
        inputs.append((rng.randbytes(size), rng.choice(paths)))
    await arena.storm(inputs, "random-bytes")
    await arena.verify(caplog)


# -- mutated valid encodings ----------------------------------------------------------------------
def _seeds(arena: Arena) -> list[tuple[bytes, tuple[str, str, str]]]:
    """Valid encodings addressed to the target: every request type for a hosted group (from a
    stranger, with a stale term, previous index beyond the log), membership requests for an
    unknown group, data-service and status requests."""
    node, cluster = arena.target, arena.cluster
    seeds: list[tuple[bytes, tuple[str, str, str]]] = []
    config = ClusterConfig((ServerConfig(STRANGER, str(uuid.uuid4())),)).encode()
    for gid in arena.groups:
        core = node.cores[gid]
        for mtype in MsgType:
            if not mtype.is_request:
                continue
            hosted = mtype not in (MsgType.ADD_SERVER_REQUEST, MsgType.REMOVE_SERVER_REQUEST)
            pb = RaftGroupMsg(group_id=gid if hosted else str(uuid.uuid4()),
                              intended_addr=node.uuid)
            pb.msg.base.term = max(core.term - 1, 0)
            pb.msg.base.type = int(mtype)
            pb.msg.base.src = STRANGER
            pb.msg.base.dest = node.server_id
            req = pb.msg.rc_request
            req.last_log_term = core.term
            req.last_log_index = core.log.last_index + 7
            req.commit_index = core.commit + 3
            req.log_entries.add(term=max(core.term - 1, 0), type=int(LogType.APP),
                                buffer=b"set fuzz 1", timestamp=12345)
            if mtype == MsgType.JOIN_CLUSTER_REQUEST:
                req.log_entries.add(term=0, type=int(LogType.CONFIG), buffer=config)
            seeds.append((pb.SerializeToString(), RAFT_PATH))
        seeds.append((DataServiceRequest(group_id=gid, request_name="echo",
                                         intended_addr=node.uuid,
                                         payload=b"hello").SerializeToString(), DATA_PATH))
        seeds.append((encode_status_request([gid, cluster.nodes[1].uuid]), STATUS_PATH))
    return seeds


_INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x08, 0x10, 0x12, 0x1A, 0x22]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """1-4 byte-level mutations of ``data``."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # bit flip
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # interesting byte
            b[rng.randrange(len(b))] = rng.choice(_INTERESTING)
        elif op == 2:  # truncate
            del b[pos:]
        elif op == 3:  # insert random bytes
            b[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and b:  # delete a slice
            end = min(len(b), pos + rng.randint(1, 8))
            del b[pos:end]
        elif op == 5:  # splice with another seed
            other = rng.choice(corpus)
            b[pos:] = other[rng.randrange(len(other) + 1):]
        elif op == 6 and b:  # duplicate a slice
            start = rng.randrange(len(b))
            chunk = b[start:start + rng.randint(1, 16)]
            b[pos:pos] = chunk
        elif op == 7:  # an overlong / maximal varint
            b[pos:pos] = rng.choice([b"\xff" * 9 + b"\x01", b"\x80" * 10, b"\xff" * 10])
        elif op == 8 and len(b) > 1:  # swap two bytes
            i, j = rng.randrange(len(b)), rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
    return bytes(b)


async def test_mutated_encodings(arena: Arena, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(0x5EED)
    seeds = _seeds(arena)
    corpus = [s for s, _ in seeds]
    paths = list(ALLOWED)
    rounds = budget(800)
    batch = 200
    for start in range(0, rounds, batch):
        inputs = []
        for _ in range(min(batch, rounds - start)):
            payload, path = rng.choice(seeds)
            if rng.random() < 0.05:
                path = rng.choice(paths)  # a valid body for another method
            inputs.append((mutate(rng, payload, corpus), path))
        await arena.storm(inputs, "mutated")
        seeds = _seeds(arena)  # terms move on: keep the seeds stale, not future
    await arena.verify(caplog)


# -- Hypothesis-generated structures ---------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """A RaftGroupMsg with symbolic parts, resolved against the target's live state."""

    group: str  # "hosted", "other-hosted", "unknown", or a literal string
    intended: str  # "target", "other", or a literal string
    group_type: str
    mtype: int
    term: tuple[str, int]  # ("stale"|"same"|"future", delta) or ("abs", value)
    src: int
    dest: str | int  # "target" or an id
    half: str  # "request", "response", "none"
    prev: tuple[str, int]  # ("last", delta) or ("abs", value)
    prev_term: int
    commit: int
    entries: tuple[tuple[int, int, bytes, int], ...]  # (term, type, buffer, timestamp)
    hint: int
    next_index: int


def _buffers() -> st.SearchStrategy[bytes]:
    config = ClusterConfig((ServerConfig(STRANGER, str(uuid.uuid4())),)).encode()
    return st.one_of(
        st.binary(max_size=64),
        st.just(config),
        st.sampled_from([b"{}", b'{"servers": 5}', b'{"servers": [{"id": "x"}]}', b"[" * 5000,
                         b'{"servers": [], "log_idx": -1}', b"\xff\xfe", b"set a b"]),
    )


REQUEST_TYPES = [int(t) for t in MsgType if t.is_request]
VALID_SHAPES = st.builds(
    Shape,
    group=st.sampled_from(["hosted", "hosted", "other-hosted", "unknown"]),
    intended=st.just("target"),
    group_type=st.sampled_from(["", GROUP_TYPE]),
    mtype=st.sampled_from(REQUEST_TYPES),
    term=st.one_of(
        st.tuples(st.sampled_from(["stale", "same", "future"]), st.integers(0, 5)),
        st.tuples(st.just("abs"), st.sampled_from([0, 1 << 62, (1 << 62) + 1, (1 << 63) - 1])),
    ),
    src=st.one_of(st.just(STRANGER), st.integers(*I32)),
    dest=st.just("target"),
    half=st.just("request"),
    prev=st.one_of(st.tuples(st.just("last"), st.integers(-3, 3)),
                   st.tuples(st.just("abs"), st.integers(0, (1 << 63) - 1))),
    prev_term=st.integers(0, 10),
    commit=st.one_of(st.integers(0, 20), st.integers(0, (1 << 63) - 1)),
    entries=st.lists(st.tuples(
        st.integers(0, 10),
        st.sampled_from([int(t) for t in LogType]),
        _buffers(),
        st.integers(0, U64),
    ), max_size=6).map(tuple),
    hint=st.just(0),
    next_index=st.just(0),
)
WILD_SHAPES = st.builds(
    Shape,
    group=st.sampled_from(["hosted", "hosted", "hosted", "other-hosted", "unknown", "", "x"]),
    intended=st.sampled_from(["target"] * 6 + ["other", "", "not-a-uuid"]),
    group_type=st.sampled_from(["", "", GROUP_TYPE, "unknown-type", "\x00"]),
    mtype=st.one_of(st.sampled_from([int(t) for t in MsgType]), st.integers(0, 2**32 - 1)),
    term=st.one_of(
        st.tuples(st.sampled_from(["stale", "same", "future"]), st.integers(0, 5)),
        st.tuples(st.just("abs"), st.sampled_from([0, 1 << 62, (1 << 62) + 1, (1 << 63) - 1,
                                                   1 << 63, U64])),
        st.tuples(st.just("abs"), st.integers(0, U64)),
    ),
    src=st.one_of(st.just(STRANGER), st.integers(*I32), st.sampled_from([0, -1, *I32])),
    dest=st.one_of(st.just("target"), st.just("target"), st.integers(*I32)),
    half=st.sampled_from(["request"] * 8 + ["response", "none"]),
    prev=st.one_of(st.tuples(st.just("last"), st.integers(-3, 3)),
                   st.tuples(st.just("abs"), st.integers(0, U64))),
    prev_term=st.one_of(st.integers(0, 10), st.integers(0, U64)),
    commit=st.one_of(st.integers(0, 20), st.integers(0, U64)),
    entries=st.lists(st.tuples(
        st.one_of(st.integers(0, 10), st.integers(0, U64)),
        st.one_of(st.sampled_from([int(t) for t in LogType]), st.integers(0, 2**31 - 1)),
        _buffers(),
        st.integers(0, U64),
    ), max_size=6).map(tuple),
    hint=st.integers(0, U64),
    next_index=st.integers(0, U64),
)
SHAPES = st.one_of(VALID_SHAPES, VALID_SHAPES, VALID_SHAPES, WILD_SHAPES)
"""Three in four well-formed (so that they reach the groups), one in four anything."""


def _collect(strategy: st.SearchStrategy[Shape], n: int) -> list[Shape]:
    """``n`` examples drawn by Hypothesis (generation only: they are all sent to one live
    cluster, in one trio run; a failure is reported with its input).  Derandomized: the same
    inputs every run, so how many reach a group (asserted below) does not swing with the
    seed -- it did, between 18 % and 50 % of them."""
    out: list[Shape] = []

    @settings(max_examples=n, database=None, phases=[Phase.generate], derandomize=True,
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def collect(x: Shape) -> None:
        out.append(x)

    collect()
    return out


def _resolve(shape: Shape, arena: Arena) -> bytes:
    node = arena.target
    gid = {"hosted": arena.groups[0], "other-hosted": arena.groups[1],
           "unknown": str(uuid.uuid4())}.get(shape.group, shape.group)
    core: RaftNode | None = node.cores.get(gid)
    cur = core.term if core is not None else 1
    last = core.log.last_index if core is not None else 0
    kind, value = shape.term
    term = {"stale": max(cur - 1 - value, 0), "same": cur, "future": cur + 1 + value}.get(
        kind, value)
    prev = max(last + shape.prev[1], 0) if shape.prev[0] == "last" else shape.prev[1]
    if shape.mtype in LEADER_REQUESTS and term >= cur:
        # no forged leadership (module doc): such an append cannot fit the log, and the
        # other leader requests are sent from the past
        if shape.mtype == MsgType.APPEND_ENTRIES_REQUEST:
            prev = max(prev, last + 1)
        else:
            term = max(cur - 1, 0)
    pb = RaftGroupMsg(group_id=gid, group_type=shape.group_type)
    pb.intended_addr = {"target": node.uuid, "other": arena.cluster.nodes[1].uuid}.get(
        shape.intended, shape.intended)
    base = pb.msg.base
    base.term = term
    base.type = shape.mtype
    base.src = shape.src
    base.dest = node.server_id if shape.dest == "target" else int(shape.dest)
    if shape.half == "request":
        req = pb.msg.rc_request
        req.last_log_index = prev
        req.last_log_term = shape.prev_term
        req.commit_index = shape.commit
        for eterm, etype, buf, ts in shape.entries:
            req.log_entries.add(term=eterm, type=etype, buffer=buf, timestamp=ts)
    elif shape.half == "response":
        resp = pb.msg.rc_response
        resp.next_index = shape.next_index
        resp.batch_size_hint = shape.hint
        resp.accepted = True
    return pb.SerializeToString()


async def test_generated_structures(arena: Arena, caplog: pytest.LogCaptureFixture) -> None:
    shapes = await trio.to_thread.run_sync(_collect, SHAPES, budget(400))
    for start in range(0, len(shapes), 100):
        # resolved batch by batch: "same" and "future" follow the target's moving term
        inputs = [(_resolve(s, arena), RAFT_PATH) for s in shapes[start:start + 100]]
        await arena.storm(inputs, "generated")
    await arena.verify(caplog)
    # the storm reached the groups: most answers are Raft replies, not codec refusals
    assert arena.statuses.get("OK", 0) > len(shapes) // 4, arena.statuses


def test_mutator_is_deterministic() -> None:
    corpus = [b"abcdef", b"012345"]
    a = [mutate(random.Random(7), corpus[0], corpus) for _ in range(3)]
    b = [mutate(random.Random(7), corpus[0], corpus) for _ in range(3)]
    assert a == b


