"""One simulated node of a :class:`~.cluster.SimCluster`: what it persisted and how it
reports to the checker.

* :class:`SimDisk` is one node's durable state of one group (hard state, configuration, log);
  it outlives the node's Managers, which is what a crash and restart rely on.
* :class:`RecordingStateMachine` wraps the application's state machine and reports each apply.
* :class:`SimStateManager` is one life of a group on a node: a disk plus a state machine,
  reporting saves, events and applies to the cluster through :class:`ClusterHooks`.
* :class:`SimNode` is the node's record; :class:`Write` and :class:`Operation` are the
  records of client requests.

Kept apart from the cluster so that the cluster module is about orchestration (start, crash,
partition, write) and this one about a node's storage; :class:`ClusterHooks` is the narrow
view of the cluster a state manager needs, so this module does not import the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from nuraft_mesg.manager import Manager
from nuraft_mesg.raft.node import RaftNode
from nuraft_mesg.raft.ready import Event
from nuraft_mesg.raft.types import ClusterConfig, HardState, LogEntry, ServerConfig, SnapshotMeta
from nuraft_mesg.storage.interfaces import LogStore, StateMachine, StateManager
from nuraft_mesg.storage.memory import MemoryLogStore
from nuraft_mesg.testing.checkers import ClusterChecker

__all__ = [
    "ClusterHooks",
    "Operation",
    "RecordingStateMachine",
    "SimDisk",
    "SimLogStore",
    "SimNode",
    "SimStateManager",
    "Write",
]


class ClusterHooks(Protocol):
    """What a :class:`SimStateManager` reports to (a :class:`~.cluster.SimCluster`)."""

    @property
    def checker(self) -> ClusterChecker: ...
    def group_name(self, group_id: str) -> str: ...
    def _disk_latency(self) -> float: ...
    def _on_leave(self, node: SimNode, group_id: str) -> None: ...
    def _on_event(self, node: SimNode, group_id: str, event: Event) -> None: ...


class SimLogStore(MemoryLogStore):
    """A MemoryLogStore whose writes take a (simulated) moment, so crashes land mid-write."""

    __slots__ = ("_latency",)

    def __init__(self, latency: Callable[[], float]) -> None:
        super().__init__()
        self._latency = latency

    async def write(
        self, first_index: int, entries: Sequence[LogEntry], *, truncate_from: int = 0
    ) -> None:
        delay = self._latency()
        if delay > 0:
            await trio.sleep(delay)
        await super().write(first_index, entries, truncate_from=truncate_from)


@dataclass(eq=False)
class SimDisk:
    """What one node persisted for one group.  Outlives the node's Managers."""

    node: str
    group_id: str
    generation: int
    """Bumped when the group is destroyed here and later created again."""
    server_id: int
    endpoint: str
    log: SimLogStore
    hard_state: HardState | None = None
    config: ClusterConfig | None = None
    destroyed: bool = False

    @property
    def initial_config(self) -> ClusterConfig:
        return ClusterConfig((ServerConfig(self.server_id, self.endpoint),))

    def entries(self) -> tuple[int, list[LogEntry]]:
        start = self.log.start_index()
        return start, self.log.entries(start, self.log.next_slot())


class RecordingStateMachine(StateMachine):
    """Wraps the application's state machine and reports every apply to ``on_apply``
    (``("snapshot", b"")`` at ``meta.last_index`` when a snapshot replaces the state).  Every
    other method of the interface, snapshot hooks included, goes to the wrapped machine."""

    __slots__ = ("inner", "_on_apply")

    def __init__(self, inner: StateMachine,
                 on_apply: Callable[[int, tuple[str, bytes]], None]) -> None:
        self.inner = inner
        self._on_apply = on_apply

    def commit(self, index: int, data: bytes) -> bytes:
        self._on_apply(index, ("app", data))
        return self.inner.commit(index, data)

    def commit_config(self, index: int, config: ClusterConfig) -> None:
        self._on_apply(index, ("config", config.encode()))
        self.inner.commit_config(index, config)

    def last_commit_index(self) -> int:
        return self.inner.last_commit_index()

    @property
    def supports_snapshots(self) -> bool:
        return self.inner.supports_snapshots

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        self.inner.apply_snapshot(meta)
        self._on_apply(meta.last_index, ("snapshot", b""))


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RecordingStateMachine, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


# Whatever else the interface offers (the snapshot hooks, and any hook added later) is the
# wrapped machine's.
for _name, _member in vars(StateMachine).items():
    if (callable(_member) and not _name.startswith("_")
            and _name not in vars(RecordingStateMachine)):
        setattr(RecordingStateMachine, _name, _delegate(_name))


