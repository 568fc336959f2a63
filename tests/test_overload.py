"""A follower whose own process runs late postpones its election (a bounded number of times),
since its leader's heartbeats are more likely queued in its own loop than missing; a dead
leader's node (peer_lost) is never waited for.  Real Managers over the simulated network,
MockClock; the process's lateness is pinned by replacing ``Timers.lag``."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from nuraft_mesg.testing import SimCluster, check_invariants
from nuraft_mesg.testing.cluster import SIM_PARAMS
from nuraft_mesg.timers import Timers

ACTIVE = dataclasses.replace(SIM_PARAMS, quiesce_after_ms=-1)  # election timers always run
UPPER = SIM_PARAMS.election_timeout_ms[1] / 1000
HEARTBEAT = SIM_PARAMS.heartbeat_interval_ms / 1000
LAG = 5 * HEARTBEAT  # the loop runs this late: well over a heartbeat interval


def _late(monkeypatch: pytest.MonkeyPatch, lag: float) -> None:
    monkeypatch.setattr(Timers, "lag", lambda self, now, *, within=1.0: lag)


async def _failover_time(c: SimCluster, *, crash: bool) -> float:
    gid = await c.create_group()
    old = c.leader(gid)
    assert old is not None
    start = trio.current_time()
    if crash:
        await c.crash(old)  # connections reset: peer_lost
    else:
        c.partition([old], [n for n in c.nodes if n is not old])  # silence only
    assert await c.wait_until(lambda: c.leader(gid) not in (None, old), timeout=30, poll=0.01)
    return trio.current_time() - start


async def test_a_late_process_postpones_elections_a_bounded_number_of_times(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SimCluster.open(3, seed=31, params=ACTIVE) as c:
        on_time = await _failover_time(c, crash=False)
        check_invariants(c)
    assert on_time <= UPPER + 0.2
    _late(monkeypatch, LAG)
    async with SimCluster.open(3, seed=31, params=ACTIVE) as c:
        late = await _failover_time(c, crash=False)
        check_invariants(c)
    # Three postponements of 2 x LAG each, then the election it would have held anyway.
    assert 3 * 2 * LAG <= late <= 3 * 2 * LAG + UPPER + 0.2


async def test_a_dead_leader_node_is_not_waited_for_however_late_the_process(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _late(monkeypatch, LAG)
    async with SimCluster.open(3, seed=32, params=ACTIVE) as c:
        took = await _failover_time(c, crash=True)
        check_invariants(c)
    assert took < 2 * LAG
