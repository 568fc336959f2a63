"""PeerSender: bounded per-peer queues, per-peer concurrency, isolation of slow peers."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest
import trio

from nuraft_mesg.transport.base import Status, StepHandler, Transport, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope
from nuraft_mesg.transport.peers import PeerSender

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


async def test_transport_errors_reach_the_callback() -> None:
    async def fail(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        raise TransportError(Status.UNAVAILABLE, "down")

    async def bug(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        raise ZeroDivisionError

    transport = FakeTransport()
    transport.behaviours = {"down": fail, "buggy": bug}
    replies = Replies()
    async with PeerSender(transport, concurrency=1) as sender:
        sender.post("down", make_request(GROUP, "down"), replies)
        sender.post("buggy", make_request(GROUP, "buggy"), replies)
        results = await replies.wait(2)
        by_status = sorted(r.status for r in results if isinstance(r, TransportError))
        assert by_status == [Status.UNKNOWN, Status.UNAVAILABLE]
        stats = sender.statistics()
        assert stats.peers["down"].failed == 1 and stats.peers["buggy"].failed == 1
        assert stats.failed == 2 and stats.sent == 0


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


async def test_full_queue_drops_and_counts() -> None:
    transport = FakeTransport()
    transport.behaviours["slow"] = hang
    replies = Replies()
    async with PeerSender(transport, queue_size=3, concurrency=2) as sender:

        def post() -> bool:
            return sender.post("slow", make_request(new_uuid(), "slow"), replies)

        assert [post() for _ in range(4)] == [True] * 3 + [False]
        await transport.wait_in_flight("slow", 2)  # the workers took two (different groups)
        assert [post() for _ in range(3)] == [True, True, False]
        stats = sender.statistics().peers["slow"]
        assert (stats.dropped, stats.queued, stats.in_flight) == (2, 3, 2)
        assert sender.statistics().dropped == 2
    assert replies.results == []  # abandoned at exit, no callbacks


async def test_slow_peer_does_not_hold_up_other_peers() -> None:
    transport = FakeTransport()
    transport.behaviours["slow"] = hang
    replies = Replies()
    async with PeerSender(transport, queue_size=4, concurrency=2) as sender:
        accepted = 0
        while sender.post("slow", make_request(GROUP, "slow"), replies):
            accepted += 1
        assert accepted == 4
        for _ in range(50):
            assert sender.post("fast", make_request(GROUP, "fast"), replies)
            await replies.wait(len(replies.results) + 1)
        assert len(replies.results) == 50
        assert sender.statistics().peers["fast"].sent == 50


async def test_concurrency_is_bounded_per_peer() -> None:
    gate = trio.Event()

    async def wait_gate(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        await gate.wait()
        return make_reply(request)

    transport = FakeTransport()
    transport.behaviours = {"b": wait_gate, "c": wait_gate}
    replies = Replies()
    async with PeerSender(transport, concurrency=3) as sender:
        for _ in range(10):
            sender.post("b", make_request(new_uuid(), "b"), replies)
            sender.post("c", make_request(new_uuid(), "c"), replies)
        await transport.wait_in_flight("b", 3)
        await transport.wait_in_flight("c", 3)
        gate.set()
        await replies.wait(20)
    assert transport.max_in_flight == {"b": 3, "c": 3}


async def test_one_groups_requests_go_one_at_a_time_in_order() -> None:
    """NuRaft keeps one request in flight per peer and group; other groups overtake."""
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
    async with PeerSender(transport, concurrency=4) as sender:
        for term in range(1, 6):
            assert sender.post("b", make_request(first, "b", term=term), replies)
        assert sender.post("b", make_request(second, "b", term=5), replies)
        await transport.wait_in_flight("b", 2)  # one per group, although 4 workers are free
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


async def test_a_stuck_group_does_not_hold_up_other_groups_to_the_same_peer() -> None:
    stuck = new_uuid()

    async def stuck_group(request: GroupEnvelope, limit: float) -> GroupEnvelope:
        if request.group_id == stuck:
            await trio.sleep_forever()
        return make_reply(request)

    transport = FakeTransport()
    transport.behaviours["b"] = stuck_group
    replies = Replies()
    async with PeerSender(transport, group_queue_size=3, concurrency=2) as sender:
        posted = [sender.post("b", make_request(stuck, "b"), replies) for _ in range(5)]
        assert posted == [True] * 3 + [False] * 2  # the group's own limit
        await transport.wait_in_flight("b", 1)
        # One more fits again now that one request left the queue for the wire.
        assert sender.post("b", make_request(stuck, "b"), replies)
        assert not sender.post("b", make_request(stuck, "b"), replies)
        for i in range(20):
            assert sender.post("b", make_request(GROUP, "b", term=i + 1), replies)
            results = await replies.wait(i + 1)
        answered = [r.message.term for r in results if isinstance(r, GroupEnvelope)]
        assert answered == list(range(1, 21))
        stats = sender.statistics().peers["b"]
        assert (stats.in_flight, stats.queued, stats.dropped) == (1, 3, 3)


async def test_a_failing_callback_does_not_stop_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = FakeTransport()
    replies = Replies()

    def explode(result: GroupEnvelope | TransportError) -> None:
        raise RuntimeError("callback bug")

    async with PeerSender(transport, concurrency=1) as sender:
        sender.post("b", make_request(GROUP, "b"), explode)
        sender.post("b", make_request(GROUP, "b"), replies)
        await replies.wait(1)
    assert "callback bug" in caplog.text


async def test_exit_cancels_calls_in_flight_promptly() -> None:
    transport = FakeTransport()
    transport.behaviours["slow"] = hang
    replies = Replies()
    with trio.fail_after(5):
        async with PeerSender(transport, concurrency=2) as sender:
            for _ in range(5):
                sender.post("slow", make_request(new_uuid(), "slow"), replies)
            await transport.wait_in_flight("slow", 2)
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
    with pytest.raises(ValueError):
        PeerSender(transport, queue_size=0)
    with pytest.raises(ValueError):
        PeerSender(transport, concurrency=0)
    with pytest.raises(ValueError):
        PeerSender(transport, timeout=0.0)


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
    assert stats.sent == stats.failed == stats.dropped == 0
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
        async with PeerSender(a.transport, queue_size=4, concurrency=2, timeout=10) as sender:
            while sender.post(slow.uuid, make_request(new_uuid(), slow.uuid), replies):
                pass
            with trio.fail_after(5):
                await entered.wait()
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
            assert stats.peers[slow.uuid].in_flight == 2
            assert stats.peers[fast.uuid].sent == 20
