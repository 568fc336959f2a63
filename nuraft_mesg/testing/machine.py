"""A Hypothesis state machine that runs live Raft groups through network faults and crashes.

Subclass :class:`RaftClusterMachine` with your own state machine and run it as a test::

    class CounterMachine(RaftClusterMachine):
        state_machine_factory = CounterStateMachine

        def make_command(self, seq: int, value: int) -> bytes:
            return b"add %d" % value

        def replica_state(self, sm: StateMachine) -> object:
            return sm.total          # replicas that applied as far must agree on it

    TestCounter = CounterMachine.TestCase

Each example builds a :class:`~.cluster.SimCluster` of 3 to 5 nodes with 1 to 3 groups and
then runs up to ``stateful_step_count`` rules: client writes, symmetric and one-way
partitions, healing, crashes and restarts, lossy / duplicating / slow links, adding and
removing members, leadership transfers, and plain waiting.  After every rule the cluster's
invariant checks run (:func:`~.checkers.check_invariants`) and replicas that applied equally
far are compared with :meth:`RaftClusterMachine.replica_state`.  At the end, a liveness phase
repairs every fault and requires each group to elect a leader, commit a new write and bring
its members up to date within :attr:`RaftClusterMachine.liveness_timeout` simulated seconds.

How Hypothesis and trio fit together: a RuleBasedStateMachine is synchronous, so each
example's trio program runs in a worker thread (:class:`SimRunner`) under a
``MockClock(rate=0)``.  A rule hands the thread one coroutine function and waits for its
result; while it runs, the clock autojumps from timer to timer, and between rules it stands
still (``autojump_threshold`` is infinite), so nothing happens behind the machine's back.
Every random choice inside comes from the example's seed, and trio's scheduler is
deterministic under Hypothesis, so a failing example replays exactly and shrinks well: the
report is the short list of rules that breaks an invariant, followed by the violation with
its history.

Add rules of your own with ``@rule`` and :meth:`RaftClusterMachine.act`; read the cluster
only inside :meth:`~RaftClusterMachine.act` / :meth:`~RaftClusterMachine.run` (it lives in
the worker thread).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import trio
import trio.testing
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.testing.checkers import InvariantViolation
from nuraft_mesg.testing.cluster import SIM_PARAMS, SimCluster
from nuraft_mesg.testing.sim import LinkState

__all__ = ["ClusterView", "MachineStats", "RaftClusterMachine", "SimRunner"]

T = TypeVar("T")


# ==============================================================================================
# Running a trio program one call at a time
# ==============================================================================================
class SimRunner:
    """Runs a SimCluster inside ``trio.run`` on a worker thread, under a MockClock.

    :meth:`call` runs one coroutine function against the cluster and returns its result
    (or raises its exception) in the calling thread.  Simulated time advances (autojump)
    only during calls.  Use :meth:`close` (or ``with SimRunner(...) as runner``) to stop it.
    """

    def __init__(self, open_cluster: Callable[[], AbstractAsyncContextManager[SimCluster]]
                 ) -> None:
        self._open = open_cluster
        self.clock = trio.testing.MockClock(rate=0, autojump_threshold=math.inf)
        self._cluster: SimCluster | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="SimRunner", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._cluster is None:  # the run ended before the cluster was up
            self.close()

    def __enter__(self) -> SimRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sim_time(self) -> float:
        return self.clock.current_time()

    def _main(self) -> None:
        try:
            trio.run(self._trio_main, clock=self.clock)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _trio_main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self.clock.autojump_threshold = 0
        try:
            async with self._open() as cluster:
                self._cluster = cluster
                self.clock.autojump_threshold = math.inf
                self._ready.set()
                await self._stop.wait()
        finally:
            self._cluster = None

    def call(self, fn: Callable[[SimCluster], Awaitable[T]]) -> T:
        """Run ``await fn(cluster)`` with simulated time flowing; return its result."""
        cluster, token = self._cluster, self._token
        if cluster is None or token is None:
            raise RuntimeError("the simulation is not running") from self._error
        clock = self.clock

        async def job() -> T:
            clock.autojump_threshold = 0
            try:
                return await fn(cluster)
            finally:
                clock.autojump_threshold = math.inf

        try:
            return trio.from_thread.run(job, trio_token=token)
        except trio.RunFinishedError:
            self._thread.join()
            raise RuntimeError("the simulation stopped") from self._error

    def close(self) -> None:
        """Stop the cluster and the thread; re-raise whatever killed the run, if anything."""
        token, stop = self._token, self._stop
        if token is not None and stop is not None and self._thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        self._thread.join()
        self._token = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


# ==============================================================================================
# What the machine knows between rules
# ==============================================================================================
@dataclass(frozen=True)
class ClusterView:
    """A snapshot taken after every step, used to pick the targets of the next rules."""

    time: float = 0.0
    up: tuple[str, ...] = ()
    down: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    leaders: dict[str, str | None] = field(default_factory=dict)

    @staticmethod
    def of(c: SimCluster) -> ClusterView:
        return ClusterView(
            time=trio.current_time(),
            up=tuple(n.name for n in c.nodes if n.up),
            down=tuple(n.name for n in c.nodes if not n.up),
            nodes=tuple(n.name for n in c.nodes),
            groups=tuple(c.group_ids),
            members={g: tuple(n.name for n in c.members(g)) for g in c.group_ids},
            leaders={g: (lead.name if (lead := c.leader(g)) else None) for g in c.group_ids},
        )


@dataclass
class MachineStats:
    """Totals over every example a machine class ran (for reports)."""

    examples: int = 0
    rules: int = 0
    """Rules Hypothesis ran (after set-up), including picks that had nothing to act on."""
    steps: int = 0
    """Rules that acted on the cluster (each followed by ``step_time`` and every check)."""
    sim_time: float = 0.0
    wall_time: float = 0.0
    violations: int = 0
    writes: int = 0
    acked: int = 0
    crashes: int = 0
    liveness_time: float = 0.0
    max_steps: int = 0
    invariants: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.examples} examples, {self.rules} rules run, {self.steps} steps acted "
                f"(max {self.max_steps} in one), "
                f"{self.sim_time:.0f} s simulated in {self.wall_time:.1f} s wall, "
                f"{self.writes} writes ({self.acked} acknowledged), {self.crashes} crashes, "
                f"{self.violations} violations {self.invariants or ''}".rstrip())


def _pick(items: tuple[str, ...], k: int) -> str:
    return items[k % len(items)]


# ==============================================================================================
# The machine
# ==============================================================================================
class RaftClusterMachine(RuleBasedStateMachine):
    """Live Raft groups under random faults, checked after every step.  See the module doc.

    Configure it by overriding the class attributes below and the hook methods
    (:meth:`make_command`, :meth:`replica_state`, :meth:`draw_params`); add rules with
    ``@rule`` that call :meth:`act` (or :meth:`propose`).
    """

    #: Makes each replica's state machine (called again for every node restart).
    state_machine_factory: ClassVar[Callable[[], StateMachine]] = KVStateMachine
    #: Builds each group's core (a RaftNode subclass to test a modified core).
    core_factory: ClassVar[Callable[..., RaftNode]] = RaftNode
    #: Group parameters; None lets each example draw batching / pipelining / expiry variants.
    params: ClassVar[RaftParams | None] = None
    min_nodes: ClassVar[int] = 3
    max_nodes: ClassVar[int] = 5
    min_groups: ClassVar[int] = 1
    max_groups: ClassVar[int] = 3
    #: Simulated seconds that pass after every rule.
    step_time: ClassVar[float] = 0.25
    #: Simulated seconds the liveness phase may take (per example, all groups together).
    liveness_timeout: ClassVar[float] = 60.0
    #: Run the liveness phase at the end of each passing example.
    liveness: ClassVar[bool] = True
    #: Totals for reports (one object per subclass, made on first use).
    stats: ClassVar[MachineStats]

    def __init__(self) -> None:
        super().__init__()
        self.runner: SimRunner | None = None
        self.view = ClusterView()
        self.seq = 0
        self.steps = 0
        self.rule_count = -1  # the invariant below also runs once after set-up
        self._started = time.perf_counter()
        cls = type(self)
        if "stats" not in cls.__dict__:
            cls.stats = MachineStats()

    # -- hooks for subclasses -----------------------------------------------------------------
    def make_command(self, seq: int, value: int) -> bytes:
        """The payload of the ``seq``-th write of this example (``value`` is drawn by
        Hypothesis).  Make payloads unique if you can: the checks then pinpoint each write."""
        return b"set k%d v%d" % (value % 8, seq)

    def _next_command(self, group_id: str, k: int) -> bytes:
        self.seq += 1
        return self.make_command(self.seq, k)

    def replica_state(self, sm: StateMachine) -> object | None:
        """A comparable summary of a replica's state machine (None: do not compare).
        Replicas of a group that applied up to the same index must have equal states."""
        if isinstance(sm, KVStateMachine):
            return dict(sm.data)
        return None

    def draw_params(self, variant: int) -> RaftParams:
        """The group parameters of an example: :attr:`params` if set, else one of 24
        variants (batching, pipelining, check-quorum expiry, auto-forwarding)."""
        if self.params is not None:
            return self.params
        batch = (1, 3, 100)[variant % 3]
        inflight = (1, 4)[variant // 3 % 2]
        expiry = (0, 500)[variant // 6 % 2]
        return RaftParams(
            heartbeat_interval_ms=SIM_PARAMS.heartbeat_interval_ms,
            election_timeout_ms=SIM_PARAMS.election_timeout_ms,
            max_append_entries=batch,
            max_inflight_appends=inflight,
            leadership_expiry_ms=expiry,
            auto_forwarding=variant // 12 % 2 == 1,  # followers forward writes to the leader
        )

    # -- driving the cluster ------------------------------------------------------------------
    @property
    def sim(self) -> SimRunner:
        if self.runner is None:
            raise RuntimeError("the cluster is not set up yet")
        return self.runner

    def run(self, fn: Callable[[SimCluster], Awaitable[T]]) -> T:
        """Run ``await fn(cluster)`` in the simulation (time flows while it runs)."""
        return self.sim.call(fn)

    def act(self, fn: Callable[[SimCluster], object]) -> None:
        """One step: ``fn(cluster)`` (start things, change the network; an awaitable it
        returns is awaited), then ``step_time`` simulated seconds, then every check.  Reads
        of the cluster belong inside ``fn``: the cluster lives in the simulation's thread."""
        step_time = self.step_time

        async def step(c: SimCluster) -> ClusterView:
            result = fn(c)
            if isinstance(result, Awaitable):
                await result
            await c.run_for(step_time)
            c.check()
            self.check_replicas(c)
            return ClusterView.of(c)

        self.steps += 1
        self.view = self.run(step)

    def check_replicas(self, c: SimCluster) -> None:
        """Replicas that applied equally far agree on :meth:`replica_state`."""
        for gid in c.group_ids:
            by_index: dict[int, tuple[str, object]] = {}
            for n in c.hosts(gid):
                sm = c.state_machine(n, gid)
                if sm is None:
                    continue
                state = self.replica_state(sm)
                if state is None:
                    continue
                idx = sm.last_commit_index()
                other = by_index.setdefault(idx, (n.name, state))
                if other[1] != state:
                    c.checker.fail("Replica state", f"{other[0]} and {n.name} both applied up "
                                   f"to {idx} but their states differ: {other[1]!r} vs "
                                   f"{state!r}", gid)
        c.checker.raise_first()

    def propose(self, data: bytes, *, group: int = 0, via: int | None = None) -> None:
        """A client write (in the background) to the ``group``-th group through its leader
        (or the ``via``-th node that is up)."""
        if not self.view.groups:
            return
        gid = _pick(self.view.groups, group)
        node = _pick(self.view.up, via) if via is not None and self.view.up else None
        self.act(lambda c: c.write(gid, data, via=node))

    # -- set-up -------------------------------------------------------------------------------
    @initialize(
        seed=st.integers(0, 2**32 - 1),
        nodes=st.integers(0, 1000),
        groups=st.integers(0, 1000),
        variant=st.integers(0, 23),
        disk_latency=st.sampled_from([(0.0, 0.0), (0.0, 0.005)]),
        workload=st.sampled_from([0.0, 0.5, 1.0]),
    )
    def setup(self, seed: int, nodes: int, groups: int, variant: int,
              disk_latency: tuple[float, float], workload: float) -> None:
        """Build the cluster and its groups.  ``workload`` > 0: a background client also
        writes to every group every ``workload`` simulated seconds, through its leader."""
        n_nodes = self.min_nodes + nodes % (self.max_nodes - self.min_nodes + 1)
        n_groups = self.min_groups + groups % (self.max_groups - self.min_groups + 1)
        params = self.draw_params(variant)
        cls = type(self)

        def open_cluster() -> AbstractAsyncContextManager[SimCluster]:
            return SimCluster.open(
                n_nodes, seed=seed, params=params,
                state_machine_factory=cls.state_machine_factory,
                core_factory=cls.core_factory, disk_latency=disk_latency,
                link=LinkState(delay=(0.001, 0.01)),
            )

        self.runner = SimRunner(open_cluster)

        async def create(c: SimCluster) -> ClusterView:
            names = [n.name for n in c.nodes]
            for k in range(n_groups):
                size = min(len(names), 3 + k % 3)
                first = k % len(names)
                members = [names[(first + j) % len(names)] for j in range(size)]
                await c.create_group(members)
            if workload:
                c.start_workload(interval=workload, make_data=self._next_command)
            c.check()
            return ClusterView.of(c)

        self.view = self.run(create)
        event(f"nodes={n_nodes} groups={n_groups}")

    # -- client -------------------------------------------------------------------------------
    @rule(group=st.integers(0, 2), count=st.integers(1, 3), value=st.integers(0, 2**16),
          via=st.none() | st.integers(0, 4))
    def write(self, group: int, count: int, value: int, via: int | None) -> None:
        """Client writes through the leader (``via`` None) or any node."""
        if not self.view.groups:
            return
        gid = _pick(self.view.groups, group)
        node = _pick(self.view.up, via) if via is not None and self.view.up else None
        payloads = []
        for k in range(count):
            self.seq += 1
            payloads.append(self.make_command(self.seq, value + k))

        def start(c: SimCluster) -> None:
            for p in payloads:
                c.write(gid, p, via=node)

        self.act(start)

    # -- time ---------------------------------------------------------------------------------
    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]))
    def advance_time(self, seconds: float) -> None:
        async def wait(c: SimCluster) -> None:
            await c.run_for(seconds)

        self.act(wait)

    # -- network ------------------------------------------------------------------------------
    @rule(mask=st.integers(1, 30))
    def partition(self, mask: int) -> None:
        """Split the nodes in two by ``mask`` (or isolate one node)."""
        names = self.view.nodes
        side = [n for k, n in enumerate(names) if mask >> k & 1]
        other = [n for n in names if n not in side]

        def cut(c: SimCluster) -> None:
            if side and other:
                c.partition(side, other)
            else:
                c.isolate(_pick(names, mask))

        self.act(cut)

    @rule(a=st.integers(0, 4), b=st.integers(0, 4))
    def cut_one_way(self, a: int, b: int) -> None:
        src, dst = _pick(self.view.nodes, a), _pick(self.view.nodes, b)
        if src != dst:
            self.act(lambda c: c.cut([src], [dst]))

    @rule()
    def heal(self) -> None:
        self.act(lambda c: c.heal())

    @rule(drop=st.sampled_from([0.0, 0.05, 0.2, 0.5]),
          duplicate=st.sampled_from([0.0, 0.1, 0.3]),
          delay=st.sampled_from([(0.001, 0.01), (0.001, 0.1), (0.01, 0.5), (0.1, 2.0)]),
          link=st.none() | st.tuples(st.integers(0, 4), st.integers(0, 4)))
    def degrade(self, drop: float, duplicate: float, delay: tuple[float, float],
                link: tuple[int, int] | None) -> None:
        """Change drop / duplicate / delay on every link, or on one (both directions).  A
        delay range wider than the RaftStep deadline makes late requests and lost replies."""
        if link is None:
            self.act(lambda c: c.configure_links(drop=drop, duplicate=duplicate, delay=delay))
            return
        a, b = _pick(self.view.nodes, link[0]), _pick(self.view.nodes, link[1])
        if a == b:
            return

        def degrade_one(c: SimCluster) -> None:
            c.network.set_link(c.node(a).uuid, c.node(b).uuid, drop=drop, duplicate=duplicate,
                               delay=delay, symmetric=True)
            c.checker.note(f"link {a}<->{b}: drop={drop} duplicate={duplicate} delay={delay}")

        self.act(degrade_one)

    # -- nodes --------------------------------------------------------------------------------
    @rule(k=st.integers(0, 4))
    def crash(self, k: int) -> None:
        if not self.view.up:
            return
        name = _pick(self.view.up, k)
        type(self).stats.crashes += 1
        self.act(lambda c: c.crash(name))

    @rule(k=st.integers(0, 4))
    def restart(self, k: int) -> None:
        if not self.view.down:
            return
        name = _pick(self.view.down, k)
        self.act(lambda c: c.restart(name))

    # -- membership and leadership ------------------------------------------------------------
    @rule(group=st.integers(0, 2), k=st.integers(0, 4))
    def add_member(self, group: int, k: int) -> None:
        if not self.view.groups:
            return
        gid = _pick(self.view.groups, group)
        outside = tuple(n for n in self.view.nodes if n not in self.view.members.get(gid, ()))
        if outside:
            name = _pick(outside, k)
            self.act(lambda c: c.add_member(gid, name))

    @rule(group=st.integers(0, 2), k=st.integers(0, 4))
    def remove_member(self, group: int, k: int) -> None:
        if not self.view.groups:
            return
        gid = _pick(self.view.groups, group)
        members = self.view.members.get(gid, ())
        if len(members) > 1:
            name = _pick(members, k)
            self.act(lambda c: c.remove_member(gid, name))

    @rule(group=st.integers(0, 2), k=st.integers(0, 4))
    def transfer_leadership(self, group: int, k: int) -> None:
        if not self.view.groups:
            return
        gid = _pick(self.view.groups, group)
        members = tuple(n for n in self.view.members.get(gid, ()) if n in self.view.up)
        if members:
            name = _pick(members, k)
            self.act(lambda c: c.transfer_leadership(gid, name))

    @invariant()
    def count_rules(self) -> None:
        """(Counts rules for the statistics; the checks themselves run inside each step.)"""
        self.rule_count += 1

    # -- the end ------------------------------------------------------------------------------
    def teardown(self) -> None:
        runner, self.runner = self.runner, None
        if runner is None:
            return
        stats = type(self).stats
        failing = sys.exc_info()[1]
        try:
            if failing is None and self.liveness:
                timeout = self.liveness_timeout

                async def final(c: SimCluster) -> float:
                    took = await c.check_liveness(timeout=timeout)
                    c.check()
                    self.check_replicas(c)
                    return took

                took = runner.call(final)
                stats.liveness_time = max(stats.liveness_time, took)
                event(f"liveness took {_bucket(took)} s")

            async def count(c: SimCluster) -> tuple[int, int]:
                return len(c.writes), sum(w.acked for w in c.writes)

            writes, acked = runner.call(count)
            stats.writes += writes
            stats.acked += acked
        except InvariantViolation as v:
            stats.violations += 1
            stats.invariants[v.invariant] = stats.invariants.get(v.invariant, 0) + 1
            raise
        finally:
            stats.sim_time += runner.sim_time
            stats.examples += 1
            stats.steps += self.steps
            stats.rules += max(self.rule_count, 0)
            stats.max_steps = max(stats.max_steps, self.steps)
            stats.wall_time += time.perf_counter() - self._started
            if isinstance(failing, InvariantViolation):
                stats.violations += 1
                stats.invariants[failing.invariant] = (
                    stats.invariants.get(failing.invariant, 0) + 1)
            runner.close()


def _bucket(x: float) -> str:
    for edge in (1, 2, 5, 10, 20, 30, 60):
        if x <= edge:
            return f"<={edge}"
    return ">60"

