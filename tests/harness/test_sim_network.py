"""SimNetwork / SimTransport: links, loss, duplication, delay, partitions, determinism."""

from __future__ import annotations

import contextlib
import functools
import uuid

import pytest
import trio
import trio.testing

from nuraft_mesg.raft.types import Message, MsgType
from nuraft_mesg.testing.sim import LinkState, SimMessage, SimNetwork, SimTransport
from nuraft_mesg.transport.base import Status, StepError, TransportError
from nuraft_mesg.transport.codec import GroupEnvelope

GROUP = str(uuid.UUID(int=1))
A, B, C = (str(uuid.UUID(int=k)) for k in (11, 12, 13))


class Echo:
    """A StepHandler answering every request with its term; records what it saw."""

    def __init__(self, *, delay: float = 0.0, fail: Status | None = None) -> None:
        self.seen: list[tuple[float, int]] = []
        self.delay = delay
        self.fail = fail

    async def raft_step(self, request: GroupEnvelope) -> GroupEnvelope:
        self.seen.append((trio.current_time(), request.message.term))
        if self.delay:
            await trio.sleep(self.delay)
        if self.fail is not None:
            raise StepError(self.fail, "refused")
        m = request.message
        reply = Message(MsgType.APPEND_ENTRIES_RESPONSE, m.term, m.dest, m.src, accepted=True)
        return GroupEnvelope(request.group_id, "", "", reply)


def request(term: int = 1) -> GroupEnvelope:
    return GroupEnvelope(GROUP, "t", "", Message(MsgType.APPEND_ENTRIES_REQUEST, term, 1, 2))


async def serve(nursery: trio.Nursery, net: SimNetwork, address: str,
                handler: Echo) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        with scope:
            await SimTransport(net, address).serve(handler, task_status=task_status)

    await nursery.start(run)
    return scope


async def test_round_trip_takes_the_link_delays(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1, default=LinkState(delay=(0.5, 0.5))) as net, \
            trio.open_nursery() as nursery:
        echo = Echo()
        await serve(nursery, net, B, echo)
        start = trio.current_time()
        reply = await SimTransport(net, A).call(B, request(7), timeout=5)
        assert reply.message.term == 7 and reply.group_id == GROUP
        assert trio.current_time() - start == pytest.approx(1.0)
        assert len(echo.seen) == 1 and echo.seen[0][1] == 7
        assert echo.seen[0][0] == pytest.approx(start + 0.5)
        assert net.stats.sent == 2 and net.stats.delivered == 2
        nursery.cancel_scope.cancel()


async def test_down_link_and_drops_black_hole_until_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        echo = Echo()
        await serve(nursery, net, B, echo)
        a = SimTransport(net, A)
        net.set_link(A, B, up=False)
        start = trio.current_time()
        with pytest.raises(TransportError) as info:
            await a.call(B, request(), timeout=2)
        assert info.value.status == Status.DEADLINE_EXCEEDED
        assert trio.current_time() - start == pytest.approx(2.0)
        assert echo.seen == []
        # One-way: B -> A is still up, and A -> B comes back with heal().
        assert net.link(B, A).up
        net.heal()
        await a.call(B, request(), timeout=2)
        # A lost reply: the request is handled, the caller still times out.
        net.set_link(B, A, drop=1.0)
        with pytest.raises(TransportError):
            await a.call(B, request(3), timeout=1)
        assert echo.seen[-1][1] == 3
        nursery.cancel_scope.cancel()


async def test_drop_probability_is_roughly_respected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimNetwork(seed=5, default=LinkState(drop=0.3)) as net, \
            trio.open_nursery() as nursery:
        await serve(nursery, net, B, Echo())
        a = SimTransport(net, A)
        ok = 0
        for _ in range(400):
            try:
                await a.call(B, request(), timeout=0.1)
                ok += 1
            except TransportError:
                pass
        # Both legs can be lost: P(ok) = 0.7 * 0.7.
        assert 0.40 < ok / 400 < 0.58
        nursery.cancel_scope.cancel()


async def test_duplicates_reach_the_server_twice(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=2, default=LinkState(duplicate=1.0)) as net, \
            trio.open_nursery() as nursery:
        echo = Echo()
        await serve(nursery, net, B, echo)
        await SimTransport(net, A).call(B, request(4), timeout=1)
        await trio.sleep(1)
        assert [t for _, t in echo.seen] == [4, 4]
        assert net.stats.duplicated == 1
        nursery.cancel_scope.cancel()


async def test_random_delays_reorder_messages(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=3, default=LinkState(delay=(0.0, 1.0))) as net, \
            trio.open_nursery() as nursery:
        echo = Echo()
        await serve(nursery, net, B, echo)
        a = SimTransport(net, A)
        async with trio.open_nursery() as senders:
            for term in range(20):
                senders.start_soon(functools.partial(a.call, B, request(term), timeout=5.0))
        terms = [t for _, t in echo.seen]
        assert sorted(terms) == list(range(20)) and terms != list(range(20))
        nursery.cancel_scope.cancel()


