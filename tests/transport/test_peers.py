"""PeerSender: per-peer batching pumps, bounds with a control reserve, isolation of slow peers."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio
import trio.testing

from nuraft_mesg.raft.types import LogEntry, LogType, Message, MsgType
from nuraft_mesg.transport.base import (
    ReplyCallback,
    Status,
    StepHandler,
    Transport,
    TransportError,
)
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.peers import PeerSender, is_control

from . import cluster, make_reply, make_request, new_uuid

GROUP = new_uuid()

Behaviour = Callable[[GroupEnvelope, float], Awaitable[GroupEnvelope]]


class FakeTransport(Transport):
    """``call`` runs the peer's behaviour (default: answer at once) and tracks concurrency."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.changed = trio.Event()

    async def serve(
        self,
        handler: StepHandler,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        raise NotImplementedError

    async def call(
        self,
        peer: str,
        request: GroupEnvelope,
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
    ) -> GroupEnvelope:
        behaviour = self.behaviours.get(peer, answer)
        self.in_flight[peer] = self.in_flight.get(peer, 0) + 1
        self.max_in_flight[peer] = max(self.max_in_flight.get(peer, 0), self.in_flight[peer])
        self._notify()
        try:
            return await behaviour(request, timeout)
        finally:
            self.in_flight[peer] -= 1
            self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_in_flight(self, peer: str, count: int) -> None:
        while self.in_flight.get(peer, 0) != count:
            await self.changed.wait()


async def answer(request: GroupEnvelope, limit: float) -> GroupEnvelope:
    return make_reply(request)


async def hang(request: GroupEnvelope, limit: float) -> GroupEnvelope:
    await trio.sleep_forever()
    raise AssertionError


class Replies:
    """Collects on_reply results; ``wait(n)`` returns once n have arrived."""

    def __init__(self) -> None:
        self.results: list[GroupEnvelope | TransportError] = []
        self._arrived = trio.Event()

    def __call__(self, result: GroupEnvelope | TransportError) -> None:
        self.results.append(result)
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait(self, count: int) -> list[GroupEnvelope | TransportError]:
        with trio.fail_after(5):
            while len(self.results) < count:
                await self._arrived.wait()
        return self.results


class BatchTransport(FakeTransport):
    """Records every batch; answers each request once ``gate`` (if any) is set."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[GroupEnvelope]] = []
        self.gate: trio.Event | None = None
        self.pending: list[tuple[GroupEnvelope, ReplyCallback]] = []

    async def send_batch(
        self,
        peer: str,
        batch: Sequence[tuple[GroupEnvelope, ReplyCallback]],
        *,
        timeout: float,  # noqa: ASYNC109 - the Transport interface takes a timeout
        nursery: trio.Nursery,
    ) -> None:
        self.batches.append([request for request, _ in batch])
        self.pending.extend(batch)
        self._notify()
        if self.gate is None:
            self.answer_all()

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for request, on_reply in pending:
            on_reply(make_reply(request))

    async def wait_batches(self, count: int) -> None:
        with trio.fail_after(5):
            while len(self.batches) < count:
                await self.changed.wait()


def heartbeat(group: str, peer: str) -> GroupEnvelope:
    return make_request(group, peer)


def append(group: str, peer: str, term: int = 1) -> GroupEnvelope:
    return make_request(group, peer, term=term, payload=b"x")


async def test_post_delivers_the_reply() -> None:
    transport = FakeTransport()
    replies = Replies()
    async with PeerSender(transport) as sender:
        request = make_request(GROUP, "b")
        assert sender.post("b", request, replies)
        (reply,) = await replies.wait(1)
        assert reply == make_reply(request)
        stats = sender.statistics()
        assert stats.peers["b"].sent == 1 and stats.sent == 1 and stats.failed == 0


async def test_one_loop_turn_of_posts_is_one_batch_in_post_order() -> None:
    transport = BatchTransport()
    replies = Replies()
    groups = [new_uuid() for _ in range(300)]
    async with PeerSender(transport) as sender:
        for i, group in enumerate(groups):  # no checkpoint in between: one loop turn
            assert sender.post("b", append(group, "b", term=i + 1), replies)
        await replies.wait(300)
        assert len(transport.batches) == 1
        assert [r.group_id for r in transport.batches[0]] == groups
        for i, group in enumerate(groups):
            assert sender.post("b" if i % 2 else "c", heartbeat(group, "b"), replies)
        await replies.wait(600)
        assert len(transport.batches) == 3  # one more batch per peer
        stats = sender.statistics()
        assert stats.peers["b"].batches == 2 and stats.peers["c"].batches == 1
        assert stats.batches == 3 and stats.sent == 600


async def test_max_batch_splits_a_turn_into_batches() -> None:
    transport = BatchTransport()
    replies = Replies()
    async with PeerSender(transport, max_batch=64) as sender:
        for i in range(200):
            sender.post("b", append(GROUP, "b", term=i + 1), replies)
        await replies.wait(200)
    assert [len(b) for b in transport.batches] == [64, 64, 64, 8]
    terms = [r.message.term for b in transport.batches for r in b]
    assert terms == list(range(1, 201))


async def test_transport_errors_reach_the_callback() -> None:
    async def fail(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        raise TransportError(Status.UNAVAILABLE, "down")

    async def bug(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        raise ZeroDivisionError

    transport = FakeTransport()
    transport.behaviours = {"down": fail, "buggy": bug}
    replies = Replies()
    async with PeerSender(transport) as sender:
        sender.post("down", make_request(GROUP, "down"), replies)
        sender.post("buggy", make_request(GROUP, "buggy"), replies)
        results = await replies.wait(2)
        by_status = sorted(r.status for r in results if isinstance(r, TransportError))
        assert by_status == [Status.UNKNOWN, Status.UNAVAILABLE]
        stats = sender.statistics()
        assert stats.peers["down"].failed == 1 and stats.peers["buggy"].failed == 1
        assert stats.failed == 2 and stats.sent == 0


async def test_a_send_batch_that_raises_fails_its_batch_and_the_pump_goes_on() -> None:
    class Broken(BatchTransport):
        async def send_batch(self, peer: str, batch: Sequence[tuple[GroupEnvelope,
                             ReplyCallback]], *, timeout: float,  # noqa: ASYNC109
                             nursery: trio.Nursery) -> None:
            if not self.batches:
                self.batches.append([])
                raise RuntimeError("transport bug")
            await super().send_batch(peer, batch, timeout=timeout, nursery=nursery)

    transport = Broken()
    replies = Replies()
    async with PeerSender(transport) as sender:
        sender.post("b", heartbeat(GROUP, "b"), replies)
        (first,) = await replies.wait(1)
        assert isinstance(first, TransportError) and first.status == Status.UNKNOWN
        sender.post("b", heartbeat(GROUP, "b"), replies)
        results = await replies.wait(2)
        assert isinstance(results[1], GroupEnvelope)
        assert sender.statistics().peers["b"].in_flight == 0


async def test_timeout_is_passed_to_the_transport() -> None:
    seen: list[float] = []

    async def record(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        seen.append(limit)
        return make_reply(request)

    transport = FakeTransport()
    transport.behaviours["b"] = record
    replies = Replies()
    async with PeerSender(transport, timeout=0.75) as sender:
        sender.post("b", make_request(GROUP, "b"), replies)
        await replies.wait(1)
    assert seen == [0.75]


async def test_bounds_drop_data_first_and_keep_a_reserve_for_control_messages() -> None:
    transport = BatchTransport()
    transport.gate = trio.Event()  # nothing is answered
    replies = Replies()
    async with PeerSender(transport, queue_size=3, max_in_flight=2) as sender:
        assert [sender.post("b", append(new_uuid(), "b"), replies) for _ in range(2)] == [True] * 2
        await transport.wait_batches(1)  # the pump sent two: in flight is full
        posts = [sender.post("b", append(new_uuid(), "b"), replies) for _ in range(4)]
        assert posts == [True] * 3 + [False]
        control = [sender.post("b", heartbeat(new_uuid(), "b"), replies) for _ in range(4)]
        assert control == [True] * 3 + [False]  # the reserve: queue_size more
        stats = sender.statistics().peers["b"]
        assert (stats.dropped, stats.queued, stats.in_flight) == (2, 6, 2)
        assert sender.statistics().dropped == 2
        transport.answer_all()  # room again: the pump sends the next two, in order
        await transport.wait_batches(2)
        assert [len(b) for b in transport.batches] == [2, 2]
    assert len(replies.results) == 2  # the rest was abandoned at exit, no callbacks


def test_votes_and_heartbeats_are_control_messages() -> None:
    vote = Message(MsgType.REQUEST_VOTE_REQUEST, 2, 1, 2)
    pre_vote = Message(MsgType.PRE_VOTE_REQUEST, 2, 1, 2)
    assert is_control(GroupEnvelope(GROUP, "t", "b", vote))
    assert is_control(GroupEnvelope(GROUP, "t", "b", pre_vote))
    assert is_control(heartbeat(GROUP, "b"))
    assert not is_control(append(GROUP, "b"))
    entries = (LogEntry(1, LogType.CONFIG, b"{}"),)
    join = Message(MsgType.JOIN_CLUSTER_REQUEST, 1, 1, 2, entries=entries)
    assert not is_control(GroupEnvelope(GROUP, "t", "b", join))


async def test_slow_peer_does_not_hold_up_other_peers() -> None:
    transport = FakeTransport()
    transport.behaviours["slow"] = hang
    replies = Replies()
    async with PeerSender(transport, queue_size=4, max_in_flight=2) as sender:
        accepted = 0
        while sender.post("slow", append(GROUP, "slow"), replies):
            accepted += 1
        assert accepted == 4
        for _ in range(50):
            assert sender.post("fast", make_request(GROUP, "fast"), replies)
            await replies.wait(len(replies.results) + 1)
        assert len(replies.results) == 50
        assert sender.statistics().peers["fast"].sent == 50


async def test_unary_fallback_sends_one_groups_requests_one_at_a_time_in_order() -> None:
    """Over a transport with only ``call`` (the base send_batch), NuRaft's one request in
    flight per peer and group holds; other groups overtake."""
    gates = {term: trio.Event() for term in range(1, 6)}
    order: list[tuple[str, int]] = []

    async def gated(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        order.append((request.group_id, request.message.term))
        await gates[request.message.term].wait()
        return make_reply(request)

    transport = FakeTransport()
    transport.behaviours["b"] = gated
    replies = Replies()
    first, second = new_uuid(), new_uuid()
    async with PeerSender(transport) as sender:
        for term in range(1, 6):
            assert sender.post("b", make_request(first, "b", term=term), replies)
            await trio.testing.wait_all_tasks_blocked()  # each its own batch
        assert sender.post("b", make_request(second, "b", term=5), replies)
        await transport.wait_in_flight("b", 2)  # one per group
        assert sorted(order) == sorted([(first, 1), (second, 5)])
        gates[5].set()  # the second group finishes while the first one's request 1 waits
        await replies.wait(1)
        for term in range(1, 5):
            gates[term].set()
        results = await replies.wait(6)
    assert [t for g, t in order if g == first] == [1, 2, 3, 4, 5]
    answered = [r for r in results if isinstance(r, GroupEnvelope) and r.group_id == first]
    assert [r.message.term for r in answered] == [1, 2, 3, 4, 5]
    assert transport.max_in_flight["b"] == 2


async def test_a_failing_callback_does_not_stop_the_pump(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    replies = Replies()

    def explode(result: GroupEnvelope | TransportError) -> None:
        raise RuntimeError("callback bug")

    async with PeerSender(transport) as sender:
        sender.post("b", make_request(GROUP, "b"), explode)
        sender.post("b", make_request(GROUP, "b"), replies)
        await replies.wait(1)
    assert "callback bug" in caplog.text


async def test_exit_cancels_calls_in_flight_promptly() -> None:
    transport = FakeTransport()
    transport.behaviours["slow"] = hang
    replies = Replies()
    with trio.fail_after(5):
        async with PeerSender(transport) as sender:
            for _ in range(5):
                sender.post("slow", make_request(new_uuid(), "slow"), replies)
            await transport.wait_in_flight("slow", 5)
    assert transport.in_flight["slow"] == 0
    assert replies.results == []
    assert not sender.post("slow", make_request(GROUP, "slow"), replies)
    assert not sender.post("other", make_request(GROUP, "other"), replies)


async def test_misuse_is_refused() -> None:
    transport = FakeTransport()
    sender = PeerSender(transport)
    with pytest.raises(RuntimeError):
        sender.post("b", make_request(GROUP, "b"), Replies())
    async with sender:
        pass
    with pytest.raises(RuntimeError):
        async with sender:
            pass  # pragma: no cover
    for bad in ({"queue_size": 0}, {"max_in_flight": 0}, {"max_batch": 0}, {"timeout": 0.0}):
        with pytest.raises(ValueError):
            PeerSender(transport, **bad)


async def test_an_error_in_the_block_comes_out_unwrapped() -> None:
    transport = FakeTransport()
    transport.behaviours["slow"] = hang
    with pytest.raises(ZeroDivisionError):
        async with PeerSender(transport) as sender:
            sender.post("slow", make_request(GROUP, "slow"), Replies())
            await transport.wait_in_flight("slow", 1)
            raise ZeroDivisionError


def test_statistics_are_frozen() -> None:
    stats = PeerSender(FakeTransport()).statistics()
    assert stats.sent == stats.failed == stats.dropped == stats.batches == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.peers = {}  # type: ignore[misc]


async def test_over_grpc_slow_peer_fills_its_queue_while_another_is_served() -> None:
    entered = trio.Event()

    async def slow_step(request: GroupEnvelope) -> GroupEnvelope:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError

    async with cluster(3) as (_, (a, slow, fast)):
        slow.handler.step = slow_step
        replies = Replies()
        async with PeerSender(a.transport, queue_size=4, max_in_flight=2, timeout=10) as sender:
            for _ in range(2):
                assert sender.post(slow.uuid, append(new_uuid(), slow.uuid), replies)
            with trio.fail_after(5):
                await entered.wait()
                while sender.post(slow.uuid, append(new_uuid(), slow.uuid), replies):
                    pass
                for i in range(20):
                    request = make_request(GROUP, fast.uuid, term=i + 1)
                    assert sender.post(fast.uuid, request, replies)
                    results = await replies.wait(i + 1)
            assert all(isinstance(r, GroupEnvelope) for r in results)
            assert sorted(r.message.term for r in results if isinstance(r, GroupEnvelope)) == list(
                range(1, 21)
            )
            stats = sender.statistics()
            assert stats.peers[slow.uuid].dropped == 1
            assert stats.peers[slow.uuid].queued == 4
            assert stats.peers[slow.uuid].in_flight == 2
            assert stats.peers[fast.uuid].sent == 20
