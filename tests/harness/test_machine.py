"""The public RaftClusterMachine: live groups under random faults, checked after every step.

Profiles (tests/conftest.py): ``ci`` runs a short search; ``thorough`` runs the profile's
examples (1,200) of 50 steps each.  Totals are printed (``pytest -s``) and, if the environment
variable ``NURAFT_HARNESS_STATS`` names a file, appended to it as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.types import ClusterConfig
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.testing import InvariantViolation, SimCluster, SimRunner
from nuraft_mesg.testing.machine import MachineStats, RaftClusterMachine
from tests.broken_cores import AppliesEarly

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
STEPS = 50 if THOROUGH else 40
_PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
EXAMPLES = _PROFILE.max_examples if THOROUGH else 12


def _settings(**kw: object) -> settings:
    base: dict[str, object] = dict(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    base.update(kw)
    return settings(settings.default, **base)  # type: ignore[arg-type]


def _report(name: str, stats: MachineStats, wall: float) -> None:
    print(f"\n{name}: {stats.summary()} (test wall time {wall:.1f} s)")
    path = os.environ.get("NURAFT_HARNESS_STATS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"machine": name, "wall": wall,
                                "profile": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
                                **dataclasses.asdict(stats)}) + "\n")


# ==============================================================================================
# The default machine: KVStateMachine replicas
# ==============================================================================================
class KVMachine(RaftClusterMachine):
    """The base machine as it ships (a replicated key-value store)."""


@pytest.mark.timeout(0 if THOROUGH else 300)
def test_kv_machine() -> None:
    KVMachine.stats = MachineStats()
    start = time.perf_counter()
    run_state_machine_as_test(KVMachine, settings=_settings())
    _report("KVMachine", KVMachine.stats, time.perf_counter() - start)
    assert KVMachine.stats.violations == 0
    assert KVMachine.stats.examples >= EXAMPLES


# ==============================================================================================
# A user's machine: their own state machine and their own rule
# ==============================================================================================
class Counter(StateMachine):
    """Adds up ``add <n>`` commands; anything else counts as 0."""

    def __init__(self) -> None:
        self.total = 0
        self.last = 0

    def commit(self, index: int, data: bytes) -> bytes:
        self.last = index
        if data.startswith(b"add "):
            self.total += int(data.split()[1])
        return b"%d" % self.total

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self.last = index

    def last_commit_index(self) -> int:
        return self.last


class CounterMachine(RaftClusterMachine):
    state_machine_factory = Counter
    max_nodes = 4
    max_groups = 2

    def make_command(self, seq: int, value: int) -> bytes:
        return b"add %d %d" % (value % 10, seq)  # unique: the sequence number rides along

    def replica_state(self, sm: StateMachine) -> object:
        assert isinstance(sm, Counter)
        return sm.total

    @rule(n=st.integers(1, 20))
    def burst(self, n: int) -> None:
        """A user rule: many writes to the first group at once."""
        payloads = []
        for _ in range(n):
            self.seq += 1
            payloads.append(self.make_command(self.seq, self.seq))
        gid = self.view.groups[0]
        self.act(lambda c: [c.write(gid, p) for p in payloads])


def test_a_user_machine_with_its_own_state_machine_and_rule() -> None:
    CounterMachine.stats = MachineStats()
    start = time.perf_counter()
    run_state_machine_as_test(CounterMachine, settings=_settings(max_examples=5,
                                                                 stateful_step_count=25))
    _report("CounterMachine", CounterMachine.stats, time.perf_counter() - start)
    assert CounterMachine.stats.acked > 0


# ==============================================================================================
# The machine fails when the core is broken
# ==============================================================================================
class BrokenMachine(RaftClusterMachine):
    core_factory = AppliesEarly


def test_the_machine_catches_a_broken_core() -> None:
    with pytest.raises(InvariantViolation, match="before it was committed"):
        run_state_machine_as_test(
            BrokenMachine,
            settings=settings(max_examples=5, stateful_step_count=5, deadline=None,
                              derandomize=True, database=None, phases=[Phase.generate],
                              suppress_health_check=list(HealthCheck), print_blob=False),
        )


# ==============================================================================================
# Replays are exact
# ==============================================================================================
def _run_once(seed: int) -> tuple[list[str], list[str], float]:
    trio._core._run._r.seed(seed)  # trio's scheduler (Hypothesis seeds it per example)
    with SimRunner(lambda: SimCluster.open(3, seed=seed)) as runner:
        async def scenario(c: SimCluster) -> tuple[list[str], list[str], float]:
            gid = await c.create_group()
            c.start_workload(interval=0.05)
            c.configure_links(drop=0.1, duplicate=0.1, delay=(0.0, 0.2))
            await c.run_for(3)
            await c.crash("n1")
            await c.run_for(3)
            await c.restart("n1")
            await c.check_liveness()
            c.check()
            trace = [f"{t:.6f} {m.describe()} {fate}" for t, m, fate in c.network.trace]
            applied = [repr(c.applied_log(n, gid)) for n in c.nodes]
            return trace, applied, trio.current_time()

        return runner.call(scenario)


def test_a_seed_replays_exactly() -> None:
    first = _run_once(7)
    assert first == _run_once(7)
    assert first != _run_once(8)


def test_time_stands_still_between_calls() -> None:
    with SimRunner(lambda: SimCluster.open(3, seed=1)) as runner:
        async def now(c: SimCluster) -> float:
            return trio.current_time()

        async def sleep(c: SimCluster) -> float:
            await trio.sleep(3600)  # an hour of simulated time
            return trio.current_time()

        t0 = runner.call(now)
        time.sleep(0.05)
        assert runner.call(now) == t0
        start = time.perf_counter()
        assert runner.call(sleep) == pytest.approx(t0 + 3600)
        assert time.perf_counter() - start < 20


def test_errors_in_calls_reach_the_caller() -> None:
    with SimRunner(lambda: SimCluster.open(3, seed=1)) as runner:
        async def boom(c: SimCluster) -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError):
            runner.call(boom)
        assert runner.call(lambda c: _echo(c, 5)) == 5


async def _echo(c: SimCluster, x: int) -> int:
    await trio.lowlevel.checkpoint()
    return x


def test_plain_raftnode_is_the_default() -> None:
    assert RaftClusterMachine.core_factory is RaftNode
