"""Helpers for testing code built on nuraft_mesg.

Storage conformance: :func:`check_log_store` and :func:`check_state_manager` are conformance
suites for your own storage implementations: call them from a trio test with a factory of
fresh objects (and, optionally, a ``reopen`` function that simulates a restart).  They raise
:class:`AssertionError` on the first violation and need no test framework.

Property testing of your state machine over live Raft groups (see docs/testing.md):

* :class:`SimNetwork` / :class:`SimTransport`: an in-memory network with per-link loss,
  duplication, delay and partitions, deterministic under trio's ``MockClock``;
* :class:`SimCluster`: real Managers on a SimNetwork, with per-node simulated disks, crash and
  restart, group creation, client writes and workloads;
* :func:`check_invariants` / :class:`InvariantViolation`: Raft's safety invariants over every
  group of a SimCluster;
* :class:`RaftClusterMachine`: a Hypothesis state machine to subclass with your own
  state machine (and your own rules).

Linearizability: :class:`History` records what clients invoked and saw (JSON lines on disk);
:func:`check_kv` (or :func:`check` with your own :class:`Model`) decides whether it is
linearizable and explains a violation; :func:`simulated_history` makes linearizable ones;
:class:`SimKVClients` records one from concurrent clients of a SimCluster group (reads
through the log: :class:`LogReadKV`).

DNS-named peers (:class:`nuraft_mesg.DnsApplication`): :class:`StaticResolver` /
:func:`install_static_resolver` answer trio's ``getaddrinfo`` from a table, like ``/etc/hosts``
entries for one ``trio.run``.

``nuraft_mesg.testing.machine`` imports Hypothesis; it is loaded on first use of
:class:`RaftClusterMachine` or :class:`SimRunner`, so the rest works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nuraft_mesg.testing.checkers import (
    InvariantViolation,
    LivenessViolation,
    check_invariants,
)
from nuraft_mesg.testing.cluster import SIM_PARAMS, SimCluster, Workload
from nuraft_mesg.testing.conformance import check_log_store, check_state_manager
from nuraft_mesg.testing.dns import StaticResolver, install_static_resolver
from nuraft_mesg.testing.histories import LogReadKV, SimKVClients
from nuraft_mesg.testing.linearizability import (
    History,
    KVModel,
    LinearizabilityResult,
    Model,
    Operation,
    PartitionResult,
    check,
    check_kv,
    simulated_history,
)
from nuraft_mesg.testing.sim import LinkState, SimNetwork, SimTransport
from nuraft_mesg.testing.sim_node import RecordingStateMachine, SimNode, Write

if TYPE_CHECKING:
    from nuraft_mesg.testing.machine import RaftClusterMachine, SimRunner

__all__ = [
    "check_log_store",
    "check_state_manager",
    "SimNetwork",
    "SimTransport",
    "LinkState",
    "SimCluster",
    "SimNode",
    "SIM_PARAMS",
    "RecordingStateMachine",
    "Workload",
    "Write",
    "check_invariants",
    "InvariantViolation",
    "LivenessViolation",
    "RaftClusterMachine",
    "SimRunner",
    "StaticResolver",
    "install_static_resolver",
    "History",
    "KVModel",
    "LinearizabilityResult",
    "Model",
    "Operation",
    "PartitionResult",
    "check",
    "check_kv",
    "simulated_history",
    "LogReadKV",
    "SimKVClients",
]


def __getattr__(name: str) -> Any:
    if name in ("RaftClusterMachine", "SimRunner"):
        from nuraft_mesg.testing import machine

        return getattr(machine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
