"""Histories recorded from live groups on the simulated network check as linearizable under
partitions, crashes and message loss -- and a planted stale read (a deposed leader serving
reads from its own state machine) is flagged."""

from __future__ import annotations

import os

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing import SimCluster, check_invariants, check_kv
from nuraft_mesg.testing.histories import LogReadKV, SimKVClients

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = settings.get_profile(_PROFILE).max_examples if _PROFILE == "thorough" else 6

# A fault: (action, node index, seconds it lasts).
_FAULTS = st.lists(
    st.tuples(st.sampled_from(["isolate", "partition", "crash", "loss", "quiet"]),
              st.integers(0, 2), st.floats(0.5, 4.0)),
    min_size=1, max_size=5)


async def _faults(c: SimCluster, gid: str, faults: list[tuple[str, int, float]]) -> None:
    names = ["n1", "n2", "n3"]
    for action, k, lasts in faults:
        leader = c.leader(gid)
        victim = leader.name if leader is not None and k == 0 else names[k]
        if action == "isolate":
            c.isolate(victim)
        elif action == "partition":  # the victim alone in the minority
            c.partition([victim], [n for n in names if n != victim])
        elif action == "crash":
            await c.crash(victim)
        elif action == "loss":
            c.configure_links(drop=0.3, duplicate=0.1, delay=(0.0, 0.3))
        await c.run_for(lasts)
        c.heal(reset=True)
        if action == "crash":
            await c.restart(victim)
        await c.run_for(0.5)


@settings(max_examples=EXAMPLES)
@given(seed=st.integers(0, 2**32), faults=_FAULTS, clients=st.integers(2, 5))
def test_histories_under_faults_are_linearizable(seed: int, faults: list[tuple[str, int, float]],
                                                 clients: int) -> None:
    async def scenario() -> None:
        async with SimCluster.open(3, seed=seed, state_machine_factory=LogReadKV) as c:
            gid = await c.create_group()
            kv = SimKVClients(c, gid, keys=3, seed=seed)
            duration = sum(lasts + 0.5 for _, _, lasts in faults) + 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kv.run, clients, duration)
                nursery.start_soon(_faults, c, gid, faults)
            await c.check_liveness()
            check_invariants(c)
            result = check_kv(kv.history, timeout=60)
            statuses = [ev.type for ev in kv.history.events if ev.type != "invoke"]
            assert statuses.count("ok") > 0
            assert result.ok, f"{result}\nfaults: {faults}"
            print(f"linearizable: {len(kv.history)} ops ({statuses.count('ok')} ok, "
                  f"{statuses.count('fail')} fail, {statuses.count('info')} info), "
                  f"faults {[a for a, _, _ in faults]}, {result.seconds:.3f}s to check")

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_deposed_leader_serving_local_reads_is_flagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SimCluster.open(3, seed=11, state_machine_factory=LogReadKV) as c:
        gid = await c.create_group()
        kv = SimKVClients(c, gid, keys=1)
        h = kv.history
        await kv.put("writer", "k0", "old")
        old = c.leader(gid)
        assert old is not None and old.name == "n1"

        async def local_read(node: str) -> str | None:
            """The planted bug: answer from this node's state machine, no quorum check."""
            op = h.invoke("local-reader", "get", "k0", time=trio.current_time())
            sm = c.state_machine(node, gid)
            assert isinstance(sm, KVStateMachine)
            value = KVStateMachine.decode_get(sm.query(KVStateMachine.get_query("k0")))
            h.ok(op, value, time=trio.current_time())
            return value

        assert await local_read("n1") == "old"  # still fine: n1 leads
        c.partition(["n1"], ["n2", "n3"])
        assert await c.wait_until(lambda: c.leader(gid) not in (None, old), timeout=10)
        await kv.put("writer", "k0", "new")  # acknowledged by the new majority
        assert h.events[-1].type == "ok"
        assert old.mgr.group(gid).is_leader  # n1 still believes it leads
        await c.run_for(0.5)
        assert await local_read("n1") == "old"  # stale: "new" was acknowledged before
        await kv.get("reader", "k0")  # through the log: sees "new"
        assert h.events[-1].value == "new"

        result = check_kv(h)
        print(f"\nplanted stale read:\n{result}")
        assert result.outcome == "violation"
        (v,) = result.violations
        assert v.key == "k0"
        assert v.blocked is not None and v.blocked.client == "local-reader"
        assert v.blocked.output == "old"
        assert {op.input for op in v.witness if op.kind == "put"} == {"old", "new"}
        assert [op.client for op in v.witness if op.kind == "get"] == ["local-reader"]

        # The same history without the local reads is linearizable.
        honest = [op for op in h.operations() if op.client != "local-reader"]
        assert check_kv(honest).ok
        c.heal()
        await c.check_liveness()
        check_invariants(c)