async def test_partition_cut_isolate_heal(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1) as net:
        for n in (A, B, C):
            net.add_node(n)
        net.partition([A], [B, C])
        assert not net.link(A, B).up and not net.link(C, A).up and net.link(B, C).up
        net.heal()
        net.cut([A, B], [C])
        assert not net.link(A, C).up and not net.link(B, C).up
        assert net.link(C, A).up and net.link(A, B).up
        net.heal()
        net.isolate(B)
        assert not any(net.link(x, y).up for x, y in ((A, B), (B, A), (C, B), (B, C)))
        assert net.link(A, C).up
        net.partition([A, B])  # C on no side: isolated
        assert net.link(A, B).up and not net.link(A, C).up and not net.link(C, B).up
        net.configure(drop=0.5, delay=(1.0, 2.0))
        net.heal(reset=True)
        assert net.link(A, C) == LinkState() and net.default == LinkState()


async def test_down_node_refuses_and_crash_resets(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        a = SimTransport(net, A)
        with pytest.raises(TransportError) as info:
            await a.call(B, request(), timeout=1)
        assert info.value.status == Status.UNAVAILABLE
        slow = Echo(delay=5.0)
        scope = await serve(nursery, net, B, slow)
        async with trio.open_nursery() as inner:
            inner.start_soon(trio.sleep, 0)

            async def crash_soon() -> None:
                await trio.sleep(1.0)
                scope.cancel()

            inner.start_soon(crash_soon)
            with pytest.raises(TransportError) as info:
                await a.call(B, request(), timeout=10)
            assert info.value.status == Status.UNAVAILABLE  # reset by the crash
            assert trio.current_time() < 2
        nursery.cancel_scope.cancel()


async def test_handler_errors_and_deadlines_become_statuses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        await serve(nursery, net, B, Echo(fail=Status.NOT_FOUND))
        await serve(nursery, net, C, Echo(delay=10))
        a = SimTransport(net, A)
        with pytest.raises(TransportError) as info:
            await a.call(B, request(), timeout=1)
        assert info.value.status == Status.NOT_FOUND
        with pytest.raises(TransportError) as info:
            await a.call(C, request(), timeout=1)
        assert info.value.status == Status.DEADLINE_EXCEEDED
        # A request naming another node is refused, as by the gRPC transport.
        wrong = GroupEnvelope(GROUP, "t", C, request().message)
        with pytest.raises(TransportError) as info:
            await a.call(B, wrong, timeout=1)
        assert info.value.status == Status.INVALID_ARGUMENT
        nursery.cancel_scope.cancel()


async def test_filters_drop_chosen_messages(autojump_clock: trio.testing.MockClock) -> None:
    async with SimNetwork(seed=1) as net, trio.open_nursery() as nursery:
        echo = Echo()
        await serve(nursery, net, B, echo)
        a = SimTransport(net, A)
        f = net.add_filter(lambda m: m.envelope is not None and m.envelope.message.term == 9)
        with pytest.raises(TransportError):
            await a.call(B, request(9), timeout=1)
        await a.call(B, request(8), timeout=1)
        net.remove_filter(f)
        await a.call(B, request(9), timeout=1)
        assert [t for _, t in echo.seen] == [8, 9]
        fates = [fate for _, m, fate in net.trace if not m.is_reply]
        assert fates == ["lost", "sent", "sent"]
        nursery.cancel_scope.cancel()


async def test_wire_mode_round_trips_through_the_codec(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimNetwork(seed=1, wire=True) as net, trio.open_nursery() as nursery:
        await serve(nursery, net, B, Echo())
        req = request(5)
        reply = await SimTransport(net, A).call(B, req, timeout=1)
        assert reply.message.term == 5 and reply.message.accepted
        nursery.cancel_scope.cancel()


async def _trace_of(seed: int) -> list[tuple[float, str, str]]:
    """The network's trace of a lossy exchange, with times relative to its start."""
    async with SimNetwork(seed=seed, default=LinkState(drop=0.2, duplicate=0.2,
                                                       delay=(0.0, 0.3))) as net, \
            trio.open_nursery() as nursery:
        await serve(nursery, net, B, Echo())
        a = SimTransport(net, A)
        for term in range(30):
            with contextlib.suppress(TransportError):
                await a.call(B, request(term), timeout=0.2)
        nursery.cancel_scope.cancel()
        t0 = net.trace[0][0]
        return [(round(t - t0, 6), m.describe(), fate) for t, m, fate in net.trace]


async def test_same_seed_same_run(autojump_clock: trio.testing.MockClock) -> None:
    first = await _trace_of(42)
    assert first == await _trace_of(42)
    assert first != await _trace_of(43)


def test_link_state_is_validated() -> None:
    with pytest.raises(ValueError):
        LinkState(drop=1.5)
    with pytest.raises(ValueError):
        LinkState(delay=(1.0, 0.5))


def test_sim_message_describes_itself() -> None:
    m = SimMessage(A, B, request(3))
    assert "append_entries t3" in m.describe()
