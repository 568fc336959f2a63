"""A deterministic cluster of sans-IO cores joined by an in-memory message bag.

No trio, no clock: a test decides which message is delivered, dropped or duplicated, which
timer fires and when a node's storage write completes.  That makes every interleaving
reachable and every run reproducible, at thousands of steps per second.

Each node has a :class:`DurableState` that survives :meth:`CoreCluster.crash`: exactly what
the node's runtime would have written to disk.  A node's Ready is persisted only when the
test says so (:meth:`CoreCluster.persist`), so a crash can land between a decision and its
fsync; ``auto_persist=True`` persists at once, for tests that do not care.

:class:`SafetyChecker` watches everything the cluster does and raises :class:`SafetyViolation`
(with the recent history) the moment one of Raft's invariants breaks.

With ``RaftParams.snapshot_distance > 0`` the cluster also plays a snapshotting state machine:
a node's state is the list of entries it applied, a snapshot is that list (durable, in
:class:`DurableState`), sent in objects of ``snapshot_chunk`` entries; staged objects live in
memory and are lost on a crash.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nuraft_mesg.raft.node import Proposal, RaftNode, Role
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import Event, ReadFailure, ReadState, Ready, SnapshotChunk
from nuraft_mesg.raft.snapshot import decode_snapshot_reply
from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    LogType,
    Message,
    MsgType,
    ServerConfig,
    SnapshotMeta,
)

__all__ = ["CoreCluster", "DurableState", "SafetyChecker", "SafetyViolation", "SimNode"]


class SafetyViolation(AssertionError):
    """A Raft invariant broke.  The message names it and shows the recent history."""


@dataclass
class DurableState:
    """What one node has on disk."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[LogEntry] = field(default_factory=list)
    start_index: int = 1
    config: ClusterConfig = field(default_factory=ClusterConfig)
    boundary_term: int = 0
    snapshot: SnapshotMeta | None = None
    snapshot_applied: list[tuple[int, LogEntry]] = field(default_factory=list)
    """The state machine's state in ``snapshot``: every entry applied up to it."""

    def term_at(self, index: int) -> int | None:
        if index == self.start_index - 1:
            return self.boundary_term
        off = index - self.start_index
        if 0 <= off < len(self.entries):
            return self.entries[off].term
        return None

    @property
    def last_index(self) -> int:
        return self.start_index + len(self.entries) - 1

    def compact(self, index: int, term: int) -> None:
        """LogStore.compact, after dropping a held entry at ``index`` of another term."""
        if self.start_index <= index <= self.last_index and self.term_at(index) != term:
            del self.entries[index - self.start_index :]
        if index < self.start_index:
            return
        self.entries = self.entries[index + 1 - self.start_index :]
        self.start_index = index + 1
        self.boundary_term = term

    def write(self, rd: Ready) -> None:
        if rd.snapshot_to_install is not None:
            meta = rd.snapshot_to_install
            self.compact(meta.last_index, meta.last_term)
        if rd.compact_to:
            self.compact(rd.compact_to, rd.compact_term)
        if rd.truncate_from:
            del self.entries[rd.truncate_from - self.start_index :]
        if rd.entries:
            if rd.first_index != self.last_index + 1:
                raise SafetyViolation(
                    f"runtime contract: write at {rd.first_index} after {self.last_index}"
                )
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.config_to_save is not None:
            self.config = rd.config_to_save