class SimStateManager(StateManager):
    """One life of one group on one node: a :class:`SimDisk` plus a state machine."""

    def __init__(self, cluster: ClusterHooks, node: SimNode, disk: SimDisk,
                 state_machine: StateMachine, life: int) -> None:
        self.cluster = cluster
        self.node = node
        self.disk = disk
        self.life = life
        self.inner_state_machine = state_machine
        self.state_machine = RecordingStateMachine(state_machine, self._applied)
        # A durable (or snapshot-restored) state machine resumes after what it holds.
        self.resume_from = state_machine.last_commit_index()

    def _applied(self, index: int, item: tuple[str, bytes]) -> None:
        core = self.node.cores.get(self.disk.group_id)
        self.cluster.checker.on_apply(self.node.name, self.disk.group_id, self.life, index,
                                      item, core, resume_from=self.resume_from)

    async def _latency(self) -> None:
        delay = self.cluster._disk_latency()
        if delay > 0:
            await trio.sleep(delay)

    def _check_alive(self, what: str) -> None:
        if self.disk.destroyed:
            raise RuntimeError(f"{what} on a destroyed state manager")

    @property
    def server_id(self) -> int:
        return self.disk.server_id

    def load_config(self) -> ClusterConfig:
        return self.disk.config if self.disk.config is not None else self.disk.initial_config

    async def save_config(self, config: ClusterConfig) -> None:
        await self._latency()
        self._check_alive("save_config")
        self.disk.config = config

    async def save_state(self, state: HardState) -> None:
        await self._latency()
        self._check_alive("save_state")
        self.cluster.checker.on_save_state(self.node.name, self.disk.group_id,
                                           self.disk.generation, state)
        self.disk.hard_state = state

    def read_state(self) -> HardState | None:
        return self.disk.hard_state

    def load_log_store(self) -> LogStore:
        self._check_alive("load_log_store")
        # The core is built from the log right after this (it cannot be built before), so
        # this is where the node's core factory learns which group it builds a core for.
        self.node.building = (self.disk.group_id, self)
        return self.disk.log

    def get_state_machine(self) -> StateMachine:
        return self.state_machine

    def permanent_destroy(self) -> None:
        self.disk.destroyed = True
        self.disk.hard_state = None
        self.disk.config = None
        self.disk.log = SimLogStore(self.cluster._disk_latency)
        self.cluster.checker.note(f"{self.node.name} destroyed its state of "
                                  f"{self.cluster.group_name(self.disk.group_id)}")

    def leave(self) -> None:
        self.cluster._on_leave(self.node, self.disk.group_id)

    def raft_event(self, event: Event) -> None:
        self.cluster._on_event(self.node, self.disk.group_id, event)

    def system_exit(self, error: BaseException) -> None:
        self.node.cores.pop(self.disk.group_id, None)
        self.cluster.checker.on_runtime_error(self.node.name, self.disk.group_id, error)


@dataclass(eq=False)
class SimNode:
    name: str
    uuid: str
    server_id: int
    core_factory: Callable[..., RaftNode]
    """Builds this node's cores (takes effect at the next start)."""
    manager: Manager | None = None
    incarnation: int = 0
    disks: dict[str, SimDisk] = field(default_factory=dict)
    state_managers: dict[str, SimStateManager] = field(default_factory=dict)
    cores: dict[str, RaftNode] = field(default_factory=dict)
    building: tuple[str, SimStateManager] | None = None
    scope: trio.CancelScope | None = None
    clients: trio.Nursery | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def up(self) -> bool:
        return self.manager is not None

    @property
    def mgr(self) -> Manager:
        if self.manager is None:
            raise RuntimeError(f"{self.name} is down")
        return self.manager

    def hosts(self, group_id: str) -> bool:
        return self.manager is not None and group_id in self.manager.group_ids

    def runs(self, manager: Manager) -> bool:
        """Whether ``manager`` is this node's current Manager (it did not crash since)."""
        return self.manager is manager

    def __repr__(self) -> str:
        return f"<SimNode {self.name} {'up' if self.up else 'down'}>"


@dataclass(eq=False)
class Write:
    """One client write and what became of it."""

    id: int
    group_id: str
    data: bytes
    via: str
    submitted: float
    status: str = "pending"
    """pending, acked, failed (refused, timed out, replaced) or crashed (the client's node
    crashed before an answer)."""
    error: str = ""
    result: bytes | None = None
    index: int | None = None
    """Where it was applied (acked writes)."""
    finished: float | None = None
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def acked(self) -> bool:
        return self.status == "acked"


@dataclass(eq=False)
class Operation:
    """A membership or leadership request running in the background."""

    label: str
    status: str = "pending"
    error: str = ""
    done: trio.Event = field(default_factory=trio.Event)
