"""Raft's safety invariants, checked over live groups of a :class:`~.cluster.SimCluster`.

:func:`check_invariants` raises :class:`InvariantViolation` (an ``AssertionError``) with the
name of the broken invariant, what broke it, and a short history of what led there (cluster
events: crashes, partitions, leaders, membership, writes; and the group's recent messages).

What is checked, per group (Raft paper, Figure 3, plus what a client of the library sees):

* **Election Safety** -- at most one node ever leads a given term.
* **Leader Append-Only** -- while a node leads a term, its log only grows.
* **Log Matching** -- if two logs (live in a core, or durable on a node's disk, across every
  incarnation) hold an entry with the same index and term, they are identical up to it.
  Checked with a hash chain per log, incrementally: the chain value of ``(index, term)`` is
  remembered forever, since a leader creates at most one entry per index and term.
* **Leader Completeness** -- an entry committed in term T is in the log of every leader of a
  term >= T: live leaders after each of their Ready cycles, and every past leader's last
  log.  "Committed in a term <= T" is known from observations: a node whose commit index
  covers the entry while its term is T (or a client acknowledgement while the node's term
  is T).
* **State Machine Safety** -- every state machine applies, at each index, the entry that is
  committed there, in index order, only once it is committed, and every node applies the
  same entry at an index (each incarnation of a node re-applies from its state machine's
  ``last_commit_index``, so the comparison is per index).
* **Acknowledged writes** -- a write whose ``append_entries`` returned is committed: it is in
  the log of every leader of the acknowledging node's term or later (through Leader
  Completeness) and is applied exactly once, at its index, by every replica that applies
  that far.
* **Durable promises** -- a node's durable term never goes back and its durable vote never
  changes within a term (a node that forgets its vote may vote twice).
* **Group isolation** -- a core only ever steps messages that were sent to its own group; a
  committed write proposed to another group, or a committed configuration naming a server
  never invited into the group, is a violation.
* **No runtime errors** -- a group that stops because storage or the state machine raised,
  or a node whose Manager dies of an exception, is reported.

Checks that can be made the moment something happens (in the observation hooks the cluster
installs: after every Ready cycle of every core, on every apply, on every save of the hard
state) record the violation there; :func:`check_invariants` runs the remaining whole-cluster
checks and raises the first violation found.  Hooks never raise into the runtime, so a
violation does not change what the cluster does.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from nuraft_mesg.raft.node import RaftNode, Role
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, LogType, Message

__all__ = [
    "CheckedCluster",
    "ClusterChecker",
    "InvariantViolation",
    "LivenessViolation",
    "ObservedCluster",
    "check_invariants",
]

HISTORY_LINES = 40
MESSAGE_LINES = 20


class InvariantViolation(AssertionError):
    """A safety invariant broke.  ``str()`` names it and shows the recent history."""

    def __init__(
        self,
        invariant: str,
        detail: str,
        *,
        group: str = "",
        history: Sequence[str] = (),
        messages: Sequence[str] = (),
        when: float | None = None,
    ) -> None:
        self.invariant = invariant
        self.detail = detail
        self.group = group
        self.history = list(history)
        self.messages = list(messages)
        self.when = when
        super().__init__(self.render())

    def render(self) -> str:
        where = f" [{self.group}]" if self.group else ""
        at = f" at t={self.when:.3f}s" if self.when is not None else ""
        lines = [f"{self.invariant}{where}{at}: {self.detail}"]
        if self.history:
            lines.append("recent history:")
            lines.extend(f"  {h}" for h in self.history)
        if self.messages:
            lines.append(f"recent messages{where}:")
            lines.extend(f"  {m}" for m in self.messages)
        return "\n".join(lines)


class LivenessViolation(InvariantViolation):
    """After every fault was repaired, a group did not elect a leader and commit a new entry
    within the allowed (simulated) time."""


Item = tuple[str, bytes]
"""What a state machine saw at one index: ("app", data) or ("config", encoded config)."""


def entry_item(entry: LogEntry) -> Item | None:
    """What applying ``entry`` shows the state machine (None: entries it never sees)."""
    if entry.type == LogType.APP:
        return ("app", entry.buffer)
    if entry.type == LogType.CONFIG:
        return ("config", ClusterConfig.decode(entry.buffer).encode())
    return None


@dataclass(slots=True)
class _LeaderLog:
    start: int
    entries: list[LogEntry]
    verified: int = 0
    """Indices 1..verified are known to hold the committed entries (Leader Completeness)."""


@dataclass(slots=True)
class _Chain:
    """A cached hash chain over one log (live or durable)."""

    start: int
    entries: list[LogEntry]
    hashes: list[int]


@dataclass(slots=True)
class _Acked:
    index: int
    entry: LogEntry
    term: int
    node: str


@dataclass
class _GroupHistory:
    name: str
    leader_of_term: dict[int, str] = field(default_factory=dict)
    leader_logs: dict[tuple[str, int], _LeaderLog] = field(default_factory=dict)
    committed: dict[int, LogEntry] = field(default_factory=dict)
    commit_term: dict[int, int] = field(default_factory=dict)
    applied_at: dict[int, tuple[Item, str]] = field(default_factory=dict)
    acked: dict[int, _Acked] = field(default_factory=dict)
    invited: set[int] = field(default_factory=set)
    chain_at: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)
    chains: dict[str, _Chain] = field(default_factory=dict)


@dataclass(slots=True)
class _CoreSeen:
    node: str
    term: int
    commit: int


class ObservedCluster(Protocol):
    """What the checker reads from the cluster it watches (a :class:`~.cluster.SimCluster`):
    names for the history, recent messages for a report, every log for Log Matching.  A
    protocol, so that the cluster imports this module and not the other way round."""

    def group_name(self, group_id: str) -> str: ...
    def node_name_of(self, server_id: int) -> str: ...
    def core_serial(self, core: RaftNode) -> int: ...
    def recent_messages(self, group_id: str, count: int) -> list[str]: ...
    def logs_of(self, group_id: str) -> list[tuple[str, int, int, list[LogEntry]]]: ...


class CheckedCluster(Protocol):
    """A cluster that carries its :class:`ClusterChecker` (what :func:`check_invariants`
    takes)."""

    @property
    def checker(self) -> ClusterChecker: ...


class ClusterChecker:
    """History and invariant checks of one SimCluster (made by the cluster itself).

    The hooks (``observe``, ``on_apply``, ...) are called by the cluster's instrumentation;
    :meth:`check` runs the whole-cluster checks.  ``violations`` holds every violation found
    (the first one is raised).
    """

    def __init__(self, cluster: ObservedCluster) -> None:
        self.cluster = cluster
        self.groups: dict[str, _GroupHistory] = {}
        self.violations: list[InvariantViolation] = []
        self.history: deque[str] = deque(maxlen=HISTORY_LINES)
        self.applied: dict[tuple[str, str, int], list[tuple[int, Item]]] = {}
        """Per (node, group, state-machine life): every (index, item) applied, in order."""
        self._seen: dict[int, _CoreSeen] = {}
        self._durable: dict[tuple[str, str, int], HardState] = {}
        self._proposed: dict[bytes, set[str]] = {}
        self._msg_group: OrderedDict[int, tuple[str, Message]] = OrderedDict()
        self.stats_checks = 0

    # ==========================================================================================
    # History and failures
    # ==========================================================================================
    def note(self, line: str) -> None:
        self.history.append(f"{_now():9.3f} {line}")

    def group(self, group_id: str) -> _GroupHistory:
        g = self.groups.get(group_id)
        if g is None:
            g = self.groups[group_id] = _GroupHistory(self.cluster.group_name(group_id))
        return g

    def fail(self, invariant: str, detail: str, group_id: str = "") -> None:
        """Record a violation (raised by the next :meth:`check`)."""
        name = self.cluster.group_name(group_id) if group_id else ""
        messages = self.cluster.recent_messages(group_id, MESSAGE_LINES) if group_id else []
        v = InvariantViolation(invariant, detail, group=name, history=list(self.history),
                               messages=messages, when=_now())
        self.violations.append(v)
        self.note(f"VIOLATION {invariant}: {detail}")

    def raise_first(self) -> None:
        if self.violations:
            raise self.violations[0]

    # ==========================================================================================
    # Hooks
    # ==========================================================================================
    def on_invite(self, group_id: str, server_id: int) -> None:
        self.group(group_id).invited.add(server_id)

    def on_propose(self, group_id: str, data: bytes) -> None:
        self._proposed.setdefault(data, set()).add(group_id)

    def on_deliver(self, group_id: str, msg: Message) -> None:
        """A message of ``group_id`` reached a node (request) or its caller (reply)."""
        reg = self._msg_group
        reg[id(msg)] = (group_id, msg)  # holding ``msg`` keeps its id unique
        if len(reg) > 20000:
            reg.popitem(last=False)

    def on_step(self, node: str, group_id: str, msg: Message) -> None:
        seen = self._msg_group.get(id(msg))
        if seen is not None and seen[1] is msg and seen[0] != group_id:
            self.fail("Group isolation",
                      f"{node}'s core of {self.cluster.group_name(group_id)} stepped a "
                      f"{msg.type.name} sent to {self.cluster.group_name(seen[0])}", group_id)

    def on_runtime_error(self, node: str, group_id: str, error: BaseException) -> None:
        self.fail("Runtime error", f"{node} stopped {'group' if group_id else 'running'}: "
                  f"{error!r}", group_id)

    def on_save_state(self, node: str, group_id: str, disk: int, hs: HardState) -> None:
        key = (node, group_id, disk)
        prev = self._durable.get(key)
        self._durable[key] = hs
        if prev is None:
            return
        if hs.term < prev.term:
            self.fail("Durable promises", f"{node}'s durable term went back from {prev.term} "
                      f"to {hs.term}", group_id)
        elif hs.term == prev.term and prev.vote != -1 and hs.vote != prev.vote:
            self.fail("Durable promises", f"{node} changed its durable vote in term {hs.term} "
                      f"from {self._name_of(prev.vote)} to {self._name_of(hs.vote)} "
                      "(it may vote twice)", group_id)

    def observe(self, node: str, group_id: str, serial: int, core: RaftNode) -> None:
        """After every Ready cycle of ``core`` (``serial`` identifies the core object)."""
        g = self.group(group_id)
        term, commit = core.term, core.commit
        seen = self._seen.get(serial)
        if seen is None:
            seen = self._seen[serial] = _CoreSeen(node, term, 0)
        elif term < seen.term or commit < seen.commit:
            self.fail("Monotonic state", f"{node}: term/commit went from {seen.term}/"
                      f"{seen.commit} to {term}/{commit}", group_id)
        seen.term = term
        # Election Safety and Leader Append-Only.
        if core.role == Role.LEADER:
            other = g.leader_of_term.setdefault(term, node)
            if other != node:
                self.fail("Election Safety", f"{other} and {node} both led term {term}",
                          group_id)
            log = core.log
            entries = log.slice(log.start_index, log.last_index + 1)
            key = (node, term)
            before = g.leader_logs.get(key)
            if before is None:
                g.leader_logs[key] = before = _LeaderLog(log.start_index, entries)
            else:
                # Compare what both views hold (compaction may have moved the start on).
                lo = max(before.start, log.start_index)
                old = before.entries[lo - before.start:]
                new = entries[lo - log.start_index: lo - log.start_index + len(old)]
                if log.start_index < before.start or new != old:
                    self.fail("Leader Append-Only",
                              f"{node}, leader of term {term}, changed entries of its log",
                              group_id)
            before.entries = entries
            before.start = log.start_index
        # Newly committed entries.
        if commit > seen.commit:
            self._record_commits(g, group_id, node, core, seen.commit + 1, commit)
            seen.commit = commit
        if core.role == Role.LEADER:
            self._check_complete(g, group_id, node, term, g.leader_logs[(node, term)])

    def on_apply(self, node: str, group_id: str, life: int, index: int, item: Item,
                 core: RaftNode | None, *, resume_from: int = 0) -> None:
        """The state machine of ``(node, group, life)`` is applying ``item`` at ``index``
        (it started after ``resume_from``).  ``("snapshot", b"")``: a snapshot replaced its
        state, up to ``index``."""
        g = self.group(group_id)
        recs = self.applied.setdefault((node, group_id, life), [])
        last = recs[-1][0] if recs else resume_from
        if item[0] == "snapshot":
            if index <= last:
                self.fail("State Machine Safety", f"{node} installed a snapshot at {index} "
                          f"after applying {last}", group_id)
            if core is not None and index > core.commit:
                self.fail("State Machine Safety", f"{node} installed a snapshot at {index} "
                          f"beyond its commit index {core.commit}", group_id)
            recs.append((index, item))
            return
        if index <= last:
            self.fail("State Machine Safety", f"{node} applied index {index} after index "
                      f"{last} (twice, or out of order)", group_id)
        elif core is not None:
            for skipped in range(max(last + 1, core.log.start_index), index):
                if entry_item(core.log.entry(skipped)) is not None:
                    self.fail("State Machine Safety", f"{node} skipped index {skipped} "
                              f"(applied {index} after {last})", group_id)
                    break
        if core is not None and index > core.commit:
            self.fail("State Machine Safety", f"{node} applied index {index} before it was "
                      f"committed (commit index {core.commit})", group_id)
        committed = g.committed.get(index)
        if committed is not None and entry_item(committed) != item:
            self.fail("State Machine Safety", f"{node} applied {_show(item)} at {index}, but "
                      f"{_show(entry_item(committed))} is committed there", group_id)
        first = g.applied_at.setdefault(index, (item, node))
        if first[0] != item:
            self.fail("State Machine Safety", f"{node} applied {_show(item)} at {index}, "
                      f"{first[1]} applied {_show(first[0])}", group_id)
        recs.append((index, item))

    def on_ack(self, node: str, group_id: str, life: int, data: bytes, core: RaftNode,
               taken: set[int]) -> int | None:
        """A client's write of ``data`` through ``node`` was acknowledged.  Returns the
        index it was applied at (None, and a violation, if it was not applied there)."""
        g = self.group(group_id)
        recs = self.applied.get((node, group_id, life), [])
        index = next((i for i, item in recs if item == ("app", data) and i not in taken), None)
        if index is None:
            self.fail("Acknowledged writes", f"a write of {data!r} acknowledged by {node} "
                      "was never applied there", group_id)
            return None
        try:
            entry = core.log.entry(index)
        except IndexError:
            return index
        self.observe(node, group_id, self._serial_of(core), core)
        ack = _Acked(index, entry, core.term, node)
        g.acked[index] = ack
        seen = g.committed.setdefault(index, entry)
        if seen != entry:
            self.fail("Acknowledged writes", f"write {data!r} acknowledged at {index} by "
                      f"{node}, but {seen} is committed there", group_id)
        # Committed in a term <= the acknowledging node's current term.
        self._lower_commit_term(g, index, core.term)
        item = ("app", data)
        for (n, gid, _), other in self.applied.items():
            if gid != group_id or not other or other[-1][0] < index:
                continue
            pos = bisect.bisect_left(other, index, key=lambda r: r[0])
            at, what = other[pos]
            if what[0] == "snapshot" or (at != index and pos == 0):
                continue  # covered by a snapshot, or this life started after it
            if at != index or what != item:
                self.fail("Acknowledged writes", f"acknowledged write {data!r} (index "
                          f"{index}) is not what {n} applied there", group_id)
        return index

    # ==========================================================================================
    # Whole-cluster checks
    # ==========================================================================================
    def check(self) -> None:
        """Run the whole-cluster checks, then raise the first violation found so far."""
        self.stats_checks += 1
        for gid in list(self.groups):
            g = self.groups[gid]
            for source, start, boundary_term, entries in self.cluster.logs_of(gid):
                self._check_chain(g, gid, source, start, boundary_term, entries)
            for (node, term), ll in g.leader_logs.items():
                self._check_complete(g, gid, node, term, ll)
        self.raise_first()

    # -- helpers -----------------------------------------------------------------------------
    def _name_of(self, server_id: int) -> str:
        return self.cluster.node_name_of(server_id)

    def _serial_of(self, core: RaftNode) -> int:
        return self.cluster.core_serial(core)

    def _lower_commit_term(self, g: _GroupHistory, upto: int, term: int) -> None:
        ct = g.commit_term
        for idx in range(upto, 0, -1):
            old = ct.get(idx)
            if old is not None and old <= term:
                break  # monotone in idx: everything below is at most ``old`` already
            ct[idx] = term

    def _record_commits(self, g: _GroupHistory, group_id: str, node: str, core: RaftNode,
                        lo: int, hi: int) -> None:
        log = core.log
        lo = max(lo, log.start_index)
        for idx in range(lo, hi + 1):
            try:
                entry = log.entry(idx)
            except IndexError:
                self.fail("Log Matching", f"{node} has commit index {hi} beyond its log "
                          f"({log.last_index})", group_id)
                return
            seen = g.committed.get(idx)
            if seen is not None:
                if seen is not entry and seen != entry:
                    self.fail("State Machine Safety", f"two different entries committed at "
                              f"{idx}: {_show_entry(seen)} and {_show_entry(entry)} ({node})",
                              group_id)
            else:
                g.committed[idx] = entry
                self._check_provenance(g, group_id, idx, entry)
                applied = g.applied_at.get(idx)
                if applied is not None and applied[0] != entry_item(entry):
                    self.fail("State Machine Safety", f"{applied[1]} applied "
                              f"{_show(applied[0])} at {idx}, but {_show_entry(entry)} was "
                              "committed there", group_id)
        self._lower_commit_term(g, hi, core.term)

    def _check_provenance(self, g: _GroupHistory, group_id: str, idx: int,
                          entry: LogEntry) -> None:
        if entry.type == LogType.APP:
            groups = self._proposed.get(entry.buffer)
            if groups is not None and group_id not in groups:
                others = ", ".join(sorted(self.cluster.group_name(x) for x in groups))
                self.fail("Group isolation", f"write {entry.buffer!r} proposed to {others} "
                          f"was committed at {idx}", group_id)
        elif entry.type == LogType.CONFIG and g.invited:
            cfg = ClusterConfig.decode(entry.buffer)
            strangers = [s.id for s in cfg.servers if s.id not in g.invited]
            if strangers:
                self.fail("Group isolation", f"configuration committed at {idx} names "
                          f"{[self._name_of(s) for s in strangers]}, never invited", group_id)

    def _check_complete(self, g: _GroupHistory, group_id: str, node: str, term: int,
                        ll: _LeaderLog) -> None:
        """Leader Completeness for the leader of ``term`` on ``node`` (log ``ll``)."""
        idx = ll.verified + 1
        ct = g.commit_term
        while True:
            t = ct.get(idx)
            if t is None or t > term:
                return
            committed = g.committed.get(idx)
            if committed is None:
                return
            off = idx - ll.start
            if off < 0:  # compacted: covered by the leader's snapshot, hence committed
                ll.verified = idx
                idx += 1
                continue
            held = ll.entries[off] if off < len(ll.entries) else None
            if held is not committed and held != committed:
                what = "an acknowledged write" if idx in g.acked else "a committed entry"
                self.fail("Leader Completeness", f"{node}, leader of term {term}, lacks "
                          f"{what} at {idx} ({_show_entry(committed)}, committed by term {t}); "
                          f"it holds {_show_entry(held) if held else 'nothing'} there",
                          group_id)
                return
            ll.verified = idx
            idx += 1

    def _check_chain(self, g: _GroupHistory, group_id: str, source: str, start: int,
                     boundary_term: int, entries: list[LogEntry]) -> None:
        """Log Matching over one log, from the first entry that changed since last time.

        A log that starts after index 1 (compacted) continues the chain value recorded for
        its boundary entry; if none was ever recorded, it cannot be checked yet."""
        cached = g.chains.get(source)
        keep = 0
        if cached is not None and cached.start == start:
            n = len(cached.entries)
            if len(entries) >= n and entries[:n] == cached.entries:
                keep = n
            else:
                keep = _common_prefix(cached.entries, entries)
        hashes = cached.hashes[:keep] if cached is not None and keep else []
        if hashes:
            h = hashes[-1]
        elif start == 1:
            h = 0
        else:
            seed = g.chain_at.get((start - 1, boundary_term))
            if seed is None:
                g.chains.pop(source, None)
                return
            h = seed[0]
        last_term = entries[keep - 1].term if keep else boundary_term
        for off in range(keep, len(entries)):
            e = entries[off]
            idx = start + off
            if e.term < last_term:
                self.fail("Log Matching", f"{source}: log terms go down at index {idx}",
                          group_id)
                break
            last_term = e.term
            h = hash((h, e.term, e.type, e.buffer))
            hashes.append(h)
            first = g.chain_at.setdefault((idx, e.term), (h, source))
            if first[0] != h:
                self.fail("Log Matching", f"{first[1]} and {source} both hold index {idx} "
                          f"in term {e.term} but differ before it", group_id)
                break
        g.chains[source] = _Chain(start, entries, hashes)


def check_invariants(cluster: CheckedCluster) -> None:
    """Check every invariant of every group of ``cluster``; raise the first violation.

    Call it between steps (the harness's state machine calls it after every rule).  Checks
    that can be made the moment something happens have already run in the cluster's hooks;
    this adds the whole-cluster ones (Log Matching over every live and durable log, Leader
    Completeness of past leaders) and raises :class:`InvariantViolation` if anything broke.
    """
    cluster.checker.check()


# -- formatting ---------------------------------------------------------------------------------
def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:
        return 0.0


def _common_prefix(a: Sequence[LogEntry], b: Sequence[LogEntry]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] is not b[i] and a[i] != b[i]:
            return i
    return n


def _show(item: Item | None) -> str:
    if item is None:
        return "nothing"
    kind, data = item
    if kind == "app":
        return repr(data)
    return "a configuration"


def _show_entry(entry: LogEntry) -> str:
    if entry.type == LogType.APP:
        return f"{entry.buffer!r}@t{entry.term}"
    return f"{entry.type.name.lower()}@t{entry.term}"

