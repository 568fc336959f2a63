"""The end-of-run checks of the chaos rig, on the history and on the replicas' stores.

* :func:`read_replica`: a stopped node's applied sequence for a group, rebuilt from its
  SQLite store as the node itself would (checksums verified; stored snapshot, then the
  committed log);
* :func:`check_replicas`: every acknowledged write present exactly once in every replica,
  nothing that was never invoked, definite failures absent, ``del`` counts in bounds, and the
  replicas' sequences identical;
* :func:`check_real_time`: the log order is a linearization of the writes: an operation
  acknowledged before another was invoked comes first in the log (a linearizability check of
  its own, for write-only histories);
* :func:`check_election_safety`: at most one leader per group and term in the status polls;
* :func:`check_linearizability`: the checker of :mod:`nuraft_mesg.testing.linearizability`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nuraft_mesg.raft.types import ClusterConfig, LogType
from nuraft_mesg.storage.memory import KVStateMachine
from nuraft_mesg.storage.sqlite import SqliteStore
from nuraft_mesg.testing import linearizability
from nuraft_mesg.testing.chaos.history import Op

__all__ = [
    "check_election_safety",
    "check_linearizability",
    "check_real_time",
    "check_replicas",
    "encode",
    "read_replicas",
]


def encode(op: Op) -> bytes:
    """The KV command an operation sends (values are unique, so a put is found by it)."""
    k = op.key.split("/", 1)[1]
    return f"set {k} {op.value}".encode() if op.kind == "put" else f"del {k}".encode()


@dataclass(frozen=True, slots=True)
class Replica:
    node: str
    group: str
    sequence: tuple[bytes, ...]
    """The APP entries the group's state machine applied, in order."""


def read_replicas(data_dir: Path, node: str) -> dict[str, Replica]:
    """Every group stored in ``data_dir`` (the node stopped), by group id."""
    store = SqliteStore(data_dir)
    out: dict[str, Replica] = {}
    try:
        for rec in store.groups():
            if rec.corrupt is not None:
                raise AssertionError(f"{node}: group {rec.group_id} is corrupt: {rec.corrupt}")
            kv = KVStateMachine()
            smgr = store.state_manager(rec.group_id, server_id=rec.server_id, state_machine=kv)
            state = smgr.read_state()
            if state is None:
                continue
            log = smgr.load_log_store()
            first = kv.last_commit_index() + 1
            last = min(state.commit, log.last_index())
            if first < log.start_index():
                raise AssertionError(f"{node}: group {rec.group_id}: the log does not "
                                     "continue the snapshot")
            if last >= first:
                for index, entry in enumerate(log.entries(first, last + 1), start=first):
                    if entry.type == LogType.APP:
                        kv.commit(index, entry.buffer)
                    elif entry.type == LogType.CONFIG:
                        kv.commit_config(index, ClusterConfig.decode(entry.buffer))
            out[rec.group_id] = Replica(node, rec.group_id, tuple(d for _, d in kv.applied))
    finally:
        store.close()
    return out


def check_replicas(ops: Iterable[Op], replicas: Mapping[str, list[Replica]],
                   extra: Mapping[str, set[bytes]]) -> list[str]:
    """``replicas``: group -> its replicas; ``extra``: writes of the rig itself per group
    (liveness probes), allowed once each."""
    violations: list[str] = []
    by_group: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_group[op.group].append(op)
    for group, reps in sorted(replicas.items()):
        if not reps:
            continue
        group_ops = by_group.get(group, [])
        puts = {encode(op): op for op in group_ops if op.kind == "put"}
        dels: dict[bytes, list[Op]] = defaultdict(list)
        for op in group_ops:
            if op.kind == "del":
                dels[encode(op)].append(op)
        allowed = extra.get(group, set())
        for rep in reps:
            counts = Counter(rep.sequence)
            for payload, op in puts.items():
                n = counts.get(payload, 0)
                if op.type == "ok" and n != 1:
                    violations.append(f"group {group} on {rep.node}: acknowledged write "
                                      f"#{op.id} {payload!r} applied {n} times")
                elif op.type == "fail" and n:
                    violations.append(f"group {group} on {rep.node}: write #{op.id} "
                                      f"{payload!r} failed definitely but was applied")
                elif n > 1:
                    violations.append(f"group {group} on {rep.node}: write #{op.id} "
                                      f"{payload!r} applied {n} times")
            for payload, dops in dels.items():
                n = counts.get(payload, 0)
                low = sum(1 for o in dops if o.type == "ok")
                high = sum(1 for o in dops if o.type != "fail")
                if not low <= n <= high:
                    violations.append(f"group {group} on {rep.node}: {payload!r} applied {n} "
                                      f"times, {low} acknowledged, {high} possible")
            for payload, n in counts.items():
                if payload not in puts and payload not in dels and payload not in allowed:
                    violations.append(f"group {group} on {rep.node}: {payload!r} applied "
                                      "but never written")
                elif payload in allowed and n > 1:
                    violations.append(f"group {group} on {rep.node}: {payload!r} applied "
                                      f"{n} times")
        first = reps[0]
        for rep in reps[1:]:
            if rep.sequence != first.sequence:
                at = next((i for i, (a, b) in enumerate(zip(rep.sequence, first.sequence,
                                                            strict=False)) if a != b),
                          min(len(rep.sequence), len(first.sequence)))
                violations.append(
                    f"group {group}: {rep.node} applied {len(rep.sequence)} entries, "
                    f"{first.node} {len(first.sequence)}; they differ from entry {at}")
    return violations


def check_real_time(ops: Iterable[Op], replicas: Mapping[str, list[Replica]]) -> list[str]:
    """In each group's log, a put acknowledged before another put was invoked comes first."""
    violations: list[str] = []
    by_group: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "put" and op.type in ("ok", "info"):
            by_group[op.group].append(op)
    for group, reps in replicas.items():
        if not reps:
            continue
        position = {d: i for i, d in enumerate(reps[0].sequence)}
        placed = [(op, position[encode(op)]) for op in by_group.get(group, [])
                  if encode(op) in position]
        # Sweep by time: when an op is invoked, every op acknowledged earlier must precede it.
        # (Invocations first at equal times: those count as concurrent.)
        events = sorted([(op.invoked, 0, op, pos) for op, pos in placed]
                        + [(op.completed, 1, op, pos) for op, pos in placed
                           if op.type == "ok"], key=lambda e: (e[0], e[1]))
        latest: tuple[int, Op] | None = None
        for _, kind, op, pos in events:
            if kind == 1:
                if latest is None or pos > latest[0]:
                    latest = (pos, op)
            elif latest is not None and latest[0] > pos:
                before = latest[1]
                violations.append(
                    f"group {group}: write #{before.id} was acknowledged at "
                    f"{before.completed:.3f} before write #{op.id} was invoked at "
                    f"{op.invoked:.3f}, yet comes after it in the log")
    return violations


def check_election_safety(leaders: Mapping[tuple[str, int], set[str]]) -> list[str]:
    return [f"group {g}: {len(nodes)} leaders in term {t}: {sorted(nodes)}"
            for (g, t), nodes in sorted(leaders.items()) if len(nodes) > 1]


def check_linearizability(history_file: Path) -> tuple[list[str], str]:
    """(violations, a one-line verdict) from :mod:`nuraft_mesg.testing.linearizability`."""
    history = linearizability.History.load(history_file)
    result = linearizability.check_kv(history, timeout=120.0)
    return [str(r) for r in result.violations], str(result).splitlines()[0]
