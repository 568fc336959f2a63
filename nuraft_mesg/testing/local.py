"""A cluster of real Managers in one process, on loopback: for tests, the demo and the REPL.

Each node is a Manager with its own RaftStep server on 127.0.0.1 and an
:class:`~nuraft_mesg.app.InMemoryApplication`; all nodes share one peer directory.
:meth:`LocalCluster.kill` closes a node's Manager (its groups stop, its server closes);
:meth:`LocalCluster.restart` starts it again on the same uuid and port with the state its
state managers kept, and rejoins its groups.  With ``data_dir`` every node also runs the
durable default store (``ManagerConfig.data_dir = <data_dir>/<node name>``), so a restart
reloads the log, hard state and config from disk.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from nuraft_mesg.app import InMemoryApplication
from nuraft_mesg.manager import Manager, ManagerConfig
from nuraft_mesg.raft.params import RaftParams
from nuraft_mesg.raft.types import ClusterConfig, ServerConfig
from nuraft_mesg.storage.interfaces import StateMachine, StateManager
from nuraft_mesg.storage.memory import KVStateMachine, MemoryStateManager
from nuraft_mesg.transport.base import Transport

__all__ = ["LocalCluster", "LocalNode"]

FAST_PARAMS = RaftParams(heartbeat_interval_ms=50, election_timeout_ms=(150, 300))


class _PriorityApplication(InMemoryApplication):
    """An InMemoryApplication whose state managers start with a given own priority (as
    nuraft_mesg's test state manager starts with priority 100)."""

    def __init__(self, server_uuid: str, directory: dict[str, str], priority: int,
                 state_machine_factory: Callable[[], StateMachine] = KVStateMachine) -> None:
        super().__init__(server_uuid, directory, state_machine_factory=state_machine_factory)
        self.priority = priority

    def create_state_mgr(self, server_id: int, group_id: str) -> StateManager:
        smgr = self.state_managers.get(group_id)
        if smgr is None or smgr.destroyed:
            me = ServerConfig(server_id, self.server_uuid, priority=self.priority)
            smgr = MemoryStateManager(
                server_id,
                self.server_uuid,
                initial_config=ClusterConfig((me,)),
                state_machine=self.state_machine_factory(),
            )
            self.state_managers[group_id] = smgr
        return smgr


@dataclass
class LocalNode:
    name: str
    uuid: str
    app: InMemoryApplication
    port: int = 0
    manager: Manager | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def mgr(self) -> Manager:
        """The running Manager (raises if the node is down)."""
        if self.manager is None:
            raise RuntimeError(f"{self.name} is down")
        return self.manager

    @property
    def up(self) -> bool:
        return self.manager is not None


class LocalCluster:
    """N in-process nodes.  Use :meth:`open` as an async context manager."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        group_types: dict[str, RaftParams] | None = None,
        default_group_type: str = "test",
        configure: Callable[[ManagerConfig], ManagerConfig] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        transport_wrapper: Callable[[str, Transport], Transport] | None = None,
        state_machine_factory: Callable[[], StateMachine] = KVStateMachine,
    ) -> None:
        """``transport_wrapper(node_uuid, transport)``, when given, wraps each node's
        GrpcTransport (at every start), e.g. ``NetworkFaults().wrap`` from
        :mod:`nuraft_mesg.testing.faults` to partition real nodes.  Every group's state
        machine comes from ``state_machine_factory``."""
        self._nursery = nursery
        self._transport_wrapper = transport_wrapper
        self._state_machine_factory = state_machine_factory
        self.directory: dict[str, str] = {}
        self.nodes: list[LocalNode] = []
        self.group_types = group_types or {default_group_type: FAST_PARAMS}
        self.default_group_type = default_group_type
        self._configure = configure
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        """With a data_dir, node ``name`` keeps its durable store in ``<data_dir>/<name>``."""
        self._topology_changed = trio.Event()

    def _topology_change(self) -> None:
        self._topology_changed.set()
        self._topology_changed = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(cls, n: int = 3, **kwargs: object) -> AsyncIterator[LocalCluster]:
        async with trio.open_nursery() as nursery:
            cluster = cls(nursery, **kwargs)  # type: ignore[arg-type]
            for _ in range(n):
                await cluster.add_node()
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()

    async def add_node(self, *, priority: int = 100, node_uuid: str | None = None) -> LocalNode:
        u = node_uuid or str(uuidlib.uuid4())
        node = LocalNode(f"node{len(self.nodes) + 1}", u,
                         _PriorityApplication(u, self.directory, priority,
                                              self._state_machine_factory))
        self.nodes.append(node)
        await self.start(node)
        return node

    async def start(self, node: LocalNode) -> Manager:
        if node.manager is not None:
            return node.manager
        node.stopped = trio.Event()
        mgr: Manager = await self._nursery.start(self._run_node, node)
        return mgr

    async def _run_node(self, node: LocalNode, *, task_status: trio.TaskStatus[Manager]) -> None:
        config = ManagerConfig(
            server_uuid=node.uuid, port=node.port, default_group_type=self.default_group_type,
            data_dir=os.path.join(self.data_dir, node.name) if self.data_dir is not None else None,
        )
        if self._configure is not None:
            config = self._configure(config)
        transport: Transport | None = None
        if self._transport_wrapper is not None:
            transport = self._transport_wrapper(
                node.uuid, config.make_transport(node.app.lookup_peer))
        try:
            with trio.CancelScope() as scope:
                node.scope = scope
                async with Manager(config, node.app, transport=transport) as mgr:
                    for name, params in self.group_types.items():
                        mgr.register_group_type(name, params)
                    node.port = mgr.port
                    self.directory[node.uuid] = f"127.0.0.1:{mgr.port}"
                    node.manager = mgr
                    self._topology_change()
                    task_status.started(mgr)
                    await trio.sleep_forever()
        finally:
            node.manager = None
            node.stopped.set()
            self._topology_change()

    async def kill(self, node: LocalNode) -> None:
        """Close the node's Manager (like a crash of a process whose storage survives)."""
        if node.scope is not None and node.manager is not None:
            node.scope.cancel()
            await node.stopped.wait()

    async def restart(self, node: LocalNode, *, rejoin: bool = True) -> Manager:
        """Start the node again on the same uuid and port; rejoin the groups it held."""
        mgr = await self.start(node)
        if rejoin:
            for gid, smgr in list(node.app.state_managers.items()):
                if not smgr.destroyed:
                    await mgr.join_group(gid, self.default_group_type, smgr)
        return mgr

    # -- helpers -----------------------------------------------------------------------------
    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever any node's groups change
        or a node stops or starts (no polling).  Bound it with ``trio.fail_after``."""
        while not predicate():
            await self._any_change()

    async def _any_change(self) -> None:
        async with trio.open_nursery() as race:
            async def watch(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                race.cancel_scope.cancel()

            # Bind each Event now, before any checkpoint: ``mgr.wait_changed`` would only read
            # the manager's current Event once the watcher task runs, and a change made in
            # between (after ``predicate()`` was checked) would be missed for good.
            race.start_soon(watch, self._topology_changed.wait)
            for n in self.nodes:
                if n.manager is not None:
                    race.start_soon(watch, n.manager._changed.wait)

    def leader_of(self, group_id: str, among: list[LocalNode] | None = None) -> LocalNode | None:
        for n in among or self.nodes:
            mgr = n.manager
            if mgr is not None and group_id in mgr.group_ids and mgr.group(group_id).is_leader:
                return n
        return None

    async def wait_leader(self, group_id: str, *, among: list[LocalNode] | None = None
                          ) -> LocalNode:
        """Wait until one of ``among`` (default: all live nodes) leads the group."""
        await self.wait_until(lambda: self.leader_of(group_id, among) is not None)
        leader = self.leader_of(group_id, among)
        assert leader is not None
        return leader

    def _behind(self, group_id: str, index: int, among: list[LocalNode] | None) -> list[LocalNode]:
        return [
            n for n in among or self.nodes
            if n.manager is not None and group_id in n.manager.group_ids
            and n.manager.group(group_id).statistics().applied_index < index
        ]

    async def wait_applied(self, group_id: str, index: int, *,
                           among: list[LocalNode] | None = None) -> None:
        """Wait until every live node of ``among`` (default: all) hosting the group applied
        up to ``index``."""
        await self.wait_until(lambda: not self._behind(group_id, index, among))

    def applied_log(self, node: LocalNode, group_id: str) -> list[tuple[int, bytes]]:
        """Every (index, data) node's state machine applied for the group."""
        smgr = node.app.state_managers[group_id]
        sm = smgr.get_state_machine()
        applied: list[tuple[int, bytes]] = getattr(sm, "applied", [])
        return list(applied)
