"""Property-test a replicated key-value store with nuraft_mesg's harness.

    python examples/kv_store_harness.py                 # 20 examples of 40 steps
    python examples/kv_store_harness.py --examples 200 --steps 50
    python examples/kv_store_harness.py --buggy         # a store with a bug: watch it fail

``KVStore`` is the application's state machine: ``put``, ``del`` and compare-and-set on string
keys.  ``KVStoreMachine`` plugs it into :class:`nuraft_mesg.testing.RaftClusterMachine`, which
runs real Managers (3 to 5 nodes, 1 to 3 groups) over a simulated network and throws
partitions, lossy and slow links, crashes and restarts, membership changes and leadership
transfers at them, checking Raft's invariants after every step.  This file adds what only the
application knows: how to make commands, a rule of its own (compare-and-set), and how to
compare two replicas (``replica_state``: replicas that applied equally far must be equal).

``--buggy`` swaps in a store whose compare-and-set depends on the replica it runs on (a
non-deterministic state machine, the classic application bug that Raft cannot fix): the
replica check catches it and Hypothesis shrinks it to a short list of steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from nuraft_mesg.raft.types import ClusterConfig
from nuraft_mesg.storage.interfaces import StateMachine
from nuraft_mesg.testing import InvariantViolation, RaftClusterMachine


class KVStore(StateMachine):
    """``put <k> <v>``, ``del <k>``, ``cas <k> <expected> <new>`` (``-`` expects no value)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.last = 0

    def commit(self, index: int, data: bytes) -> bytes:
        self.last = index
        op, *args = data.decode().split()
        if op == "put":
            self.data[args[0]] = args[1]
        elif op == "del":
            self.data.pop(args[0], None)
        elif op == "cas":
            key, expected, new = args
            if self.data.get(key, "-") != expected:
                return b"conflict"
            self.data[key] = new
        return b"ok"

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self.last = index

    def last_commit_index(self) -> int:
        return self.last


class BuggyKVStore(KVStore):
    """Its compare-and-set succeeds on some replicas and not on others."""

    replicas = 0

    def __init__(self) -> None:
        super().__init__()
        BuggyKVStore.replicas += 1
        self.lenient = BuggyKVStore.replicas % 3 == 0  # one replica in three

    def commit(self, index: int, data: bytes) -> bytes:
        if self.lenient and data.startswith(b"cas "):
            _, key, _, new = data.decode().split()
            self.last = index
            self.data[key] = new
            return b"ok"
        return super().commit(index, data)


class KVStoreMachine(RaftClusterMachine):
    state_machine_factory = KVStore

    def make_command(self, seq: int, value: int) -> bytes:
        # Unique payloads (the sequence number is the value) let the checks follow each write.
        key = value % 5
        return b"del k%d %d" % (key, seq) if value % 7 == 0 else b"put k%d %d" % (key, seq)

    def replica_state(self, sm: StateMachine) -> object:
        assert isinstance(sm, KVStore)
        return dict(sm.data)

    @rule(group=st.integers(0, 2), key=st.integers(0, 4), expected=st.integers(0, 40))
    def compare_and_set(self, group: int, key: int, expected: int) -> None:
        """The application's own operation, as a rule of its own."""
        self.seq += 1
        want = b"-" if expected == 0 else b"%d" % expected
        self.propose(b"cas k%d %s %d" % (key, want, self.seq), group=group)


class BuggyKVStoreMachine(KVStoreMachine):
    state_machine_factory = BuggyKVStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--random", action="store_true",
                        help="a new random search each time (default: derandomized)")
    parser.add_argument("--buggy", action="store_true", help="test a broken store instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the runtime's own warnings are expected

    machine = BuggyKVStoreMachine if args.buggy else KVStoreMachine
    started = time.perf_counter()
    outcome = 0
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=args.examples, stateful_step_count=args.steps, deadline=None,
            derandomize=not args.random, database=None,
            suppress_health_check=list(HealthCheck)))
    except InvariantViolation as violation:
        print(f"\nVIOLATION FOUND ({violation.invariant}).  Hypothesis shrank it to:\n")
        for note in getattr(violation, "__notes__", []):  # the failing steps
            print(note)
        print()
        print(violation)
        outcome = 1
    stats = machine.stats
    print(f"\n{machine.__name__}: {stats.summary()}")
    print(f"wall time {time.perf_counter() - started:.1f} s, longest liveness phase "
          f"{stats.liveness_time:.1f} s simulated")
    return outcome


if __name__ == "__main__":
    sys.exit(main())