@dataclass
class SimNode:
    id: int
    durable: DurableState
    core: RaftNode | None = None
    pending: Ready | None = None
    applied: list[tuple[int, LogEntry]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    staged: list[bytes] = field(default_factory=list)  # snapshot objects received (in memory)
    staged_meta: SnapshotMeta | None = None
    read_states: list[ReadState] = field(default_factory=list)
    """Reads released by this incarnation's Readies (serve each once applied >= index)."""
    read_failures: list[ReadFailure] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.core is not None


class CoreCluster:
    """N cores, a bag of in-flight messages, durable state per node, and a safety checker."""

    def __init__(
        self,
        ids: Iterable[int] = (1, 2, 3),
        *,
        params: RaftParams | None = None,
        seed: int = 0,
        auto_persist: bool = True,
        members: Iterable[int] | None = None,
        priorities: dict[int, int] | None = None,
        node_factory: Callable[..., RaftNode] = RaftNode,
        snapshot_chunk: int = 2,
    ) -> None:
        self.params = params or RaftParams()
        self.snapshot_chunk = snapshot_chunk  # entries per snapshot object
        self.rng = random.Random(seed)
        self.auto_persist = auto_persist
        self.node_factory = node_factory
        ids = list(ids)
        member_ids = list(members) if members is not None else ids
        prio = priorities or {}
        config = ClusterConfig(
            tuple(ServerConfig(i, f"node-{i}", priority=prio.get(i, 1)) for i in member_ids)
        )
        self.nodes: dict[int, SimNode] = {}
        self.bag: list[Message] = []
        self.cut: set[tuple[int, int]] = set()  # (src, dest) pairs that drop everything
        self.proposals: list[Proposal] = []
        self.now = 0.0
        """The runtime's clock (seconds) handed to heartbeats and reads; tests move it."""
        self.checker = SafetyChecker(self)
        for i in ids:
            # Non-members start knowing nothing (they are invited later with join_cluster).
            cfg = config if i in member_ids else ClusterConfig()
            self.nodes[i] = SimNode(i, DurableState(config=cfg))
            self._boot(i)

    # -- lifecycle ---------------------------------------------------------------------------
    def _boot(self, i: int) -> None:
        n = self.nodes[i]
        d = n.durable
        # The in-memory state machine restarts from its snapshot (or empty) and re-applies.
        snap: dict[str, object] = {}
        if d.boundary_term:  # (tests may hand the boundary term to node_factory instead)
            snap["log_boundary_term"] = d.boundary_term
        if d.snapshot is not None:
            snap.update(snapshot=d.snapshot, applied_index=d.snapshot.last_index)
        n.core = self.node_factory(
            i,
            self.params,
            config=d.config,
            hard_state=d.hard_state,
            entries=list(d.entries),
            log_start_index=d.start_index,
            rng=random.Random(self.rng.random()),
            **snap,
        )
        n.pending = None
        n.read_states, n.read_failures = [], []
        n.applied = list(d.snapshot_applied) if d.snapshot is not None else []
        n.staged, n.staged_meta = [], None
        self._pump(i)

    def crash(self, i: int) -> None:
        """Lose everything node ``i`` had not persisted (including an unwritten Ready)."""
        n = self.nodes[i]
        n.core = None
        n.pending = None
        self.checker.log(f"crash {i}")

    def restart(self, i: int) -> None:
        if self.nodes[i].alive:
            return
        self.checker.log(f"restart {i}")
        self._boot(i)

    def core(self, i: int) -> RaftNode:
        c = self.nodes[i].core
        if c is None:
            raise KeyError(f"node {i} is down")
        return c

    # -- the Ready cycle ---------------------------------------------------------------------
    def _pump(self, i: int) -> None:
        """Take the next Ready if the previous one is done; send what may leave now."""
        n = self.nodes[i]
        core = n.core
        while core is not None and n.pending is None and core.has_ready():
            rd = core.ready()
            n.pending = rd
            for m in rd.messages:
                self._send(i, m)
            n.events.extend(rd.events)
            n.read_states.extend(rd.read_states)
            n.read_failures.extend(rd.read_failures)
            self.on_ready(i, rd)
            if not self.auto_persist:
                break
            self.persist(i)
        self.checker.observe(i)

    def on_ready(self, i: int, rd: Ready) -> None:
        """Node ``i`` produced ``rd`` (a hook for subclasses, e.g. to follow its timers)."""

    def persist(self, i: int) -> bool:
        """Node ``i``'s storage write completes: persist, send the rest, apply, advance."""
        n = self.nodes[i]
        rd = n.pending
        core = n.core
        if rd is None or core is None:
            return False
        reads = [(r, self._read_snapshot(n, r.meta, r.obj_id)) for r in rd.snapshot_reads]
        for chunk in rd.snapshot_chunks:
            self._stage_snapshot(n, chunk)
        if rd.snapshot_to_install is not None:
            self._install_snapshot(n, rd.snapshot_to_install)
        n.durable.write(rd)
        for m in rd.messages_after_persist:
            self.checker.check_after_persist(i, m)
            self._send(i, m)
        for ce in rd.committed:
            self.checker.on_apply(i, ce.index, ce.entry)
            n.applied.append((ce.index, ce.entry))
        snapshot = self._maybe_snapshot(n, core) if rd.committed else None
        n.pending = None
        core.advance(rd)
        for r, (data, is_last) in reads:
            core.send_snapshot_chunk(r.peer, r.meta, r.obj_id, data, is_last)
        if snapshot is not None:
            core.snapshot_taken(snapshot)
        if not self.auto_persist:
            self._pump(i)
        return True

    # -- the stand-in state machine's snapshots ----------------------------------------------
    def _maybe_snapshot(self, n: SimNode, core: RaftNode) -> SnapshotMeta | None:
        distance = self.params.snapshot_distance
        d = n.durable
        applied = n.applied[-1][0] if n.applied else 0
        base = d.snapshot.last_index if d.snapshot is not None else 0
        if distance <= 0 or applied - base < distance:
            return None
        meta = core.snapshot_meta(applied)
        d.snapshot, d.snapshot_applied = meta, list(n.applied)
        self.checker.log(f"snapshot {n.id} at {applied}")
        return meta

    def _read_snapshot(self, n: SimNode, meta: SnapshotMeta, obj_id: int) -> tuple[bytes, bool]:
        d = n.durable
        if d.snapshot != meta:
            raise SafetyViolation(f"runtime contract: node {n.id} asked to read snapshot "
                                  f"{meta.last_index}, has {d.snapshot}")
        size = self.snapshot_chunk
        part = d.snapshot_applied[obj_id * size : (obj_id + 1) * size]
        if obj_id > 0 and not part:
            raise SafetyViolation(f"runtime contract: node {n.id} read object {obj_id} beyond "
                                  f"the end of snapshot {meta.last_index}")
        data = json.dumps([[i, e.term, int(e.type), e.buffer.hex(), e.timestamp]
                           for i, e in part]).encode()
        return data, (obj_id + 1) * size >= len(d.snapshot_applied)

    def _stage_snapshot(self, n: SimNode, chunk: SnapshotChunk) -> None:
        if chunk.is_first:
            n.staged, n.staged_meta = [], chunk.meta
        if n.staged_meta != chunk.meta or len(n.staged) != chunk.obj_id:
            raise SafetyViolation(f"runtime contract: node {n.id} staged object {chunk.obj_id} "
                                  f"of {chunk.meta.last_index} out of order")
        n.staged.append(chunk.data)

    def _install_snapshot(self, n: SimNode, meta: SnapshotMeta) -> None:
        if n.staged_meta != meta:
            raise SafetyViolation(f"runtime contract: node {n.id} installs snapshot "
                                  f"{meta.last_index} it has not staged")
        state = [(int(i), LogEntry(t, LogType(ty), bytes.fromhex(b), ts))
                 for part in n.staged for i, t, ty, b, ts in json.loads(part)]
        if [i for i, _ in state] != list(range(1, meta.last_index + 1)):
            raise SafetyViolation(f"node {n.id}: snapshot {meta.last_index} is not the entries "
                                  "1..last_index")
        done = n.applied[-1][0] if n.applied else 0
        for index, entry in state[done:]:
            self.checker.on_apply(n.id, index, entry)
        n.applied = state
        n.durable.snapshot, n.durable.snapshot_applied = meta, list(state)
        n.staged, n.staged_meta = [], None
        self.checker.log(f"install {n.id} snapshot {meta.last_index}")

    def _send(self, src: int, m: Message) -> None:
        self.checker.check_sent(src, m)
        self.bag.append(m)

    # -- network -----------------------------------------------------------------------------
    def deliver(self, k: int = 0, *, keep: bool = False) -> Message | None:
        """Deliver the ``k``-th in-flight message (``keep`` leaves a copy: a duplicate)."""
        if not self.bag:
            return None
        m = self.bag[k] if keep else self.bag.pop(k)
        if (m.src, m.dest) in self.cut or m.dest not in self.nodes:
            return m
        n = self.nodes[m.dest]
        if n.core is None:
            return m
        n.core.step(m)
        self._pump(m.dest)
        return m

    def drop(self, k: int = 0) -> Message | None:
        return self.bag.pop(k) if self.bag else None

    def deliver_all(self, *, max_steps: int = 100_000) -> int:
        """Deliver (FIFO) until the bag is empty; returns how many were delivered.

        Without auto_persist, every pending storage write completes before each delivery and
        at the end, so messages that wait for a write (votes, acknowledgements) leave too and
        the cluster really goes quiet."""
        count = 0
        while True:
            if not self.auto_persist:
                self.persist_all()
            if not self.bag or count >= max_steps:
                return count
            self.deliver(0)
            count += 1

    def persist_all(self, *, max_rounds: int = 1000) -> None:
        """Complete every pending storage write, and those the completions lead to."""
        for _ in range(max_rounds):
            if not any([self.persist(i) for i in self.nodes]):
                return

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups (nodes in no group are isolated)."""
        sets = [set(g) for g in groups]
        def side(i: int) -> int:
            for k, s in enumerate(sets):
                if i in s:
                    return k
            return -1 - i
        self.cut = {(a, b) for a in self.nodes for b in self.nodes if side(a) != side(b)}
        self.checker.log(f"partition {[sorted(s) for s in sets]}")

    def isolate(self, i: int) -> None:
        self.cut |= {(i, j) for j in self.nodes if j != i} | {(j, i) for j in self.nodes if j != i}
        self.checker.log(f"isolate {i}")

    def heal(self) -> None:
        self.cut = set()
        self.checker.log("heal")

    # -- inputs ------------------------------------------------------------------------------
    def election_timeout(self, i: int) -> None:
        n = self.nodes[i]
        if n.core is not None:
            n.core.election_timeout()
            self._pump(i)

    def heartbeat(self, i: int) -> None:
        n = self.nodes[i]
        if n.core is not None:
            n.core.heartbeat_timeout(self.now)
            self._pump(i)

    def propose(self, i: int, data: bytes) -> Proposal:
        """Propose on node ``i`` (raises NotLeader like the core)."""
        prop = self.core(i).propose([data])
        self.proposals.append(prop)
        self._pump(i)
        return prop

    def read(self, i: int, ctx: int, *, lease: bool = False) -> None:
        """Queue read ``ctx`` on node ``i`` at ``self.now`` (raises like the core)."""
        self.core(i).read_index(ctx, lease=lease, now=self.now)
        self._pump(i)

    def applied_index(self, i: int) -> int:
        n = self.nodes[i]
        return n.applied[-1][0] if n.applied else 0

    def do(self, i: int, fn: Callable[[RaftNode], object]) -> object:
        """Run a local request (add_server, yield_leadership, ...) on node ``i`` and pump."""
        result = fn(self.core(i))
        self._pump(i)
        return result

    # -- queries -----------------------------------------------------------------------------
    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.core is not None and n.core.is_leader]

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for i in self.leaders():
            t = self.core(i).term
            if best is None or t > best[0]:
                best = (t, i)
        return None if best is None else best[1]

    def elect(self, i: int, *, max_rounds: int = 20) -> None:
        """Make ``i`` campaign and deliver until it leads (test convenience)."""
        for _ in range(max_rounds):
            self.election_timeout(i)
            self.deliver_all()
            if self.nodes[i].alive and self.core(i).is_leader:
                return
        raise AssertionError(f"node {i} did not become leader")

    def stabilize(self, rounds: int = 3) -> None:
        """Heartbeat the leaders and deliver everything, a few times."""
        for _ in range(rounds):
            for i in self.leaders():
                self.heartbeat(i)
            self.deliver_all()

    def applied_data(self, i: int) -> list[bytes]:
        return [e.buffer for _, e in self.nodes[i].applied if e.type == LogType.APP]

    def wait_leader_liveness(self, *, max_rounds: int = 200) -> int:
        """Liveness: with the network healed and every node up, some leader commits a new
        entry within a bounded number of rounds.  Returns the rounds it took."""
        self.heal()
        for i in self.nodes:
            self.restart(i)
        rng = random.Random(self.rng.random())
        marker = b"liveness-%d" % rng.randrange(1 << 30)
        proposal: Proposal | None = None
        for rnd in range(max_rounds):
            for i in self.nodes:
                self.persist(i)
            self.deliver_all()
            lead = self.leader()
            if lead is None or not self.core(lead).is_leader:
                order = list(self.nodes)
                rng.shuffle(order)
                for i in order:
                    self.election_timeout(i)
                    self.deliver_all()
                    if self.leader() is not None:
                        break
                continue
            core = self.core(lead)
            if proposal is None or proposal.term != core.term:
                try:
                    proposal = self.propose(lead, marker)
                except Exception:  # transfer in progress etc.: next round
                    proposal = None
            self.heartbeat(lead)
            self.deliver_all()
            # (Compacted into a snapshot by the leader that made it: committed, and ours.)
            if proposal is not None and core.commit >= proposal.last_index and core.log.term_at(
                proposal.last_index
            ) in (proposal.term, None):
                return rnd
        raise AssertionError(f"no leader committed a new entry within {max_rounds} rounds\n"
                             + self.checker.render_history())


class SafetyChecker:
    """Raft's invariants (Raft paper, Figure 3), checked after every step."""

    def __init__(self, cluster: CoreCluster) -> None:
        self.cluster = cluster
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, LogEntry] = {}
        # Lowest term of a node seen holding each index committed: >= the term in which it
        # was committed, so every leader of that term or later must hold it.
        self.commit_term: dict[int, int] = {}
        self.applied: dict[int, LogEntry] = {}
        self.leader_logs: dict[tuple[int, int], list[LogEntry]] = {}
        self.leader_log_starts: dict[tuple[int, int], int] = {}
        self.last_term: dict[int, int] = {}
        self.last_durable_term: dict[int, int] = {}
        self.history: deque[str] = deque(maxlen=40)

    def log(self, line: str) -> None:
        self.history.append(line)

    def render_history(self) -> str:
        return "recent history:\n  " + "\n  ".join(self.history)

    def fail(self, what: str) -> None:
        raise SafetyViolation(f"{what}\n{self.render_history()}")

    def check_sent(self, src: int, m: Message) -> None:
        self.log(_describe(m))
        n = self.cluster.nodes[src]
        durable = n.durable.hard_state.term
        # Nothing leaves in a term the sender has not persisted (pre-votes excepted: they
        # ask about a future term and promise nothing).
        pre_vote = m.type in (MsgType.PRE_VOTE_REQUEST, MsgType.PRE_VOTE_RESPONSE)
        termless = m.type == MsgType.APPEND_ENTRIES_RESPONSE and not m.accepted and m.term == 0
        if not pre_vote and not termless and m.term > durable:
            self.fail(f"node {src} sent {m.type.name} in term {m.term} before persisting "
                      f"its term (durable term {durable})")
        # A vote or an acknowledgement must be durable whenever it leaves, even if a core
        # put it among the messages that may leave before the fsync.
        self.check_after_persist(src, m)

    def check_after_persist(self, src: int, m: Message) -> None:
        d = self.cluster.nodes[src].durable
        if m.type == MsgType.REQUEST_VOTE_RESPONSE and m.accepted:
            # The promise is "no other vote in term m.term, even after a crash": kept by a
            # durable vote for m.dest in that term, or by a durable later term (the node
            # moved on before the grant's write, so the grant's own state never hit disk).
            hs = d.hard_state
            if hs.term < m.term or (hs.term == m.term and hs.vote != m.dest):
                self.fail(f"node {src} granted a vote to {m.dest} in term {m.term} without "
                          f"persisting it ({d.hard_state})")
        # Likewise an acknowledgement made in term m.term is moot once a later term is durable:
        # entries only leave a log when a leader of a later term replaces them, and then the
        # disk holds exactly what the node would hold had it not crashed.
        acked = m.next_index - 1
        if (m.type == MsgType.APPEND_ENTRIES_RESPONSE and m.accepted
                and d.hard_state.term <= m.term and d.last_index < acked):
            self.fail(f"node {src} acknowledged index {acked} but has only "
                      f"{d.last_index} on disk")
        reply = decode_snapshot_reply(m.context)
        if m.type == MsgType.INSTALL_SNAPSHOT_RESPONSE and m.accepted and reply is not None:
            # "Done": the snapshot is durably installed, or committed here already.
            held = max(d.snapshot.last_index if d.snapshot is not None else 0,
                       d.hard_state.commit)
            if reply[1] and held < reply[0]:
                self.fail(f"node {src} reported snapshot {reply[0]} installed but holds only "
                          f"{held} durably")

    def on_apply(self, i: int, index: int, entry: LogEntry) -> None:
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = entry
        elif seen != entry:
            self.fail(f"State Machine Safety: node {i} applied {entry} at {index}, "
                      f"another node applied {seen}")
        core = self.cluster.nodes[i].core
        if core is not None and index > core.commit:
            self.fail(f"node {i} applied index {index} beyond its commit {core.commit}")

    def observe(self, i: int) -> None:
        n = self.cluster.nodes[i]
        core = n.core
        if core is None:
            return
        # Terms never decrease, even across restarts (the durable one).
        if core.term < self.last_term.get(i, 0) and n.durable.hard_state.term < self.last_term[i]:
            self.fail(f"node {i}'s term went back from {self.last_term[i]} to {core.term}")
        self.last_term[i] = max(self.last_term.get(i, 0), n.durable.hard_state.term)
        # Election Safety.
        if core.role == Role.LEADER:
            other = self.leader_of_term.setdefault(core.term, i)
            if other != i:
                self.fail(f"Election Safety: nodes {other} and {i} both led term {core.term}")
            # Leader Append-Only.
            key = (i, core.term)
            start = core.log.start_index
            entries = core.log.slice(start, core.log.last_index + 1)
            before = self.leader_logs.get(key)
            if before is not None:
                # Entries compacted since (into a snapshot) are compared no more.
                before = before[start - self.leader_log_starts.get(key, 1) :]
            if before is not None and entries[: len(before)] != before:
                self.fail(f"Leader Append-Only: leader {i} of term {core.term} rewrote its log")
            self.leader_logs[key] = entries
            self.leader_log_starts[key] = start
            # Leader Completeness: an entry committed in term T is in every leader of a term
            # >= T.  (Not "of a term >= the entry's term": a stale leader of a term between
            # the two may legitimately lack it, as S5 in the paper's Figure 8.)
            for idx, entry in self.committed.items():
                if idx < core.log.boundary_index:
                    continue  # in its snapshot (checked when a snapshot is installed)
                if self.commit_term[idx] <= core.term and core.log.term_at(idx) != entry.term:
                    self.fail(f"Leader Completeness: leader {i} of term {core.term} lacks "
                              f"committed entry {idx} (term {entry.term})")
        # Record committed entries.
        for idx in range(max(core.log.start_index, 1), core.commit + 1):
            entry = core.log.entry(idx)
            seen = self.committed.get(idx)
            if seen is None:
                self.committed[idx] = entry
            elif seen != entry:
                self.fail(f"two different entries committed at {idx}: {seen} vs {entry} "
                          f"(node {i})")
            if core.term < self.commit_term.get(idx, core.term + 1):
                self.commit_term[idx] = core.term
        self.check_log_matching()

    def check_log_matching(self) -> None:
        """If two logs have an entry with the same index and term, they are identical up to
        there (Log Matching)."""
        cores = [(i, n.core) for i, n in self.cluster.nodes.items() if n.core is not None]
        for a in range(len(cores)):
            for b in range(a + 1, len(cores)):
                (ia, ca), (ib, cb) = cores[a], cores[b]
                top = min(ca.log.last_index, cb.log.last_index)
                low = max(ca.log.start_index, cb.log.start_index)
                idx = top
                while idx >= low and ca.log.term_at(idx) != cb.log.term_at(idx):
                    idx -= 1
                if idx >= low and ca.log.slice(low, idx + 1) != cb.log.slice(low, idx + 1):
                    self.fail(f"Log Matching: nodes {ia} and {ib} agree on the term at {idx} "
                              "but not on the entries before it")


def _describe(m: Message) -> str:
    name = m.type.name.lower().replace("_request", "").replace("_response", "-resp")
    extra = ""
    if m.type.is_request:
        extra = f" prev={m.last_log_index}/{m.last_log_term} commit={m.commit_index}"
        if m.entries:
            extra += f" entries={len(m.entries)}@{m.entries[-1].term}"
    else:
        extra = f" ok={m.accepted} next={m.next_index}"
    return f"{m.src}->{m.dest} {name} t{m.term}{extra}"
