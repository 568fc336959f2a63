"""append_entries deadlines: one group-level timer fails writes that are not applied in time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nuraft_mesg.errors import RaftTimeout
from nuraft_mesg.testing import SimCluster


async def test_a_write_the_leader_cannot_commit_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=5) as c:
        gid = await c.create_group()
        leader = c.leader(gid)
        assert leader is not None
        assert (await c.write_and_wait(gid, b"set a 1")).acked
        timeout = leader.mgr.config.client_request_timeout
        c.partition([leader.name], [n.name for n in c.nodes if n is not leader])
        started = trio.current_time()
        with pytest.raises(RaftTimeout, match="not applied within"):
            await leader.mgr.append_entries(gid, [b"set b 2"])
        waited = trio.current_time() - started
        assert timeout <= waited < timeout + 0.5
        # A later write on the healed group still commits (the timer did not stick).
        c.heal()
        assert await c.wait_until(lambda: c.leader(gid) is not None, timeout=10)
        assert (await c.write_and_wait(gid, b"set c 3")).acked


async def test_writes_applied_in_time_leave_no_timer_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=6) as c:
        gid = await c.create_group()
        leader = c.leader(gid)
        assert leader is not None
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(leader.mgr.append_entries, gid, [b"set k%d %d" % (i, i)])
        group = leader.mgr._get(gid)
        await c.run_for(leader.mgr.config.client_request_timeout * 2)
        assert group._next_expiry() == float("inf")
        assert not group._expiries
