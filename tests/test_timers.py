"""The node's timer task: deadlines fire in order, at their time, and an earlier one re-arms
the sleeping task."""

from __future__ import annotations

import math

import trio
import trio.testing

from nuraft_mesg.timers import Timers


async def test_deadlines_fire_in_order_at_their_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers = Timers()
    fired: list[tuple[str, float]] = []
    start = trio.current_time()

    def at(name: str) -> None:
        fired.append((name, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.testing.wait_all_tasks_blocked()
        timers.schedule(start + 3, lambda: at("c"))
        timers.schedule(start + 1, lambda: at("a"))
        timers.schedule(math.inf, lambda: at("never"))
        await trio.sleep(0.5)
        # The task sleeps until +1; an earlier deadline must wake it sooner.
        timers.schedule(start + 0.75, lambda: at("early"))
        timers.schedule(start + 1, lambda: at("b"))  # a tie keeps scheduling order
        await trio.sleep(10)
        assert fired == [("early", 0.75), ("a", 1), ("b", 1), ("c", 3)]
        assert len(timers) == 0
        nursery.cancel_scope.cancel()


async def test_a_deadline_in_the_past_fires_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers = Timers()
    fired = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers.run)
        await trio.sleep(5)
        before = trio.current_time()
        timers.schedule(before - 1, fired.set)
        await fired.wait()
        assert trio.current_time() == before
        nursery.cancel_scope.cancel()
