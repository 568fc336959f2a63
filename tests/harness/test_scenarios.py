"""Regression scenarios through live groups on the simulated network (default timers)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing import InvariantViolation, SimCluster, check_invariants


def _applied(c: SimCluster, node: str, gid: str) -> list[bytes]:
    return [data for _, data in c.applied_log(node, gid)]


async def test_partitioned_leader_keeps_accepting_writes_then_rejoins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its unacknowledged writes are dropped; no acknowledged write is lost."""
    async with SimCluster.open(3, seed=3) as c:
        gid = await c.create_group()
        before = [await c.write_and_wait(gid, b"set a%d 1" % i) for i in range(5)]
        assert all(w.acked for w in before)
        old = c.leader(gid)
        assert old is not None and old.name == "n1"
        c.partition(["n1"], ["n2", "n3"])
        stale = [c.write(gid, b"stale %d" % i, via="n1") for i in range(5)]
        await c.run_for(0.5)
        # The cut-off leader took them: they are in its log, not committed anywhere.
        assert old.mgr.group(gid).is_leader
        assert {e.buffer for e in old.cores[gid].log.slice(1, 100)} >= {w.data for w in stale}
        assert await c.wait_until(lambda: c.leader(gid) not in (None, old), timeout=10)
        fresh = [await c.write_and_wait(gid, b"fresh %d" % i) for i in range(5)]
        assert all(w.acked for w in fresh)
        await c.run_for(5)
        assert all(w.done.is_set() and not w.acked for w in stale)
        c.heal()
        assert await c.wait_until(
            lambda: all(c.applied_index(n, gid) >= c.applied_index("n2", gid) > 0
                        for n in ("n1", "n2", "n3")) and c.leader(gid) is not old,
            timeout=20)
        await c.run_for(1)
        check_invariants(c)
        want = [w.data for w in before + fresh]
        for n in ("n1", "n2", "n3"):
            applied = _applied(c, n, gid)
            assert not {w.data for w in stale} & set(applied), n
            assert [d for d in applied if d in want] == want, n
        assert not any(e.buffer.startswith(b"stale") for e in old.cores[gid].log.slice(1, 200))
        assert await c.check_liveness() < 10
        check_invariants(c)


async def test_one_partition_splits_every_group_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(5, seed=8) as c:
        names = ["n1", "n2", "n3", "n4", "n5"]
        gids = [await c.create_group(names[k:] + names[:k]) for k in range(3)]
        assert [c.leader(g).name for g in gids] == ["n1", "n2", "n3"]  # type: ignore[union-attr]
        load = c.start_workload(interval=0.25)
        await c.run_for(1)
        minority, majority = ["n1", "n2"], ["n3", "n4", "n5"]
        c.partition(minority, majority)
        # Every group ends up led from the majority side, and keeps committing there.
        assert await c.wait_until(
            lambda: all((lead := c.leader(g)) is not None and lead.name in majority
                        for g in gids), timeout=15)
        acked_before = {g: sum(w.acked for w in c.writes if w.group_id == g) for g in gids}
        await c.run_for(3)
        for g in gids:
            assert sum(w.acked for w in c.writes if w.group_id == g) > acked_before[g] + 5
        check_invariants(c)
        c.heal()
        await c.run_for(3)
        load.stop()
        await c.check_liveness()
        check_invariants(c)
        for g in gids:
            acked = [w for w in c.writes if w.group_id == g and w.acked]
            for n in names:
                assert {w.data for w in acked} <= set(_applied(c, n, g))


async def test_every_node_crashes_and_restarts_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=5, disk_latency=(0.0, 0.004)) as c:
        gids = [await c.create_group(), await c.create_group(["n2", "n3", "n1"])]
        load = c.start_workload(interval=0.05)
        await c.run_for(3)
        for n in ("n1", "n2", "n3"):
            await c.crash(n)
        load.stop()
        acked = [w for w in c.writes if w.acked]
        assert acked and any(w.status == "crashed" for w in c.writes)
        await c.run_for(2)
        for n in ("n3", "n1", "n2"):
            await c.restart(n)
        await c.check_liveness()
        check_invariants(c)
        for g in gids:
            for n in ("n1", "n2", "n3"):
                # A fresh state machine re-applied the whole log, once, in order.
                log = c.applied_log(n, g)
                assert [i for i, _ in log] == sorted({i for i, _ in log})
                assert {w.data for w in acked if w.group_id == g} <= {d for _, d in log}


async def test_member_removed_while_partitioned(autojump_clock: trio.testing.MockClock) -> None:
    """n3, cut off, never hears of its removal; once healed it does not disrupt the group
    (pre-vote: its log is behind), and nothing it does is counted."""
    async with SimCluster.open(3, seed=9) as c:
        gid = await c.create_group()
        assert c.leader(gid).name == "n1"  # type: ignore[union-attr]
        c.partition(["n1", "n2"], ["n3"])
        op = c.remove_member(gid, "n3")
        await op.done.wait()
        assert op.status == "done"
        assert await c.wait_until(
            lambda: [n.name for n in c.members(gid)] == ["n1", "n2"], timeout=5)
        writes = [await c.write_and_wait(gid, b"set k%d x" % i) for i in range(5)]
        assert all(w.acked for w in writes)
        term = c.node("n1").cores[gid].term
        c.heal()
        await c.run_for(10)
        lead = c.leader(gid)
        assert lead is not None and lead.name == "n1" and lead.cores[gid].term == term
        assert [n.name for n in c.members(gid)] == ["n1", "n2"]
        await c.check_liveness()
        check_invariants(c)


class Exploding(KVStateMachine):
    def commit(self, index: int, data: bytes) -> bytes:
        if data == b"boom":
            raise RuntimeError("cannot apply boom")
        return super().commit(index, data)


async def test_a_group_stopped_by_an_error_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory: type[StateMachine] = Exploding
    async with SimCluster.open(3, seed=1, state_machine_factory=factory) as c:
        gid = await c.create_group()
        await c.write_and_wait(gid, b"boom")
        await c.run_for(1)
        with pytest.raises(InvariantViolation, match="Runtime error"):
            check_invariants(c)


async def test_replicas_agree_on_their_state(autojump_clock: trio.testing.MockClock) -> None:
    async with SimCluster.open(3, seed=2) as c:
        gid = await c.create_group()
        for i in range(20):
            c.write(gid, b"set k%d v%d" % (i % 4, i))
        await c.run_for(3)
        states = {n.name: c.state_machine(n, gid) for n in c.nodes}
        datas = [sm.data for sm in states.values() if isinstance(sm, KVStateMachine)]
        assert len(datas) == 3 and datas[0] == datas[1] == datas[2] and len(datas[0]) == 4
