"""The harness can fail: deliberately broken cores, run in live groups, must be caught.

Each broken core is a :class:`RaftNode` subclass (or a factory) plugged into real Managers
through ``Manager(core_factory=...)`` (via :class:`SimCluster`).  A scripted scenario drives
the cluster (partitions, message filters, crashes, explicit campaigns: the election timers
are set far beyond the scenario's length) into the state the bug makes unsafe, and the
checkers must report the expected invariant.  The same scenario with the real core must pass,
which shows the scenario is legal Raft and the checkers are not simply over-eager.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from nuraft_mesg.raft.node import RaftNode, Role
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import MsgType
from nuraft_mesg.testing import InvariantViolation, SimCluster, check_invariants
from nuraft_mesg.testing.sim import SimMessage
from nuraft_mesg.transport.codec import GroupEnvelope
from tests.broken_cores import (
    AppliesEarly,
    CommitsOldTerms,
    SkipsPrevCheck,
    forgets_vote,
)

# Elections happen only when a scenario asks (SimCluster.campaign); one entry per append.
SCRIPTED = RaftParams(heartbeat_interval_ms=100, election_timeout_ms=(20_000, 40_000),
                      pre_vote=False, leadership_expiry_ms=-1, max_append_entries=1)
AE = MsgType.APPEND_ENTRIES_REQUEST



# ==============================================================================================
# Helpers
# ==============================================================================================
def _appends(c: SimCluster, src: str, dsts: list[str] | None = None, *,
             entries: bool = True) -> Callable[[SimMessage], bool]:
    """A filter matching append requests from ``src`` (to ``dsts``) that carry entries."""
    s = c.node(src).uuid
    d = None if dsts is None else {c.node(x).uuid for x in dsts}

    def match(m: SimMessage) -> bool:
        env = m.envelope
        return (not m.is_reply and env is not None and m.src == s
                and (d is None or m.dst in d) and env.message.type == AE
                and (bool(env.message.entries) or not entries))

    return match


def _leads(c: SimCluster, name: str, gid: str) -> bool:
    core = c.node(name).cores.get(gid)
    return core is not None and core.role == Role.LEADER


async def _elect(c: SimCluster, name: str, gid: str, *, rounds: int = 3) -> None:
    """Make ``name`` campaign until it leads (or ``rounds`` campaigns are spent)."""
    for _ in range(rounds):
        c.campaign(name, gid)
        await c.run_for(0.5)
        if _leads(c, name, gid):
            return


# ==============================================================================================
# Scenarios (each returns with the unsafe state reached, or, with the real core, not)
# ==============================================================================================
async def figure_8(c: SimCluster) -> None:
    """Raft paper, Figure 8, with five live nodes."""
    gid = await c.create_group()
    await c.run_for(1)
    # (a) Leader n1 (term 1) replicates X to n2 only.
    f = c.network.add_filter(_appends(c, "n1", ["n3", "n4", "n5"]))
    c.write(gid, b"X", via="n1")
    await c.run_for(1)
    # (b) n1 crashes; n5 wins term 2 (votes of n3 and n4); its no-op stays on n5.  (Filters
    # go only once their sender is down: messages already sent stay in flight.)
    await c.crash("n1")
    c.network.remove_filter(f)
    f = c.network.add_filter(_appends(c, "n5"))
    await _elect(c, "n5", gid)
    assert _leads(c, "n5", gid)
    await c.run_for(1)
    # (c) n5 crashes; n1 restarts and wins term 3 (n2, n3, n4).  Its first append to n3
    # and to n4 (prev = X's index, [no-op of term 3]) is refused, so it backs up and copies
    # X (term 1) to them; nothing carrying its term-3 no-op gets any further.  X is now on a
    # majority, {n1, n3, n4}, while n1 leads term 3.
    await c.crash("n5")
    c.network.remove_filter(f)
    await c.restart("n1")
    let_through = {c.node("n3").uuid, c.node("n4").uuid}
    leader = c.node("n1").uuid

    def term_3_entries(m: SimMessage) -> bool:
        env = m.envelope
        if m.is_reply or env is None or m.src != leader or env.message.type != AE:
            return False
        if not any(e.term == 3 for e in env.message.entries):
            return False
        if m.dst in let_through:
            let_through.discard(m.dst)  # the first probe: refused, which makes n1 back up
            return False
        return True

    f = c.network.add_filter(term_3_entries)
    await _elect(c, "n1", gid)
    assert _leads(c, "n1", gid) and c.node("n1").cores[gid].term == 3
    await c.run_for(3)
    # (d) n1 crashes; n5 restarts and wins term 4 with n2, n3 and n4 (its last term, 2, beats
    # their 1), although X may have been committed in term 3.
    await c.crash("n1")
    c.network.remove_filter(f)
    await c.restart("n5")
    await _elect(c, "n5", gid)
    assert _leads(c, "n5", gid)
    await c.run_for(1)


async def vote_twice(c: SimCluster) -> None:
    """n1 votes for n2 in term 2, restarts, and is asked again by n3 in term 2."""
    gid = await c.create_group()
    await c.run_for(1)
    c.partition(["n1", "n2"], ["n3"])
    f = c.network.add_filter(_appends(c, "n2"))  # n2's no-op reaches nobody
    await _elect(c, "n2", gid, rounds=1)
    assert _leads(c, "n2", gid) and c.node("n2").cores[gid].term == 2
    c.partition(["n1", "n3"], ["n2"])
    c.network.remove_filter(f)
    await c.crash("n1")
    await c.restart("n1")
    await _elect(c, "n3", gid, rounds=1)


async def stale_replica_rejoins(c: SimCluster) -> None:
    """n4 holds X (from leader n1 of term 1) that no later leader has.  It is removed while
    cut off, then added back: the leader believes n4's claim of where its log ends and sends
    it (prev = (X's index, term 2), [next entry]), which must be refused."""
    gid = await c.create_group()
    await c.run_for(1)
    f = c.network.add_filter(_appends(c, "n1", ["n2", "n3", "n5"]))
    c.write(gid, b"X", via="n1")
    await c.run_for(1)
    c.network.remove_filter(f)
    c.partition(["n1", "n4"], ["n2", "n3", "n5"])
    await _elect(c, "n2", gid)
    assert _leads(c, "n2", gid)
    await c.remove_member(gid, "n4").done.wait()
    for k in range(3):
        c.write(gid, b"Y%d" % k, via="n2")
    await c.run_for(1)
    # Appends n2 queued for n4 before the removal must not reach it (they would repair its
    # log, legitimately): drop them until n2's invitation goes through.
    leader, n4 = c.node("n2").uuid, c.node("n4").uuid
    before_join = [True]

    def queued_appends(m: SimMessage) -> bool:
        env = m.envelope
        if m.is_reply or env is None or (m.src, m.dst) != (leader, n4):
            return False
        if env.message.type == MsgType.JOIN_CLUSTER_REQUEST:
            before_join[0] = False
        return before_join[0] and env.message.type == AE

    c.network.add_filter(queued_appends)
    c.partition(["n1"], ["n2", "n3", "n4", "n5"])
    op = c.add_member(gid, "n4")  # behind the dropped appends, each waiting out its deadline
    assert await c.wait_until(op.done.is_set, timeout=60)
    await c.run_for(1)


async def apply_uncommitted(c: SimCluster) -> None:
    gid = await c.create_group()
    await c.run_for(1)
    c.isolate("n1")
    c.write(gid, b"set x early", via="n1")
    await c.run_for(1)


Scenario = Callable[[SimCluster], Awaitable[None]]
# name: (scenario, nodes, broken factory (or per-node map), expected invariant, options)
SCENARIOS: dict[str, tuple[Scenario, int, Any, str, dict[str, Any]]] = {
    "commits an old-term entry by counting replicas (figure 8)":
        (figure_8, 5, CommitsOldTerms, "Leader Completeness", {}),
    "forgets its vote on restart":
        (vote_twice, 3, forgets_vote, "Election Safety", {}),
    "accepts appends without the previous-entry check":
        (stale_replica_rejoins, 5, {"n4": SkipsPrevCheck}, "Log Matching",
         # The join waits behind every append queued for n4, each waiting out its deadline.
         {"leave_on_removal": False, "configure": lambda cfg: dataclasses.replace(
             cfg, leader_change_timeout=30.0)}),
    "applies an entry before it is committed":
        (apply_uncommitted, 3, AppliesEarly, "State Machine Safety", {}),
}


@asynccontextmanager
async def _cluster(nodes: int, factory: Any, **kw: Any) -> AsyncIterator[SimCluster]:
    async with SimCluster.open(nodes, seed=11, params=SCRIPTED, core_factory=factory,
                               **kw) as c:
        yield c


@pytest.mark.parametrize("name", SCENARIOS)
async def test_broken_node_is_caught(name: str, autojump_clock: trio.testing.MockClock) -> None:
    scenario, nodes, broken, invariant, kw = SCENARIOS[name]
    async with _cluster(nodes, broken, **kw) as c:
        await scenario(c)
        with pytest.raises(InvariantViolation) as info:
            check_invariants(c)
        found = [v.invariant for v in c.checker.violations]
        assert invariant in found, f"expected {invariant}, got {found}:\n{info.value}"
        # The report is readable: the invariant, what broke it, and what led there.
        text = str(info.value)
        assert "recent history:" in text and info.value.invariant in text


@pytest.mark.parametrize("name", SCENARIOS)
async def test_same_scenario_is_safe_with_the_real_core(
    name: str, autojump_clock: trio.testing.MockClock
) -> None:
    scenario, nodes, _, _, kw = SCENARIOS[name]
    async with _cluster(nodes, RaftNode, **kw) as c:
        await scenario(c)
        check_invariants(c)


async def test_a_misrouted_message_is_caught(autojump_clock: trio.testing.MockClock) -> None:
    """A routing bug in one node's Manager: g1's appends are handed to its g2 core."""
    async with SimCluster.open(3, seed=4) as c:
        g1 = await c.create_group()
        g2 = await c.create_group()
        check_invariants(c)
        mgr = c.node("n2").mgr
        route = mgr.raft_step

        async def misroute(request: GroupEnvelope) -> GroupEnvelope:
            if request.group_id == g1 and request.message.type == AE:
                request = dataclasses.replace(request, group_id=g2)
            return await route(request)

        mgr.raft_step = misroute  # type: ignore[method-assign]
        c.write(g1, b"set x 1")
        await c.run_for(1)
        with pytest.raises(InvariantViolation) as info:
            check_invariants(c)
        assert info.value.invariant == "Group isolation"
        assert "stepped a APPEND_ENTRIES_REQUEST sent to g1" in str(info.value)
