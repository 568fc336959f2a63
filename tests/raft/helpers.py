"""Small builders for the core's paper tests.

Two levels of driving, as in etcd's ``raft_paper_test.go``:

* one :class:`RaftNode` stepped by hand (``node``, ``flush``, ``drain``, ``elect``): for claims
  about exactly which message a node sends in answer to which input;
* :class:`CoreCluster` (``cluster``, ``deliver_only``, ``deliver_matching``, ``settle``): for
  claims about several nodes, with the SafetyChecker watching.

Indices and terms follow the paper; ``log_terms(1, 1, 2)`` is a log whose entries 1..3 have
terms 1, 1 and 2 (etcd's ``index(1).terms(1, 1, 2)``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.ready import CommittedEntry, Event, Ready, TimerCommand
from nuraft_mesg.raft.types import (
    ClusterConfig,
    HardState,
    LogEntry,
    LogType,
    Message,
    MsgType,
    ServerConfig,
)
from nuraft_mesg.testing.core_cluster import CoreCluster

__all__ = [
    "Out",
    "ack_all",
    "append_req",
    "append_resp",
    "boot_with_config",
    "cluster",
    "config",
    "deliver_counting",
    "deliver_matching",
    "deliver_only",
    "drain",
    "elect",
    "flush",
    "log_terms",
    "node",
    "of_type",
    "params",
    "settle",
    "vote_req",
]


def params(**kw: object) -> RaftParams:
    """RaftParams with check-quorum on (the default) and round numbers: heartbeat 100 ms,
    election timeout 200..400 ms, so one election timeout is 2..4 heartbeat ticks."""
    return RaftParams(**kw)  # type: ignore[arg-type]


def config(
    voters: Iterable[int] = (1, 2, 3),
    *,
    learners: Iterable[int] = (),
    priorities: dict[int, int] | None = None,
) -> ClusterConfig:
    prio = priorities or {}
    servers = [ServerConfig(i, f"node-{i}", priority=prio.get(i, 1)) for i in voters]
    servers += [ServerConfig(i, f"node-{i}", learner=True, priority=prio.get(i, 1))
                for i in learners]
    return ClusterConfig(tuple(sorted(servers, key=lambda s: s.id)))


def log_terms(*terms: int) -> list[LogEntry]:
    """APP entries with the given terms (their payload names their position)."""
    return [LogEntry(t, LogType.APP, b"e%d" % i) for i, t in enumerate(terms, 1)]


def node(
    node_id: int = 1,
    cfg: ClusterConfig | None = None,
    *,
    prm: RaftParams | None = None,
    term: int = 0,
    vote: int = -1,
    commit: int = 0,
    entries: Iterable[LogEntry] = (),
    log_start_index: int = 1,
    log_boundary_term: int = 0,
    seed: int = 0,
    boot: bool = True,
) -> RaftNode:
    """A node booted from the given durable state, its first (timer-arming) Ready consumed
    unless ``boot`` is False."""
    n = RaftNode(
        node_id,
        prm or params(),
        config=cfg or config(),
        hard_state=HardState(term, vote, commit),
        entries=list(entries),
        log_start_index=log_start_index,
        log_boundary_term=log_boundary_term,
        rng=random.Random(seed),
    )
    if boot:
        flush(n)
    return n


def flush(n: RaftNode) -> Ready:
    """One turn of the runtime loop: take the Ready, "persist" it, acknowledge it."""
    rd = n.ready()
    n.advance(rd)
    return rd


@dataclass
class Out:
    """Everything a node produced over several Ready turns, in order."""

    readies: list[Ready] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return [m for rd in self.readies for m in (*rd.messages, *rd.messages_after_persist)]

    @property
    def events(self) -> list[Event]:
        return [e for rd in self.readies for e in rd.events]

    @property
    def committed(self) -> list[CommittedEntry]:
        return [c for rd in self.readies for c in rd.committed]

    @property
    def election_timers(self) -> list[TimerCommand]:
        return [rd.election_timer for rd in self.readies if rd.election_timer is not None]

    def of_type(self, t: MsgType, *, dest: int | None = None) -> list[Message]:
        return of_type(self.messages, t, dest=dest)


def drain(n: RaftNode) -> Out:
    """Run the Ready loop until the node has nothing more to say."""
    out = Out()
    while n.has_ready():
        out.readies.append(flush(n))
    return out


def of_type(msgs: Iterable[Message], t: MsgType, *, dest: int | None = None) -> list[Message]:
    return [m for m in msgs if m.type == t and (dest is None or m.dest == dest)]


def vote_req(
    term: int, src: int, dest: int, *, last_term: int = 0, last_index: int = 0,
    pre: bool = False, entries: tuple[LogEntry, ...] = (),
) -> Message:
    t = MsgType.PRE_VOTE_REQUEST if pre else MsgType.REQUEST_VOTE_REQUEST
    return Message(t, term, src, dest, last_log_term=last_term, last_log_index=last_index,
                   entries=entries)


def append_req(
    term: int, src: int, dest: int, *, prev_index: int = 0, prev_term: int = 0,
    entries: Iterable[LogEntry] = (), commit: int = 0,
) -> Message:
    return Message(MsgType.APPEND_ENTRIES_REQUEST, term, src, dest, last_log_term=prev_term,
                   last_log_index=prev_index, commit_index=commit, entries=tuple(entries))


def append_resp(term: int, src: int, dest: int, *, next_index: int, accepted: bool = True,
                context: bytes = b"", read_id: int = 0) -> Message:
    return Message(MsgType.APPEND_ENTRIES_RESPONSE, term, src, dest, next_index=next_index,
                   accepted=accepted, context=context, read_id=read_id)


def elect(n: RaftNode) -> Out:
    """Make ``n`` leader by timing out and granting it every (pre-)vote it asks for.

    Returns what it produced after winning (its no-op appends).
    """
    n.election_timeout()
    for _ in range(4):
        out = drain(n)
        for m in out.messages:
            if m.type == MsgType.PRE_VOTE_REQUEST:
                n.step(Message(MsgType.PRE_VOTE_RESPONSE, m.term, m.dest, n.id, accepted=True))
            elif m.type == MsgType.REQUEST_VOTE_REQUEST:
                n.step(Message(MsgType.REQUEST_VOTE_RESPONSE, m.term, m.dest, n.id,
                               accepted=True))
        if n.is_leader:
            return drain(n)
    raise AssertionError(f"node {n.id} did not win its election")


def ack_all(n: RaftNode, peers: Iterable[int]) -> Out:
    """Every listed follower acknowledges the leader's whole log."""
    for p in peers:
        n.step(append_resp(n.term, p, n.id, next_index=n.log.last_index + 1))
    return drain(n)


