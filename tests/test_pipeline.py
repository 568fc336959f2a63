"""Pipelined writes (issue K): ``Manager.submit`` and ``Manager.pipeline`` keep many writes
in flight from one task, completed by callbacks in the group's task.

Simulated network and MockClock, as in test_admission.py: a frozen clock keeps writes
pending exactly while the test looks at them.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import trio
import trio.testing

from nuraft_mesg import Busy, NotLeader, RaftError
from nuraft_mesg.errors import Cancelled, Failed
from nuraft_mesg.manager import Manager
from nuraft_mesg.pipeline import WritePipeline
from nuraft_mesg.testing import SimCluster, check_invariants
from nuraft_mesg.testing.cluster import SIM_PARAMS

GROUP_LIMIT = 8
PARAMS = dataclasses.replace(SIM_PARAMS, max_pending_proposals=GROUP_LIMIT)


def _manager(c: SimCluster, gid: str, *, leader: bool) -> Manager:
    chosen = c.leader(gid)
    if not leader:
        chosen = next(n for n in c.members(gid) if n is not chosen)
    assert chosen is not None and chosen.manager is not None
    return chosen.manager


async def test_a_pipeline_commits_everything_in_order_within_its_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=5, params=PARAMS) as c:
        gid = await c.create_group()
        leader = c.leader(gid)
        assert leader is not None
        mgr = _manager(c, gid, leader=True)
        sent = [b"w-%03d" % i for i in range(120)]
        results: dict[bytes, list[bytes] | RaftError] = {}
        most_outstanding = 0
        async with mgr.pipeline(gid, window=GROUP_LIMIT) as pipe:
            for payload in sent:
                def record(r: list[bytes] | RaftError, p: bytes = payload) -> None:
                    results[p] = r
                await pipe.append([payload], record)
                most_outstanding = max(most_outstanding, pipe.outstanding)
        # the window bounds what is in flight, and it was used (not one at a time)
        assert most_outstanding == GROUP_LIMIT
        assert pipe.submitted == pipe.completed == len(sent) and pipe.failed == 0
        assert all(isinstance(r := results[p], list) and len(r) == 1 for p in sent)
        assert mgr.admission.pending == 0
        applied = [d for _, d in c.applied_log(leader, gid) if d in results]
        assert applied == sent  # one task, one order
        check_invariants(c)


async def test_submit_on_a_follower_reports_not_leader_through_on_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=9, params=PARAMS) as c:
        gid = await c.create_group()
        follower = _manager(c, gid, leader=False)
        got = trio.Event()
        outcome: list[list[bytes] | RaftError] = []

        def on_done(result: list[bytes] | RaftError) -> None:
            outcome.append(result)
            got.set()

        follower.submit(gid, [b"not here"], on_done)
        await got.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 1 and isinstance(outcome[0], NotLeader)
        assert follower.admission.pending == 0
        # a pipeline without on_done raises the failure from drain
        with pytest.raises(NotLeader):
            async with follower.pipeline(gid) as pipe:
                await pipe.append([b"nor here"])
        assert pipe.failed == 1 and follower.admission.pending == 0
        assert all(d != b"not here" for n in c.members(gid) for _, d in c.applied_log(n, gid))


async def test_submit_refuses_busy_at_the_bound_and_on_done_is_never_called(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=13, params=PARAMS) as c:
        gid = await c.create_group()
        mgr = _manager(c, gid, leader=True)
        autojump_clock.autojump_threshold = math.inf  # nothing commits meanwhile
        done: list[bytes] = []
        for i in range(GROUP_LIMIT):
            def note(r: list[bytes] | RaftError, i: int = i) -> None:
                done.append(b"in-%d" % i)
            mgr.submit(gid, [b"in-%d" % i], note)
        refused_before = mgr.admission.refused
        with pytest.raises(Busy):
            mgr.submit(gid, [b"refused"], lambda r: done.append(b"refused"))
        assert mgr.admission.refused == refused_before + 1
        assert mgr.admission.pending_in(gid) == GROUP_LIMIT
        autojump_clock.autojump_threshold = 0
        await c.wait_until(lambda: len(done) == GROUP_LIMIT, timeout=30)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(done) == sorted(b"in-%d" % i for i in range(GROUP_LIMIT))
        assert mgr.admission.pending == 0
        applied = {d for _, d in c.applied_log(c.leader(gid), gid)}  # type: ignore[arg-type]
        assert b"refused" not in applied and all(b"in-%d" % i in applied
                                                   for i in range(GROUP_LIMIT))


async def test_a_group_stopping_fails_every_write_in_flight_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=17, params=PARAMS) as c:
        gid = await c.create_group()
        mgr = _manager(c, gid, leader=True)
        autojump_clock.autojump_threshold = math.inf
        outcome: dict[int, list[list[bytes] | RaftError]] = {}
        for i in range(5):
            def note(r: list[bytes] | RaftError, i: int = i) -> None:
                outcome.setdefault(i, []).append(r)
            mgr.submit(gid, [b"x-%d" % i], note)
        autojump_clock.autojump_threshold = 0
        await mgr.leave_group(gid)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(outcome) == list(range(5))
        assert all(len(v) == 1 for v in outcome.values())  # exactly once each
        # each write either committed before the stop or failed with a typed error
        assert all(isinstance(v[0], list | Cancelled | Failed) for v in outcome.values())
        assert any(isinstance(v[0], Cancelled | Failed) for v in outcome.values())
        assert mgr.admission.pending == 0


async def test_an_exception_in_on_done_is_logged_and_the_group_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    async with SimCluster.open(3, seed=21, params=PARAMS) as c:
        gid = await c.create_group()
        mgr = _manager(c, gid, leader=True)

        def explode(result: list[bytes] | RaftError) -> None:
            raise ValueError("user bug")

        mgr.submit(gid, [b"boom"], explode)
        assert await mgr.append_entries(gid, [b"after"])  # the group still commits
        assert "on_done of a submitted write raised" in caplog.text
        assert mgr.admission.pending == 0
        assert mgr.group(gid).leader_id == c.leader(gid).uuid  # type: ignore[union-attr]


async def test_window_must_be_positive() -> None:
    class Nowhere:
        def submit(self, *args: object) -> None:
            raise AssertionError("never submitted")

    with pytest.raises(ValueError, match="window"):
        WritePipeline(Nowhere(), "g", 0)