# -- CoreCluster helpers ----------------------------------------------------------------------
def cluster(ids: Iterable[int] = (1, 2, 3), **kw: object) -> CoreCluster:
    return CoreCluster(ids, **kw)  # type: ignore[arg-type]


def deliver_only(c: CoreCluster, keep: Callable[[Message], bool], *, max_steps: int = 10_000
                 ) -> list[Message]:
    """Deliver (FIFO) the in-flight messages ``keep`` accepts and drop the others, until the
    bag is empty.  Returns the delivered messages."""
    delivered: list[Message] = []
    for _ in range(max_steps):
        if not c.bag:
            return delivered
        if keep(c.bag[0]):
            m = c.deliver(0)
            assert m is not None
            delivered.append(m)
        else:
            c.drop(0)
        if not c.auto_persist:
            for i in c.nodes:
                c.persist(i)
    raise AssertionError("deliver_only did not quiesce")


def deliver_counting(c: CoreCluster, *, max_steps: int = 100_000) -> list[Message]:
    """deliver_all, returning every message that was in flight (delivered or cut)."""
    return deliver_only(c, lambda m: True, max_steps=max_steps)


def settle(c: CoreCluster, *, max_steps: int = 100_000) -> None:
    """Persist every pending Ready and deliver every message until nothing is left.

    Unlike ``CoreCluster.deliver_all`` this also completes writes when the bag is empty, which
    an ``auto_persist=False`` cluster needs (there, a node's messages wait for its write).
    """
    for _ in range(max_steps):
        progressed = False
        for i in c.nodes:
            progressed |= c.persist(i)
        if c.bag:
            c.deliver(0)
            progressed = True
        if not progressed:
            return
    raise AssertionError("settle did not quiesce")


def boot_with_config(c: CoreCluster, cfg: ClusterConfig) -> CoreCluster:
    """Reboot every node of a fresh cluster with ``cfg`` as its stored configuration (for
    learners, which CoreCluster's constructor does not describe)."""
    for i, n in c.nodes.items():
        c.crash(i)
        n.durable.config = cfg
        c.restart(i)
    return c


def deliver_matching(c: CoreCluster, pred: Callable[[Message], bool], *,
                     max_steps: int = 10_000) -> list[Message]:
    """Deliver the in-flight messages ``pred`` accepts (and those they cause), leaving the
    others in flight, delayed.  Returns the delivered messages."""
    delivered: list[Message] = []
    for _ in range(max_steps):
        k = next((k for k, m in enumerate(c.bag) if pred(m)), None)
        if k is None:
            return delivered
        m = c.deliver(k)
        assert m is not None
        delivered.append(m)
    raise AssertionError("deliver_matching did not quiesce")
